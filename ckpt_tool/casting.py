"""Casting and converting whole checkpoints: cast records with streamed bytes, sharded
safetensors output, and DCP output through torch's own writer."""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpt_tool.checkpoint import Checkpoint, TensorEntry
from ckpt_tool.errors import UsageError, WriteFailed
from ckpt_tool.formats import writer
from ckpt_tool.formats.safe_pickle import StorageRef, TensorRecord, contiguous_stride, view_key
from ckpt_tool.reports import CastReport, CastRow, DequantizedRow
from ckpt_tool.surgery import cast as cast_ops
from ckpt_tool.surgery.cast import (
    FP8_MAX,
    NUMPY_CASTS,
    CastPlan,
    CastStats,
    Fp8Scale,
    cast_stream,
    module_errors,
    numpy_cast_chunks,
)
from ckpt_tool.tensors import TensorReader

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes (decimal units, as Hugging Face uses)."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").upper() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"--max-shard-size {text!r}: expected a size such as 5GB or 500MB")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass
class Casting:
    """Cast weights: new records whose bytes are produced on the fly, and what casting did."""

    plan: CastPlan
    records: dict[str, TensorRecord]
    stats: dict[str, CastStats]
    sources: writer.Sources
    reader: TensorReader
    scales: dict[str, tuple[str, TensorRecord]] = field(default_factory=dict)  # --fp8-scale

    def drain(self) -> None:
        """Run every cast without writing (dry run), to fill the statistics."""
        storages = list(
            {id(r.storage): r.storage for r in self.records.values() if r.storage}.values()
        )
        with self.sources.pipeline(storages) as pipeline:
            for storage in storages:
                chunked = self.sources.chunked.get(id(storage))
                produce = self.sources.streams.get(id(storage))
                chunks = pipeline.take(chunked) if chunked else produce() if produce else ()
                for _ in chunks:
                    pass

    def report(self, ckpt: Checkpoint) -> CastReport:
        before: Counter[str] = Counter()
        after: Counter[str] = Counter()
        for key, e in ckpt.tensors.items():
            before[e.dtype] += e.nbytes
            after[self.records[key].dtype] += self.records[key].nbytes
        rows: list[CastRow] = []
        for key, target in self.plan.targets.items():
            s = self.stats.get(key)
            rows.append(
                {
                    "key": key,
                    "from": ckpt.tensors[key].dtype,
                    "to": target or ckpt.tensors[key].dtype,
                    "reason": self.plan.reasons[key],
                    "overflow": s.overflow if s else 0,
                    "saturated": s.saturated if s else 0,
                    "underflow": s.underflow if s else 0,
                    "rel_error": s.rel_error if s else 0.0,
                    "max_abs_error": s.max_abs_error if s else 0.0,
                }
            )
        return {
            "dtype": self.plan.dtype,
            "cast": len(self.plan.cast_keys),
            "kept": len(self.plan.targets) - len(self.plan.cast_keys),
            "bytes_before": dict(sorted(before.items())),
            "bytes_after": dict(sorted(after.items())),
            "total_before": sum(before.values()),
            "total_after": sum(after.values()),
            "overflow_total": sum(r["overflow"] for r in rows),
            "underflow_total": sum(r["underflow"] for r in rows),
            "overflowing": [r["key"] for r in rows if r["overflow"]],
            "saturated_total": sum(r["saturated"] for r in rows),
            "saturating": [r["key"] for r in rows if r["saturated"]],
            "scales": {k: after for k, (after, _) in self.scales.items()},
            "modules": module_errors(self.stats),
            "unused_keep_patterns": self.plan.kept_patterns_unused,
            "tensors": rows,
        }


