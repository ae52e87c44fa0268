"""`inspect --stats`: min, max, mean, std and NaN/Inf counts of every tensor, in chunks.

Tensors stored as one contiguous run of bytes (nearly all of them) are read with pread one
chunk at a time on worker threads and reduced with numpy (which releases the GIL): memory
stays at a few chunks whatever the tensor's or the file's size, both cores work, and torch
(0.6 GB and seconds to import on a CUDA build) is not loaded. Chunk results are merged with
Chan et al.'s pairwise update, so the figures equal a float64 reduction of the whole tensor
to rounding. Anything else (quantized, DCP, numpy-inline, strided views, dtypes numpy cannot
widen exactly) is read whole through torch, as before.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import progress
from .checkpoint import Checkpoint, TensorEntry
from .errors import UnreadableCheckpoint
from .formats.chunks import default_workers
from .reports import TensorStats
from .tensors import TensorReader

CHUNK_ELEMENTS = 1 << 20  # 8 MB of float64 work per chunk and thread
MAX_AHEAD = 8  # chunks queued or running at once


@dataclass
class Partial:
    """The statistics of some elements of one tensor, mergeable with another part's."""

    n: int = 0  # finite values
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    lo: float = math.inf
    hi: float = -math.inf
    nan: int = 0
    inf: int = 0

    def merge(self, o: Partial) -> None:
        self.nan += o.nan
        self.inf += o.inf
        if not o.n:
            return
        if not self.n:
            self.n, self.mean, self.m2, self.lo, self.hi = o.n, o.mean, o.m2, o.lo, o.hi
            return
        n = self.n + o.n
        delta = o.mean - self.mean
        self.mean += delta * o.n / n
        self.m2 += o.m2 + delta * delta * self.n * o.n / n
        self.n = n
        self.lo, self.hi = min(self.lo, o.lo), max(self.hi, o.hi)

    def result(self) -> TensorStats:
        if not self.n:
            return {**EMPTY, "nan": self.nan, "inf": self.inf}
        return {
            "min": self.lo,
            "max": self.hi,
            "mean": self.mean,
            "std": math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0,
            "nan": self.nan,
            "inf": self.inf,
        }


EMPTY: TensorStats = {"min": None, "max": None, "mean": None, "std": None, "nan": 0, "inf": 0}


# numpy's name for each dtype whose values it widens to float64 exactly; the others below are
# decoded from their bits.
_NP = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "bool": "?",
    "complex64": "<c8",
    "complex128": "<c16",
}
_DECODED = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def chunkable(entry: TensorEntry, reader: TensorReader) -> bool:
    dtype = entry.record.dtype
    return (dtype in _NP or dtype in _DECODED) and reader.file_backed(entry)


@functools.cache
def fp8_table(dtype: str) -> Any:
    """float32 value of every bit pattern of an fp8 format (OCP e4m3fn / e5m2), as torch
    decodes them: e4m3fn has no infinities (S.1111.111 is NaN), e5m2 is IEEE-like."""
    import numpy as np

    exp_bits, bias = (4, 7) if dtype == "float8_e4m3fn" else (5, 15)
    man_bits = 7 - exp_bits
    values = []
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e = (b >> man_bits) & ((1 << exp_bits) - 1)
        m = b & ((1 << man_bits) - 1)
        if dtype == "float8_e4m3fn" and e == 15 and m == 7:
            v = math.nan
        elif dtype == "float8_e5m2" and e == 31:
            v = math.nan if m else sign * math.inf
        elif e == 0:
            v = sign * m / (1 << man_bits) * 2.0 ** (1 - bias)
        else:
            v = sign * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        values.append(v)
    return np.array(values, dtype=np.float32)


_LOCAL = threading.local()


def _scratch(elements: int, nbytes: int) -> tuple[bytearray, Any, Any]:
    """This thread's reusable buffers, grown on demand: raw bytes, float64 values, deviations."""
    import numpy as np

    s = _LOCAL.__dict__
    if len(s.get("raw", b"")) < nbytes:
        s["raw"] = bytearray(nbytes)
    if s.get("n", 0) < elements:
        s["x"] = np.empty(elements, dtype=np.float64)
        s["d"] = np.empty(elements, dtype=np.float64)
        s["n"] = elements
    return s["raw"], s["x"], s["d"]


def item_size(dtype: str) -> int:
    """Bytes per element of a dtype the chunked path decodes."""
    import numpy as np

    if dtype.startswith("float8"):
        return 1
    if dtype == "bfloat16":
        return 2
    return int(np.dtype(_NP[dtype]).itemsize)


