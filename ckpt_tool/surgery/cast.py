"""Casting floating-point weights: which tensors change (a plan over names and dtypes), and the
chunked cast itself, which counts overflow, underflow and the error it introduces."""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import CheckFailed, UsageError
from ckpt_tool.formats.chunks import BufferPool, Chunk, ChunkedStream, Job
from ckpt_tool.formats.safe_pickle import DTYPE_SIZES
from ckpt_tool.reports import ModuleError
from ckpt_tool.surgery.prefixes import wrapper_chain

if TYPE_CHECKING:
    import torch

DTYPE_CHOICES = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "fp64": "float64",
    "float64": "float64",
    "double": "float64",
    "fp8": "float8_e4m3fn",
    "fp8_e4m3fn": "float8_e4m3fn",
    "float8_e4m3fn": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
    "float8_e5m2": "float8_e5m2",
    "e5m2": "float8_e5m2",
}
FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})
# fp8 targets and their largest finite values: larger magnitudes (and ±inf) saturate to it.
FP8_MAX = {"float8_e4m3fn": 448.0, "float8_e5m2": 57344.0}
TARGETS = FLOATING | set(FP8_MAX)
# Tensors fp8 leaves alone by default (as the fp8 recipes of the field do): embeddings.
# token and position embeddings by their names in the common zoos (HF, GPT-2, T5's shared,
# timm/torchvision ViTs' pos_embed/cls_token, LLaMA's tok_embeddings)
_EMBEDDING = re.compile(
    r"(^|\.)(embed\w*|emb|\w+_emb|wte|wpe|tok_embeddings|\w*_embeddings?|shared|pos_embed\w*|"
    r"pos_embedding|cls_token|dist_token|reg_token|mask_token)(\.|$)"
)
# Module names that are normalisation layers in the common model zoos (bn1, norm, ln_2, gn...).
# bn1, gn, ln_2, norm, LayerNorm (BERT), input_layernorm / post_attention_layernorm (Llama),
# final_layer_norm, norm_f, ln_f ...
_NORM_NAME = re.compile(
    r"^(bn|gn|ln)(_?\d+|_[a-z0-9]+)?$|norm(_?\d+|_[a-z0-9])?$|^norm",
    re.IGNORECASE,
)
CHUNK_ELEMENTS = 1 << 20  # 4 MB of float32: a chunk's passes stay in the CPU caches


def parse_dtype(name: str) -> str:
    """Our dtype name for fp16/bf16/fp32/fp8... or a usage error listing the choices."""
    dtype = DTYPE_CHOICES.get(name.lower())
    if dtype is None:
        raise UsageError(
            f"unknown dtype {name!r}; choose one of fp16, bf16, fp32, fp64, fp8_e4m3fn, "
            "fp8_e5m2 (or float16, bfloat16, float32, float64)"
        )
    return dtype


