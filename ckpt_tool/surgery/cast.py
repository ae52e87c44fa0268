"""Casting floating-point weights: which tensors change (a plan over names and dtypes), and the
chunked cast itself, which counts overflow, underflow and the error it introduces."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import CheckFailed, UsageError
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
}
FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})
# Module names that are normalisation layers in the common model zoos (bn1, norm, ln_2, gn...).
# bn1, gn, ln_2, norm, LayerNorm (BERT), input_layernorm / post_attention_layernorm (Llama),
# final_layer_norm, norm_f, ln_f ...
_NORM_NAME = re.compile(
    r"^(bn|gn|ln)(_?\d+|_[a-z0-9]+)?$|norm(_?\d+|_[a-z0-9])?$|^norm",
    re.IGNORECASE,
)
CHUNK_ELEMENTS = 1 << 22


def parse_dtype(name: str) -> str:
    """Our dtype name for fp16/bf16/fp32/... or a usage error listing the choices."""
    dtype = DTYPE_CHOICES.get(name.lower())
    if dtype is None:
        raise UsageError(
            f"unknown dtype {name!r}; choose one of fp16, bf16, fp32, fp64 "
            "(or float16, bfloat16, float32, float64)"
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
) -> CastPlan:
    """Decide each tensor's dtype: floating tensors cast, integers and bools kept, and the
    --keep / --keep-norm exceptions (norm layers held in fp32)."""
    if dtype not in FLOATING:
        raise UsageError(f"cannot cast to {dtype}: only floating dtypes are targets")
    if norms is None:
        norms = norm_paths({k: s for k, _, s in entries}) if keep_norm else set()
    used = dict.fromkeys(keep, False)
    bare_norms = {n[len(wrapper_chain(n + ".")) :] for n in norms}
    targets: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    for key, current, _ in entries:
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
        elif current == dtype:
            targets[key], reasons[key] = None, f"already {dtype}"
        else:
            targets[key], reasons[key] = dtype, f"{current} -> {dtype}"
    return CastPlan(dtype, targets, reasons, [p for p, u in used.items() if not u])


@dataclass
class CastStats:
    """What casting one tensor did to its values."""

    overflow: int = 0  # finite values that became inf
    underflow: int = 0  # non-zero values that became zero
    nonfinite: int = 0  # NaN/Inf already in the input
    err_sq: float = 0.0
    ref_sq: float = 0.0
    max_abs_error: float = 0.0

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
) -> Callable[[], Iterator[bytes]]:
    """A producer of the cast tensor's bytes, from the source's flat chunks (C order),
    filling stats as it goes; --strict turns overflow into CheckFailed before anything lands."""

    def produce() -> Iterator[bytes]:
        import torch

        target = getattr(torch, dtype)
        for x in chunks():
            y = x.to(target)
            _account(x, y, stats)
            yield y.view(torch.uint8).numpy().tobytes()
        if strict and stats.overflow:
            raise CheckFailed(
                f"{key}: {stats.overflow} values overflow {dtype} (--strict); nothing written. "
                "Keep the tensor with --keep, or --keep-norm for normalisation statistics"
            )

    return produce


def _account(x: Any, y: Any, stats: CastStats) -> None:
    """Count overflow/underflow and accumulate the error, in float32 (float64 inputs stay)."""
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
        ("float32", "float64"),
        ("float16", "float64"),
        ("bfloat16", "float64"),
    }
)


def numpy_cast_stream(
    chunks: Callable[[], Iterator[bytearray]],
    source: str,
    dtype: str,
    stats: CastStats,
    key: str,
    strict: bool,
) -> Callable[[], Iterator[bytes]]:
    """Like cast_stream, for raw little-endian chunks, with numpy (no torch)."""

    def produce() -> Iterator[bytes]:
        for buf in chunks():
            x = _np_to_float32(buf, source)
            y_bytes, y32 = _np_from_float32(x, dtype)
            _np_account(x, y32, stats)
            yield y_bytes
        if strict and stats.overflow:
            raise CheckFailed(
                f"{key}: {stats.overflow} values overflow {dtype} (--strict); nothing written. "
                "Keep the tensor with --keep, or --keep-norm for normalisation statistics"
            )

    return produce


def _np_to_float32(buf: bytearray, source: str) -> Any:
    import numpy as np

    if source == "bfloat16":
        return (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(buf, dtype="<f4" if source == "float32" else "<f2")


def _np_from_float32(x: Any, dtype: str) -> tuple[bytes, Any]:
    """(bytes of x cast to dtype, the cast values widened back to float32 or float64)."""
    import numpy as np

    if dtype == "bfloat16":
        bits = x.view(np.uint32)
        rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
        rounded[np.isnan(x)] = 0xFFFF  # the NaN torch's CPU conversion writes
        back = (rounded.astype(np.uint32) << 16).view(np.float32)
        return rounded.tobytes(), back
    with np.errstate(over="ignore"):  # overflow is counted and reported, not warned about
        y = x.astype({"float16": np.float16, "float32": np.float32, "float64": np.float64}[dtype])
    return y.tobytes(), y.astype(np.float64 if dtype == "float64" else np.float32)


def _np_account(x: Any, y: Any, stats: CastStats) -> None:
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


def module_errors(stats: dict[str, CastStats], depth: int = 2) -> list[dict[str, Any]]:
    """Largest relative error per module (first `depth` path components), largest first."""
    worst: dict[str, float] = {}
    for key, s in stats.items():
        parts = key[len(wrapper_chain(key)) :].split(".")[:-1]
        module = ".".join(parts[:depth]) or "(root)"
        worst[module] = max(worst.get(module, 0.0), s.rel_error)
    return [
        {"module": m, "max_rel_error": e} for m, e in sorted(worst.items(), key=lambda kv: -kv[1])
    ]
