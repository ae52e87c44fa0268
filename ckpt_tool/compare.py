"""Comparing two checkpoints (`ckpt diff`) and averaging several (`ckpt average`).

Both stream: diff reads one tensor pair at a time in chunks; average produces each output
tensor from chunks of every input while the writer writes it. Nothing here prints.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import progress
from .checkpoint import Checkpoint, TensorEntry
from .errors import SurgeryError, UsageError
from .formats import writer
from .formats.safe_pickle import StorageRef, TensorRecord, contiguous_stride
from .reports import (
    AverageDetails,
    DiffReport,
    DiffSide,
    DtypeChange,
    ModuleDiff,
    ShapeChange,
    TensorDiff,
)
from .surgery.prefixes import detect_prefix
from .tensors import TensorReader

if TYPE_CHECKING:
    import torch

CHUNK_ELEMENTS = 1 << 20
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES or dtype.startswith("float8")


# --- diff -----------------------------------------------------------------------------------


@dataclass
class Side:
    """One side of a diff: its tensors by key with the wrapper prefix removed."""

    ckpt: Checkpoint
    prefix: str
    entries: dict[str, TensorEntry]


def strip_side(ckpt: Checkpoint) -> Side:
    """Remove a wrapper prefix (`module.`, `_orig_mod.`) carried by every key."""
    prefix = detect_prefix(ckpt.tensors).prefix
    entries = {k[len(prefix) :]: e for k, e in ckpt.tensors.items()}
    return Side(ckpt, prefix, entries)


@dataclass
class PairStats:
    """Differences of one tensor pair, accumulated chunk by chunk."""

    bit_identical: bool = True
    max_abs: float = 0.0
    sq_diff: float = 0.0  # sum of (a-b)^2 in float64
    sq_a: float = 0.0  # sum of a^2 in float64
    beyond: int = 0  # elements outside |a-b| <= atol + rtol*|a|
    nonfinite_diff: bool = False  # NaN/inf where the other side differs

    @property
    def rel(self) -> float:
        if self.sq_diff == 0.0:
            return 0.0
        if self.sq_a == 0.0:
            return math.inf
        return math.sqrt(self.sq_diff) / math.sqrt(self.sq_a)


def _bytes_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    import torch

    if x.numel() != y.numel() or x.element_size() != y.element_size():
        return False
    return bool(torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)))


def _accumulate(s: PairStats, x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float) -> None:
    import torch

    same = x.dtype == y.dtype and _bytes_equal(x, y)
    if same:
        # identical bytes: no difference, but |a| still counts towards the norm
        a = x.abs().to(torch.float64) if x.is_complex() else x.to(torch.float64)
        a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        s.sq_a += float((a * a).sum())
        return
    s.bit_identical = False
    wide = torch.complex128 if (x.is_complex() or y.is_complex()) else torch.float64
    a = x.to(wide)
    b = y.to(wide)
    d = (a - b).abs()
    both_nan = torch.isnan(a) & torch.isnan(b) if wide == torch.float64 else None
    if both_nan is not None:
        d = torch.where(both_nan, torch.zeros_like(d), d)
    equal_inf = torch.isinf(a) & (a == b)
    d = torch.where(equal_inf, torch.zeros_like(d), d)
    if not bool(torch.isfinite(d).all()):
        s.nonfinite_diff = True
    finite_d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    if d.numel():
        s.max_abs = max(s.max_abs, float(d.max()))
    s.sq_diff += float((finite_d * finite_d).sum())
    aa = a.abs()
    finite_a = torch.nan_to_num(aa, nan=0.0, posinf=0.0)
    s.sq_a += float((finite_a * finite_a).sum())
    if atol or rtol:
        s.beyond += int((~(d <= atol + rtol * aa)).sum())
    else:
        s.beyond += int(d.numel())  # no tolerance: any byte change counts


def compare_pair(
    ra: TensorReader,
    ea: TensorEntry,
    rb: TensorReader,
    eb: TensorEntry,
    atol: float,
    rtol: float,
) -> PairStats:
    """Stream two tensors of equal shape chunk by chunk and compare them."""
    same = _same_bytes(ra, ea, rb, eb)
    if same is not None:
        return same
    s = PairStats()
    for x, y in zip(ra.chunks(ea, CHUNK_ELEMENTS), rb.chunks(eb, CHUNK_ELEMENTS), strict=True):
        _accumulate(s, x, y, atol, rtol)
    if ea.dtype != eb.dtype:
        s.bit_identical = False
    return s


def _same_bytes(
    ra: TensorReader, ea: TensorEntry, rb: TensorReader, eb: TensorEntry
) -> PairStats | None:
    """The usual pair, equal bytes of one dtype stored contiguously on both sides, compared
    with pread (no torch: its import alone is 0.6 GB here); None when the pair needs the full
    comparison (it differs, or is stored otherwise). Its ||a||^2 is left for `_norm_sq`,
    needed only where a module has changed tensors."""
    from . import stats

    dtype = ea.dtype
    if not (dtype == eb.dtype and stats.chunkable(ea, ra) and stats.chunkable(eb, rb) and ea.numel):
        return None
    width = stats.item_size(dtype)
    buf_a, buf_b = bytearray(CHUNK_ELEMENTS * width), bytearray(CHUNK_ELEMENTS * width)
    runs_a = list(ra.raw_ranges(ea, CHUNK_ELEMENTS))
    runs_b = list(rb.raw_ranges(eb, CHUNK_ELEMENTS))
    if [n for _, _, n in runs_a] != [n for _, _, n in runs_b]:
        return None  # cut differently (a DCP tensor's chunks): the full comparison
    for (fa, oa, na), (fb, ob, nb) in zip(runs_a, runs_b, strict=True):
        if stats.read_range(fa, oa, na, buf_a) != stats.read_range(fb, ob, nb, buf_b):
            return None
    return PairStats(sq_a=math.nan)  # NaN: not computed yet


def _norm_sq(reader: TensorReader, entry: TensorEntry) -> float:
    """sum(a^2) over the finite values of a contiguously stored tensor, with pread and numpy
    (as the full comparison counts it: NaN and Inf add nothing)."""
    import numpy as np

    from . import stats

    width = stats.item_size(entry.dtype)
    buf = bytearray(CHUNK_ELEMENTS * width)
    x = np.empty(CHUNK_ELEMENTS, dtype=np.float64)
    total = 0.0
    for fd, offset, size in reader.raw_ranges(entry, CHUNK_ELEMENTS):
        values = stats.decode(
            stats.read_range(fd, offset, size, buf), size // width, entry.dtype, x
        )
        values[~np.isfinite(values)] = 0.0
        total += float(np.dot(values, values))
    return total


def module_of(key: str, depth: int) -> str:
    parts = key.split(".")[:-1]
    return ".".join(parts[:depth]) or "(root)"


@dataclass
class DiffResult:
    """What `ckpt diff` found; `as_dict` is the --json document."""

    a: Side
    b: Side
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    shape_changed: list[ShapeChange] = field(default_factory=list)
    dtype_changed: list[DtypeChange] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)
    modules: list[ModuleDiff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def changed(self) -> list[str]:
        return [t["key"] for t in self.tensors if not t["within_tolerance"]]

    @property
    def identical(self) -> bool:
        return not (
            self.only_a or self.only_b or self.shape_changed or self.dtype_changed or self.changed
        )

    def as_dict(self) -> DiffReport:
        return {
            "command": "diff",
            "a": _side_json(self.a),
            "b": _side_json(self.b),
            "atol": self.atol,
            "rtol": self.rtol,
            "identical": self.identical,
            "summary": {
                "common": len(self.tensors),
                "bit_identical": sum(1 for t in self.tensors if t["bit_identical"]),
                "changed": len(self.changed),
                "only_a": len(self.only_a),
                "only_b": len(self.only_b),
                "shape_changed": len(self.shape_changed),
                "dtype_changed": len(self.dtype_changed),
            },
            "only_a": self.only_a,
            "only_b": self.only_b,
            "shape_changed": self.shape_changed,
            "dtype_changed": self.dtype_changed,
            "changed": self.changed,
            "modules": self.modules,
            "tensors": self.tensors,
            "notes": self.notes,
            "exit_code": 0 if self.identical else 3,
        }


def _side_json(s: Side) -> DiffSide:
    return {
        "path": str(s.ckpt.path),
        "format": s.ckpt.format,
        "weights_key": s.ckpt.weights_key,
        "prefix_removed": s.prefix,
        "tensors": len(s.entries),
    }


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def diff(
    a: Checkpoint,
    b: Checkpoint,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    depth: int = 1,
) -> DiffResult:
    """Compare the weights of a and b, one tensor pair at a time."""
    if atol < 0 or rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0")
    if depth < 1:
        raise UsageError("--depth must be >= 1")
    sa, sb = strip_side(a), strip_side(b)
    r = DiffResult(sa, sb, atol=atol, rtol=rtol)
    for side, name in ((sa, "A"), (sb, "B")):
        if side.prefix:
            r.notes.append(
                f"{name}: wrapper prefix {side.prefix!r} carried by every key was removed "
                "before comparing"
            )
    r.only_a = [k for k in sa.entries if k not in sb.entries]
    r.only_b = [k for k in sb.entries if k not in sa.entries]
    sums: dict[str, list[float]] = {}  # module -> [sq_diff, sq_a, tensors, changed]
    pending: dict[str, list[TensorEntry]] = {}  # equal tensors whose ||a||^2 is not read yet
    with TensorReader(a) as ra, TensorReader(b) as rb:
        for key, ea in progress.track(sa.entries.items(), "comparing tensors", len(sa.entries)):
            eb = sb.entries.get(key)
            if eb is None:
                continue
            if ea.shape != eb.shape:
                r.shape_changed.append({"key": key, "a": list(ea.shape), "b": list(eb.shape)})
                continue
            if ea.dtype != eb.dtype:
                r.dtype_changed.append({"key": key, "a": ea.dtype, "b": eb.dtype})
            s = compare_pair(ra, ea, rb, eb, atol, rtol)
            within = s.bit_identical or ((atol > 0 or rtol > 0) and s.beyond == 0)
            r.tensors.append(
                {
                    "key": key,
                    "shape": list(ea.shape),
                    "dtype": ea.dtype if ea.dtype == eb.dtype else f"{ea.dtype}->{eb.dtype}",
                    "bit_identical": s.bit_identical,
                    "max_abs_diff": _finite(s.max_abs),
                    "rel_change": _finite(s.rel),
                    "beyond_tolerance": s.beyond,
                    "within_tolerance": within,
                }
            )
            module = module_of(key, depth)
            m = sums.setdefault(module, [0.0, 0.0, 0, 0])
            m[0] += s.sq_diff
            if math.isnan(s.sq_a):
                pending.setdefault(module, []).append(ea)
            else:
                m[1] += s.sq_a
            m[2] += 1
            m[3] += 0 if s.bit_identical else 1
        # ||a|| of equal tensors matters only beside changed ones (an unchanged module's
        # relative change is 0 whatever its norm): read them again only there
        for module, entries in pending.items():
            if sums[module][3]:
                sums[module][1] += sum(_norm_sq(ra, e) for e in entries)
    for module, (sq_d, sq_a, n, changed) in sums.items():
        rel = 0.0 if sq_d == 0 else (math.inf if sq_a == 0 else math.sqrt(sq_d / sq_a))
        r.modules.append(
            {
                "module": module,
                "tensors": int(n),
                "changed": int(changed),
                "rel_change": _finite(rel),
            }
        )
    return r


# --- average --------------------------------------------------------------------------------


def parse_coef(text: str | None, n: int) -> list[float]:
    """`--coef 1,1,2` -> one weight per file (normalised by their sum when averaging)."""
    if text is None:
        return [1.0] * n
    try:
        coef = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--coef {text!r}: give comma-separated numbers, e.g. 1,1,2") from None
    if len(coef) != n:
        raise UsageError(f"--coef has {len(coef)} values for {n} checkpoints; give one per file")
    if any(not math.isfinite(c) or c < 0 for c in coef) or sum(coef) <= 0:
        raise UsageError("--coef values must be finite, >= 0, and not all 0")
    return coef


def check_compatible(
    ckpts: list[Checkpoint], keyed: list[dict[str, TensorEntry]] | None = None
) -> None:
    """Same keys, shapes and dtypes in every input; otherwise an error naming the offenders."""
    keyed = keyed or [c.tensors for c in ckpts]
    first = ckpts[0]
    problems: list[str] = []
    for other, kb in zip(ckpts[1:], keyed[1:], strict=True):
        ka = keyed[0]
        missing = [k for k in ka if k not in kb]
        extra = [k for k in kb if k not in ka]
        if missing:
            problems.append(f"{other.path.name} lacks {_few(missing)}")
        if extra:
            problems.append(f"{other.path.name} has extra {_few(extra)}")
        shapes = [k for k in ka if k in kb and ka[k].shape != kb[k].shape]
        if shapes:
            problems.append(f"shape differs in {other.path.name}: {_few(shapes)}")
        dtypes = [k for k in ka if k in kb and ka[k].dtype != kb[k].dtype]
        if dtypes:
            problems.append(f"dtype differs in {other.path.name}: {_few(dtypes)}")
    if problems:
        raise SurgeryError(
            f"checkpoints do not match {first.path.name}: "
            + "; ".join(problems)
            + " (average only checkpoints of one architecture)"
        )


def aligned_keys(ckpts: list[Checkpoint]) -> tuple[list[dict[str, TensorEntry]], list[str]]:
    """Each input's tensors under common names: when the files disagree on a wrapper prefix
    (`module.` on some, none on others), the prefix every key of a file carries is removed."""
    sides = [strip_side(c) for c in ckpts]
    if len({s.prefix for s in sides}) == 1:
        return [dict(c.tensors) for c in ckpts], []
    notes = [
        f"{s.ckpt.path.name}: removed the wrapper prefix {s.prefix!r} carried by every key"
        for s in sides
        if s.prefix
    ]
    return [s.entries for s in sides], notes


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _average_stream(
    readers: list[TensorReader], entries: list[TensorEntry], coef: list[float], dtype: str
) -> Callable[[], Iterator[bytes]]:
    """Bytes of sum(c_i * x_i) / sum(c_i), computed in float64, cast back to dtype."""

    def produce() -> Iterator[bytes]:
        import torch

        from .tensors import torch_dtype

        target = torch_dtype(dtype)
        total = sum(coef)
        streams = [r.chunks(e, CHUNK_ELEMENTS) for r, e in zip(readers, entries, strict=True)]
        for parts in zip(*streams, strict=True):
            acc = torch.zeros(parts[0].numel(), dtype=torch.float64)
            for c, x in zip(coef, parts, strict=True):
                acc += x.to(torch.float64) if c == 1.0 else x.to(torch.float64) * c
            y = (acc / total).to(target)
            yield y.view(torch.uint8).numpy().tobytes()

    return produce


def _copy_stream(reader: TensorReader, entry: TensorEntry) -> Callable[[], Iterator[bytes]]:
    def produce() -> Iterator[bytes]:
        import torch

        for x in reader.chunks(entry, CHUNK_ELEMENTS):
            yield x.contiguous().view(torch.uint8).numpy().tobytes()

    return produce


@dataclass
class Averaging:
    """The records of the averaged weights, their byte streams, and the report."""

    root: OrderedDict[str, TensorRecord]
    sources: writer.Sources
    readers: list[TensorReader]
    averaged: list[str]
    from_last: list[str]
    coef: list[float]
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def report(self) -> AverageDetails:
        total = sum(self.coef)
        return {
            "inputs": [str(r.ckpt.path) for r in self.readers],
            "coef": self.coef,
            "normalised_coef": [c / total for c in self.coef],
            "tensors": len(self.root),
            "averaged": len(self.averaged),
            "from_last": self.from_last,
        }


def average(ckpts: list[Checkpoint], coef: list[float]) -> Averaging:
    """Plan the weighted average of ckpts (weights stream while the writer writes)."""
    if len(ckpts) < 2:
        raise UsageError("average needs at least two checkpoints")
    keyed, notes = aligned_keys(ckpts)
    check_compatible(ckpts, keyed)
    readers = [TensorReader(c) for c in ckpts]
    sources = writer.Sources(ckpts[0])
    root: OrderedDict[str, TensorRecord] = OrderedDict()
    averaged: list[str] = []
    from_last: list[str] = []
    for key, entry in keyed[0].items():
        rec = entry.record
        storage = StorageRef(f"avg:{key}", rec.dtype, "cpu", rec.numel)
        root[key] = TensorRecord(
            storage,
            0,
            rec.shape,
            contiguous_stride(rec.shape),
            rec.dtype,
            rec.requires_grad,
            rec.is_parameter,
        )
        if _is_float(rec.dtype):
            entries = [k[key] for k in keyed]
            sources.add_stream(storage, _average_stream(readers, entries, coef, rec.dtype))
            averaged.append(key)
        else:
            sources.add_stream(storage, _copy_stream(readers[-1], keyed[-1][key]))
            from_last.append(key)
    return Averaging(root, sources, readers, averaged, from_last, coef, notes)