def norm_paths(shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """Module paths of normalisation layers, found by their keys (running stats) or names."""
    paths: set[str] = set()
    for key, shape in shapes.items():
        path, _, leaf = key.rpartition(".")
        if leaf in ("running_mean", "running_var", "num_batches_tracked"):
            paths.add(path)
        elif leaf in ("weight", "bias") and len(shape) == 1:
            last = path.rpartition(".")[2]
            if _NORM_NAME.search(last):
                paths.add(path)
    return paths


@dataclass
class CastPlan:
    """Per key: the dtype it will have (None = unchanged) and why."""

    dtype: str
    targets: dict[str, str | None]
    reasons: dict[str, str]
    kept_patterns_unused: list[str] = field(default_factory=list)

    @property
    def cast_keys(self) -> list[str]:
        return [k for k, t in self.targets.items() if t is not None]


def plan_cast(
    entries: Sequence[tuple[str, str, tuple[int, ...]]],
    dtype: str,
    keep: Sequence[str] = (),
    keep_norm: bool = False,
    norms: set[str] | None = None,
    ties: Sequence[Sequence[str]] = (),
) -> CastPlan:
    """Decide each tensor's dtype: floating tensors cast, integers and bools kept, and the
    --keep / --keep-norm exceptions (norm layers held in fp32).

    `ties` are groups of keys that are one tensor (tied embeddings and heads): a group gets
    one dtype, kept as it is when any of its keys is kept, so the tie survives.
    """
    if dtype not in TARGETS:
        raise UsageError(f"cannot cast to {dtype}: only floating dtypes are targets")
    fp8 = dtype in FP8_MAX
    if norms is None:
        norms = norm_paths({k: s for k, _, s in entries}) if keep_norm else set()
    used = dict.fromkeys(keep, False)
    bare_norms = {n[len(wrapper_chain(n + ".")) :] for n in norms}
    targets: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    for key, current, shape in entries:
        bare = key[len(wrapper_chain(key)) :]
        hit = next(
            (p for p in keep if fnmatch.fnmatchcase(key, p) or fnmatch.fnmatchcase(bare, p)),
            None,
        )
        if current not in FLOATING:
            targets[key], reasons[key] = None, f"{current} kept (not floating point)"
        elif hit is not None:
            used[hit] = True
            targets[key], reasons[key] = None, f"kept by --keep {hit}"
        elif keep_norm and bare.rpartition(".")[0] in bare_norms:
            if current == "float32":
                targets[key], reasons[key] = None, "norm layer kept in float32"
            else:
                targets[key], reasons[key] = "float32", "norm layer held in float32"
        elif fp8 and len(shape) <= 1:
            targets[key], reasons[key] = None, "1-D tensor kept (fp8 casts matrices only)"
        elif fp8 and _EMBEDDING.search(bare):
            targets[key], reasons[key] = None, "embedding kept (fp8 casts linear weights)"
        elif current == dtype:
            targets[key], reasons[key] = None, f"already {dtype}"
        else:
            targets[key], reasons[key] = dtype, f"{current} -> {dtype}"
    for group in ties:
        keys = [k for k in group if k in targets]
        if len({targets[k] for k in keys}) <= 1:
            continue
        rule = next((k for k in keys if targets[k] is None), keys[0])
        for k in keys:
            if k != rule:
                targets[k] = targets[rule]
                reasons[k] = f"tied to {rule} ({reasons[rule]})"
    return CastPlan(dtype, targets, reasons, [p for p, u in used.items() if not u])


@dataclass
class CastStats:
    """What casting one tensor did to its values."""

    overflow: int = 0  # finite values that became inf
    saturated: int = 0  # fp8: values beyond the largest finite value (±inf too), clamped to it
    underflow: int = 0  # non-zero values that became zero
    nonfinite: int = 0  # NaN/Inf already in the input
    err_sq: float = 0.0
    ref_sq: float = 0.0
    max_abs_error: float = 0.0

    def set_sum(self, parts: Sequence[CastStats]) -> None:
        """Become the sum of per-chunk statistics (added in order: reproducible sums)."""
        self.overflow = sum(p.overflow for p in parts)
        self.saturated = sum(p.saturated for p in parts)
        self.underflow = sum(p.underflow for p in parts)
        self.nonfinite = sum(p.nonfinite for p in parts)
        self.err_sq = math.fsum(p.err_sq for p in parts)
        self.ref_sq = math.fsum(p.ref_sq for p in parts)
        self.max_abs_error = max((p.max_abs_error for p in parts), default=0.0)

    @property
    def rel_error(self) -> float:
        """||cast - original|| / ||original|| over finite, non-overflowing values."""
        return math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq > 0 else 0.0


def cast_stream(
    chunks: Callable[[], Iterator[torch.Tensor]],
    dtype: str,
    stats: CastStats,
    key: str,
    strict: bool,
    scale: Fp8Scale | None = None,
) -> Callable[[], Iterator[bytes]]:
    """A producer of the cast tensor's bytes, from the source's flat chunks (C order),
    filling stats as it goes; --strict turns overflow into CheckFailed before anything lands.

    fp8 targets saturate: magnitudes beyond the format's largest finite value (and ±inf) are
    clamped to it and counted; NaN stays NaN; the rest is torch's own `.to(float8)`. With
    `scale`, the tensor is divided by its per-tensor scale first (a first pass finds amax)."""

    def produce() -> Iterator[bytes]:
        import torch

        target = getattr(torch, dtype)
        limit = FP8_MAX.get(dtype)
        divisor = scale.value if scale is not None else None
        if scale is not None:
            scale.value = divisor = _fp8_scale(chunks, dtype)
        for x in chunks():
            beyond = None
            if limit is not None:
                x = x.float() if divisor is None else x.float() / divisor
                # NaN compares False: kept. Scaled, only ±inf lies beyond (amax maps to the
                # largest value; a last-bit rounding over it is clamped, not counted)
                beyond = x.abs() > limit if divisor is None else torch.isinf(x)
                stats.saturated += int(beyond.sum())
                y = x.clamp(-limit, limit).to(target)
            else:
                y = x.to(target)
            _account(x, y, stats, beyond)
            yield y.view(torch.uint8).numpy().tobytes()
        problem = stats.overflow or stats.saturated
        if strict and problem:
            what = "overflow" if stats.overflow else "exceed the fp8 range of"
            raise CheckFailed(
                f"{key}: {problem} values {what} {dtype} (--strict); nothing written. "
                "Keep the tensor with --keep (or --keep-norm; --fp8-scale for fp8)"
            )

    return produce


@dataclass
class Fp8Scale:
    """A tensor's fp8 scale (amax / the format's largest value), known once computed."""

    value: float | None = None


def _fp8_scale(chunks: Callable[[], Iterator[torch.Tensor]], dtype: str) -> float:
    """Per-tensor scaling: the largest finite magnitude maps to the format's largest value."""
    import numpy as np
    import torch

    amax = 0.0
    for x in chunks():
        finite = x.float()[torch.isfinite(x.float())]
        if finite.numel():
            amax = max(amax, float(finite.abs().max()))
    # a float32 value, so the division and the stored KEY_scale use the same number
    return float(np.float32(amax / FP8_MAX[dtype])) if amax > 0 else 1.0


def _account(x: Any, y: Any, stats: CastStats, saturated: Any = None) -> None:
    """Count overflow/underflow and accumulate the error, in float32 (float64 inputs stay);
    saturated values (fp8) are left out of the error, as overflowing ones are."""
    import torch

    if not x.is_floating_point():
        return
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x.to(wide)
    yw = y.to(wide)
    finite_x = torch.isfinite(xw)
    finite_y = torch.isfinite(yw)
    stats.nonfinite += int(finite_x.numel() - int(finite_x.sum()))
    stats.overflow += int((finite_x & ~finite_y).sum())
    stats.underflow += int(((yw == 0) & (xw != 0)).sum())
    ok = finite_x & finite_y
    if saturated is not None:
        ok &= ~saturated
    diff = torch.where(ok, yw - xw, 0)
    ref = torch.where(ok, xw, 0)
    stats.err_sq += float(torch.dot(diff, diff))
    stats.ref_sq += float(torch.dot(ref, ref))
    if diff.numel():
        stats.max_abs_error = max(stats.max_abs_error, float(diff.abs().max()))


# Casts numpy does exactly as torch does (IEEE round-to-nearest-even, one rounding step), so the
# common fp32 <-> fp16/bf16 casts need no torch import (over a second, and ~650 MB here).
NUMPY_CASTS = frozenset(
    {
        ("float32", "float16"),
        ("float32", "bfloat16"),
        ("float16", "float32"),
        ("bfloat16", "float32"),
        ("bfloat16", "float16"),  # bf16 widens to float32 exactly: one rounding, as torch
        ("float32", "float64"),
        ("float16", "float64"),
        ("bfloat16", "float64"),
    }
)


def numpy_cast_chunks(
    ranges: Callable[[], Iterator[tuple[int, int, int]]],
    path: Path,
    source: str,
    dtype: str,
    stats: CastStats,
    key: str,
    strict: bool,
) -> ChunkedStream:
    """The cast tensor's bytes as independent chunk jobs over (fd, offset, size) ranges of raw
    little-endian input, with numpy (no torch); the per-chunk statistics are summed in chunk
    order once the writer has taken the last chunk, and --strict refuses overflow there."""
    parts: list[CastStats] = []

    def jobs() -> Iterator[Job]:
        parts.clear()
        for fd, offset, size in ranges():
            part = CastStats()
            parts.append(part)
            yield functools.partial(_cast_chunk, fd, offset, size, path, source, dtype, part)

    def done() -> None:
        stats.set_sum(parts)
        if strict and stats.overflow:
            raise CheckFailed(
                f"{key}: {stats.overflow} values overflow {dtype} (--strict); nothing written. "
                "Keep the tensor with --keep, or --keep-norm for normalisation statistics"
            )

    return ChunkedStream(jobs, done)


def _cast_chunk(
    fd: int,
    offset: int,
    size: int,
    path: Path,
    source: str,
    dtype: str,
    stats: CastStats,
    pool: BufferPool,
) -> Chunk:
    import numpy as np

    from ckpt_tool.tensors import pread_exactly

    scratch = _Scratch.get(size, size // DTYPE_SIZES[source])
    raw = scratch.raw[:size]
    pread_exactly(fd, raw, offset, path)
    x = _np_values(raw, source, scratch)
    out_size = x.size * DTYPE_SIZES[dtype]
    buf = pool.get(out_size)
    y = np.frombuffer(buf, dtype=np.uint8, count=out_size).view(NP_STORE[dtype])
    if source == "bfloat16" and dtype == "float16" and _bf16_to_f16(raw, x, y, scratch, stats):
        return memoryview(buf)[:out_size]
    if dtype == "float16" and x.dtype == np.float32:
        magnitudes = _f16_round(x, y.view(np.uint16), scratch)
        if magnitudes is not None:  # all finite, none overflows: the statistics of |x|
            if not _np_account_finite(*magnitudes, stats, scratch):  # sums too large
                back = _half_to_float().take(y.view(np.uint16))
                _np_account(x, back, stats)
            return memoryview(buf)[:out_size]
    back = _np_cast(x, y, dtype, scratch)
    if back is None:  # widening: exact, only the input's NaN/Inf to count
        stats.nonfinite += int(x.size - np.count_nonzero(np.isfinite(x)))
    elif not _np_account_finite(x, back, stats, scratch):
        _np_account(x, back, stats)
    return memoryview(buf)[:out_size]


class _Scratch(threading.local):
    """Per-thread work arrays, reused chunk after chunk: fresh multi-megabyte arrays would
    cost a page fault per 4 KB each time (the allocator hands big blocks back to the OS)."""

    raw: Any = None
    a: Any = None  # uint32 work arrays (viewed as float32 where needed), one chunk long
    b: Any = None
    c: Any = None
    d: Any = None
    x: Any = None  # uint32: bfloat16 input widened to float32 bits
    mask: Any = None  # bool, one chunk long

    @classmethod
    def get(cls, size: int, elements: int) -> _Scratch:
        """Arrays for a chunk of `size` raw bytes holding `elements` values."""
        import numpy as np

        s = _SCRATCH
        words = max((size + 3) // 4, elements)  # one uint32 per value (bf16 input: 2 bytes)
        if s.raw is None or s.raw.size < size or s.a.size < words:
            s.raw = np.empty(size, dtype=np.uint8)
            s.a, s.b, s.c, s.d, s.x = (np.empty(words, dtype=np.uint32) for _ in range(5))
            s.mask = np.empty(max((size + 1) // 2, elements), dtype=np.bool_)
        return s


_SCRATCH = _Scratch()


_BF16_F16_LOW = 113 << 7  # |bf16| bits of float16's smallest normal (2**-14)
_BF16_F16_HIGH = 143 << 7  # |bf16| bits of 2**16, past float16's largest finite value
_BF16_F16_REBIAS = (127 - 15) << 7  # the exponent bias moved, in |bf16| bits


def _bf16_to_f16(raw: Any, x: Any, y: Any, scratch: _Scratch, stats: CastStats) -> bool:
    """bfloat16 -> float16 bits into y with integer arithmetic, and the chunk's statistics,
    for a chunk with no value past float16's range, Inf or NaN (True); False (y and stats
    untouched) for any other chunk. Zero and float16's normal range are exact: its 10
    mantissa bits hold bfloat16's 7, so the bits follow by rebiasing the exponent (127 ->
    15) and shifting. The few values below float16's smallest normal (weights near zero)
    are cast by numpy's rounding cast and counted as rounded or flushed to zero."""
    import numpy as np

    bits = raw.view("<u2")
    n = bits.size
    mag = scratch.a.view(np.uint16)[:n]
    np.bitwise_and(bits, 0x7FFF, out=mag)
    if n == 0 or mag.max() >= _BF16_F16_HIGH:  # overflow, Inf or NaN
        return False
    low = scratch.b.view(np.uint16)[:n]
    np.subtract(mag, 1, out=low)  # zero wraps to the top: below LOW - 1 are the tiny ones
    tiny = None
    if low.min() < _BF16_F16_LOW - 1:
        tiny = np.flatnonzero(np.less(low, _BF16_F16_LOW - 1, out=scratch.mask[:n]))
    out = y.view(np.uint16)
    np.maximum(mag, _BF16_F16_REBIAS, out=mag)  # zero becomes the rebias point: 0 below
    np.subtract(mag, _BF16_F16_REBIAS, out=mag)
    np.left_shift(mag, 3, out=out)
    np.bitwise_and(bits, 0x8000, out=low)
    np.bitwise_or(out, low, out=out)
    stats.ref_sq += float(np.dot(x, x))
    if tiny is not None:
        near = x[tiny]
        cast = near.astype(np.float16)  # round to nearest even, as torch's cast
        out[tiny] = cast.view(np.uint16)
        diff = cast.astype(np.float32) - near
        stats.err_sq += float(np.dot(diff, diff))
        stats.underflow += int(np.count_nonzero(cast == 0))  # the tiny values are nonzero
        stats.max_abs_error = max(stats.max_abs_error, float(np.abs(diff).max()))
    return True


_F16_OVERFLOW = 65520.0  # the smallest float32 that rounds to inf in float16
_F16_MIN_NORMAL = 2.0**-14


def _f16_round(x: Any, y: Any, scratch: _Scratch) -> tuple[Any, Any] | None:
    """float32 -> float16 bits into y (uint16), twice as fast as numpy's scalar cast, for a
    chunk whose values are all finite and below the float16 overflow; returns (|x|, |x| as
    rounded) in float32 for the statistics, or None (y untouched) for any other chunk.

    The rounding is float32 arithmetic: adding S = 2**(e+13), e being |x|'s exponent (at
    least -14, float16's smallest normal one), leaves exactly the 11 significant bits float16
    keeps, rounded to nearest-even by the FPU; subtracting S again is exact. The rounded
    value is representable in float16, so its bits follow by shifting (normal values) or
    scaling by 2**24 (subnormal ones). Bit-identical to numpy's cast on every such float32
    (tests/test_chunks.py checks a dense sample of all exponents)."""
    import numpy as np

    n = x.size
    bits = x.view(np.uint32)
    mag_bits = scratch.a[:n]
    np.bitwise_and(bits, 0x7FFFFFFF, out=mag_bits)
    mag = mag_bits.view(np.float32)
    if not mag.max() < _F16_OVERFLOW:  # also False for NaN
        return None
    shift = scratch.b[:n]
    np.bitwise_and(mag_bits, 0x7F800000, out=shift)
    np.maximum(shift, 0x38800000, out=shift)  # exponent -14 at least
    np.add(shift, 13 << 23, out=shift)
    rounded = scratch.c[:n].view(np.float32)
    np.add(mag, shift.view(np.float32), out=rounded)
    np.subtract(rounded, shift.view(np.float32), out=rounded)
    half = shift  # reused: float16 bits, normal values first (exponent rebased 127 -> 15)
    np.right_shift(rounded.view(np.uint32), 13, out=half)
    np.subtract(half, 112 << 10, out=half)
    subnormal = np.less(rounded, np.float32(_F16_MIN_NORMAL), out=scratch.mask[:n])
    if subnormal.any():
        scaled = scratch.d[:n].view(np.float32)
        np.multiply(rounded, np.float32(2.0**24), out=scaled)
        np.copyto(half, scaled, casting="unsafe", where=subnormal)
    sign = scratch.d[:n]
    np.right_shift(bits, 16, out=sign)
    np.bitwise_and(sign, 0x8000, out=sign)
    np.bitwise_or(half, sign, out=half)
    np.copyto(y, half, casting="unsafe")
    return mag, rounded


def _np_values(raw: Any, source: str, scratch: _Scratch) -> Any:
    """The input values: float32 for float32 and bfloat16 (widened exactly, into scratch),
    else float16."""
    import numpy as np

    if source == "bfloat16":
        bits = raw.view("<u2")
        wide = scratch.x[: bits.size]
        np.left_shift(bits, 16, out=wide, dtype=np.uint32)
        return wide.view(np.float32)
    return raw.view("<f4" if source == "float32" else "<f2")


@functools.cache
def _half_to_float() -> Any:
    """float32 value of every float16 bit pattern: a table lookup widens twice as fast as
    numpy's cast."""
    import numpy as np

    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


# How each target is stored in numpy (bfloat16 as its bit patterns).
NP_STORE = {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4", "float64": "<f8"}


def _np_cast(x: Any, y: Any, dtype: str, scratch: _Scratch) -> Any:
    """Cast x into y (dtype, as NP_STORE); returns the cast values back in x's precision (in
    scratch), or None when the cast only widens and is exact."""
    import numpy as np

    n = x.size
    if dtype == "bfloat16":
        # round to nearest even on the upper 16 bits: bits + 0x7FFF + (bit 16 of bits)
        bits = x.view(np.uint32)
        work = scratch.a[:n]
        np.right_shift(bits, 16, out=work)
        np.bitwise_and(work, 1, out=work)
        np.add(work, 0x7FFF, out=work)
        np.add(work, bits, out=work)
        np.right_shift(work, 16, out=work)
        np.copyto(y, work, casting="unsafe")
        if np.isnan(x.max()):  # max propagates NaN; no mask pass in the usual case
            y[np.isnan(x)] = 0xFFFF  # the NaN torch's CPU conversion writes
        np.copyto(work, y)
        np.left_shift(work, 16, out=work)
        return work.view(np.float32)
    with np.errstate(over="ignore"):  # overflow is counted and reported, not warned about
        np.copyto(y, x, casting="unsafe")
    if dtype == "float16" and np.isnan(x.max()):
        # NaN as torch converts it (numpy keeps signalling NaNs signalling): the sign, the
        # quiet bit and the payload's top ten bits
        nan = np.isnan(x)
        bits = x.view(np.uint32)[nan]
        quiet = ((bits >> 16) & 0x8000) | 0x7E00 | ((bits & 0x7FFFFF) >> 13)
        y.view(np.uint16)[nan] = quiet.astype(np.uint16)
    if dtype == "float16":
        back = scratch.a[:n].view(np.float32)
        return np.take(_half_to_float(), y.view(np.uint16), out=back)
    return None


def _np_account_finite(x: Any, back: Any, stats: CastStats, scratch: _Scratch) -> bool:
    """The usual case in a few fast passes: when every value and its cast are finite, add
    the chunk's statistics and return True; otherwise add nothing and return False."""
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.subtract(back, x, out=scratch.b[: x.size].view(np.float32))
        ref_sq = float(np.dot(x, x))
        err_sq = float(np.dot(diff, diff))
    # NaN/Inf in x, or a value that became Inf, make these sums non-finite
    if not (math.isfinite(ref_sq) and math.isfinite(err_sq)):
        return False
    mask = scratch.mask[: x.size]
    zeros_back = np.count_nonzero(np.equal(back, 0, out=mask))
    stats.underflow += int(zeros_back - np.count_nonzero(np.equal(x, 0, out=mask)))
    stats.err_sq += err_sq
    stats.ref_sq += ref_sq
    if diff.size:
        stats.max_abs_error = max(stats.max_abs_error, float(diff.max()), -float(diff.min()))
    return True


def _np_account(x: Any, y: Any, stats: CastStats) -> None:
    """Exact statistics with masks, for chunks holding NaN/Inf or values that overflow."""
    import numpy as np

    xw = x.astype(y.dtype, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        finite_x = np.isfinite(xw)
        finite_y = np.isfinite(y)
        stats.nonfinite += int(finite_x.size - np.count_nonzero(finite_x))
        stats.overflow += int(np.count_nonzero(finite_x & ~finite_y))
        stats.underflow += int(np.count_nonzero((y == 0) & (xw != 0)))
        ok = finite_x & finite_y
        if ok.all():  # the usual case: skip the masking passes
            diff, ref = y - xw, xw
        else:
            diff = np.where(ok, y - xw, 0).astype(xw.dtype, copy=False)
            ref = np.where(ok, xw, 0).astype(xw.dtype, copy=False)
        stats.err_sq += float(np.dot(diff, diff))
        stats.ref_sq += float(np.dot(ref, ref))
        if diff.size:
            stats.max_abs_error = max(stats.max_abs_error, float(np.abs(diff).max()))


def module_errors(stats: dict[str, CastStats], depth: int = 2) -> list[ModuleError]:
    """Largest relative error per module (first `depth` path components), largest first."""
    worst: dict[str, float] = {}
    for key, s in stats.items():
        parts = key[len(wrapper_chain(key)) :].split(".")[:-1]
        module = ".".join(parts[:depth]) or "(root)"
        worst[module] = max(worst.get(module, 0.0), s.rel_error)
    return [
        {"module": m, "max_rel_error": e} for m, e in sorted(worst.items(), key=lambda kv: -kv[1])
    ]