def cast_weights(
    ckpt: Checkpoint, plan: CastPlan, strict: bool, fp8_scale: bool = False
) -> Casting:
    """Records for the cast weights; tensors that shared one view (tied weights) stay shared.
    With fp8_scale, every fp8 tensor gets a float32 `KEY_scale` tensor written after it."""
    sources = writer.Sources(ckpt)
    reader = TensorReader(ckpt)
    records: dict[str, TensorRecord] = {}
    stats: dict[str, CastStats] = {}
    scales: dict[str, tuple[str, TensorRecord]] = {}
    by_view: dict[tuple[Any, ...], TensorRecord] = {}
    scale_of: dict[tuple[Any, ...], TensorRecord] = {}
    for key, entry in ckpt.tensors.items():
        target = plan.targets[key]
        rec = entry.record
        if target is None:
            records[key] = rec
            continue
        view = view_key(rec)
        if view in by_view:  # a tied name: the same cast tensor, and its scale under its name
            records[key] = by_view[view]
            if view in scale_of:
                scales[f"{key}_scale"] = (key, scale_of[view])
            continue
        storage = StorageRef(f"cast:{key}", target, rec.device, rec.numel)
        new = TensorRecord(
            storage,
            0,
            rec.shape,
            contiguous_stride(rec.shape),
            target,
            rec.requires_grad,
            rec.is_parameter,
        )
        stats[key] = CastStats()
        if (rec.dtype, target) in NUMPY_CASTS and reader.file_backed(entry):
            ranges = _ranger(reader, entry)
            chunked = numpy_cast_chunks(
                ranges, ckpt.path, rec.dtype, target, stats[key], key, strict
            )
            sources.add_chunked(storage, chunked)
        else:
            scale = Fp8Scale() if fp8_scale and target in FP8_MAX else None
            produce = cast_stream(_chunker(reader, entry), target, stats[key], key, strict, scale)
            sources.add_stream(storage, produce)
            if scale is not None:
                scale_of[view] = _scale_record(sources, scale, key)
                scales[f"{key}_scale"] = (key, scale_of[view])
        records[key] = by_view[view] = new
    return Casting(plan, records, stats, sources, reader, scales)


def _scale_record(sources: writer.Sources, scale: Fp8Scale, key: str) -> TensorRecord:
    """A float32 scalar whose value the weight's cast finds (it is written after the weight)."""
    storage = StorageRef(f"scale:{key}", "float32", "cpu", 1)

    def produce() -> Iterator[bytes]:
        if scale.value is None:
            raise WriteFailed(f"{key}_scale was written before {key} (internal)")
        yield struct.pack("<f", scale.value)

    sources.add_stream(storage, produce)
    return TensorRecord(storage, 0, (), (), "float32")


def insert_after(
    items: list[tuple[str, Any]], extras: dict[str, tuple[str, TensorRecord]]
) -> list[tuple[str, Any]]:
    """Weight items with new entries (fp8 scales) placed right after the key they belong to."""
    after: dict[str, list[tuple[str, Any]]] = {}
    for new_key, (owner, rec) in extras.items():
        after.setdefault(owner, []).append((new_key, rec))
    out: list[tuple[str, Any]] = []
    for k, v in items:
        out.append((k, v))
        out.extend(after.get(k, []))
    return out


def _ranger(
    reader: TensorReader, entry: TensorEntry
) -> Callable[[], Iterator[tuple[int, int, int]]]:
    return lambda: reader.raw_ranges(entry, cast_ops.CHUNK_ELEMENTS)


def _chunker(reader: TensorReader, entry: TensorEntry) -> Callable[[], Iterator[Any]]:
    return lambda: reader.chunks(entry, cast_ops.CHUNK_ELEMENTS)


def dequantize_records(
    ckpt: Checkpoint, records: dict[str, TensorRecord], sources: writer.Sources
) -> tuple[dict[str, TensorRecord], list[DequantizedRow]]:
    """Quantized tensors as float32 (torch's own dequantize), one at a time; the rest as is.
    Returns the new records and one report row per dequantized tensor."""
    out: dict[str, TensorRecord] = {}
    rows: list[DequantizedRow] = []
    done: dict[int, TensorRecord] = {}
    with TensorReader(ckpt) as reader:
        for key, rec in records.items():
            if rec.quant is None:
                out[key] = rec
                continue
            if id(rec) not in done:
                t = reader.read(TensorEntry(key, rec, "parameter")).dequantize()
                done[id(rec)] = sources.add_tensor(t)
                rows.append(
                    {"key": key, "from": f"{rec.dtype} {rec.quant.describe()}", "to": "float32"}
                )
            out[key] = done[id(rec)]
    return out, rows


def quantized_keys(records: dict[str, TensorRecord]) -> list[str]:
    return [k for k, r in records.items() if r.quant is not None]


def replace_items(
    items: list[tuple[str, Any]], records: dict[str, TensorRecord]
) -> list[tuple[str, Any]]:
    """Weight items with the tensors swapped for new records, by key."""
    return [(k, records.get(k, v)) for k, v in items]