def read_range(fd: int, offset: int, size: int, buf: bytearray) -> memoryview:
    """`size` bytes at `offset` of fd into buf (pread, any thread)."""
    view = memoryview(buf)[:size]
    done = 0
    while done < size:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"the file ends inside the tensor (offset {offset + done})")
        done += n
    return view


def decode(raw: Any, count: int, dtype: str, x: Any) -> Any:
    """The first `count` values of raw little-endian bytes as float64 in x (complex: |z|)."""
    import numpy as np

    x = x[:count]
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2", count=count).astype(np.uint32) << 16
        x[:] = bits.view(np.float32)
    elif dtype.startswith("float8"):
        x[:] = fp8_table(dtype)[np.frombuffer(raw, dtype=np.uint8, count=count)]
    else:
        values = np.frombuffer(raw, dtype=np.dtype(_NP[dtype]), count=count)
        if values.dtype.kind == "c":
            np.abs(values, out=x)  # |z| as torch takes it (the last bit may differ)
        else:
            x[:] = values
    return x


def chunk_partial(fd: int, offset: int, size: int, dtype: str) -> Partial:
    """Read one chunk with pread and reduce it (runs on a worker thread)."""
    import numpy as np

    count = size // item_size(dtype)
    raw, xbuf, dbuf = _scratch(count, size)
    read_range(fd, offset, size, raw)
    x = decode(raw, count, dtype, xbuf)
    part = Partial()
    finite = np.isfinite(x)
    if not finite.all():
        bad = x[~finite]
        part.nan = int(np.isnan(bad).sum())
        part.inf = bad.size - part.nan
        x = x[finite]
    if x.size:
        part.n = int(x.size)
        part.lo, part.hi = float(x.min()), float(x.max())
        part.mean = float(x.sum()) / part.n
        d = dbuf[: x.size]
        np.subtract(x, part.mean, out=d)
        part.m2 = float(np.dot(d, d))
    return part


def tensor_stats(ckpt: Checkpoint, entries: list[TensorEntry]) -> dict[str, TensorStats]:
    """Statistics of every entry, in order; chunked on worker threads where possible."""
    out: dict[str, TensorStats] = {}
    with (
        TensorReader(ckpt) as reader,
        ThreadPoolExecutor(default_workers(), thread_name_prefix="ckpt-stats") as pool,
    ):
        plan = [(e, chunkable(e, reader)) for e in entries]
        jobs = _jobs(plan, reader)
        window: deque[tuple[int, Future[Partial]]] = deque()

        def fill() -> None:
            while len(window) < MAX_AHEAD:
                job = next(jobs, None)
                if job is None:
                    return
                index, args = job
                window.append((index, pool.submit(chunk_partial, *args)))

        try:
            for i, (entry, chunked) in enumerate(
                progress.track(plan, "reading tensors", len(plan))
            ):
                if not chunked:
                    out[entry.key] = (
                        whole_stats(reader, entry) if entry.record.numel else EMPTY.copy()
                    )
                    continue
                total = Partial()
                fill()
                while window and window[0][0] == i:
                    try:
                        total.merge(window.popleft()[1].result())
                    except OSError as exc:
                        raise UnreadableCheckpoint(
                            f"{ckpt.path}: cannot read tensor {entry.key!r} ({exc})"
                        ) from None
                    fill()
                out[entry.key] = total.result()
        finally:
            for _, future in window:
                future.cancel()
    return out


def _jobs(
    plan: list[tuple[TensorEntry, bool]], reader: TensorReader
) -> Iterator[tuple[int, tuple[int, int, int, str]]]:
    for i, (entry, chunked) in enumerate(plan):
        if chunked:
            for fd, offset, size in reader.raw_ranges(entry, CHUNK_ELEMENTS):
                yield i, (fd, offset, size, entry.record.dtype)


def whole_stats(reader: TensorReader, entry: TensorEntry) -> TensorStats:
    """One tensor read whole through torch (the kinds the chunked path does not decode)."""
    import torch

    t = reader.read(entry)
    if t.numel() == 0:
        return EMPTY.copy()
    if t.is_quantized:
        t = t.dequantize()
    x = t.abs().double() if t.is_complex() else t.double()
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return {**EMPTY, "nan": nan, "inf": inf}
    return {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()) if finite.numel() > 1 else 0.0,
        "nan": nan,
        "inf": inf,
    }
