"""safetensors: header parsing and validation (no torch), sharded index files."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_tool.errors import UnreadableCheckpoint, UnsafeCheckpoint

# safetensors dtype -> our (torch) dtype name
ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}
ST_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "C64": 8,
}
MAX_HEADER = 100_000_000  # the limit the safetensors library itself enforces


@dataclass
class STTensor:
    """One tensor entry of a safetensors header."""

    name: str
    dtype: str  # torch dtype name
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class STHeader:
    """A validated safetensors header."""

    path: Path
    tensors: list[STTensor]
    metadata: dict[str, str]
    data_start: int


def read_header(path: Path) -> STHeader:
    """Read and validate the header against the format rules, reading no tensor bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise UnreadableCheckpoint(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        if n > MAX_HEADER or n + 8 > size:
            raise UnreadableCheckpoint(
                f"{path}: safetensors header length {n} is larger than the file "
                f"({size} bytes) or the 100 MB limit: the file is corrupt or truncated"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableCheckpoint(
            f"{path}: safetensors header is not valid JSON ({exc})"
        ) from None
    if not isinstance(header, dict):
        raise UnreadableCheckpoint(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise UnreadableCheckpoint(f"{path}: safetensors __metadata__ must map strings to strings")
    data_start = 8 + n
    tensors = [_entry(path, name, info, data_start) for name, info in header.items()]
    _check_layout(path, tensors, size - data_start, data_start)
    return STHeader(path, tensors, metadata, data_start)


def _entry(path: Path, name: str, info: Any, data_start: int) -> STTensor:
    if not isinstance(info, dict):
        raise UnreadableCheckpoint(f"{path}: tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in ST_DTYPES:
        raise UnreadableCheckpoint(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise UnreadableCheckpoint(f"{path}: tensor {name!r} has an invalid shape {shape!r:.60}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise UnreadableCheckpoint(f"{path}: tensor {name!r} has invalid data_offsets")
    numel = 1
    for d in shape:
        numel *= d
    if numel * ST_SIZES[dtype] != offsets[1] - offsets[0]:
        raise UnreadableCheckpoint(
            f"{path}: tensor {name!r} shape {shape} of {dtype} needs "
            f"{numel * ST_SIZES[dtype]} bytes but its byte range holds {offsets[1] - offsets[0]}"
        )
    return STTensor(
        name, ST_DTYPES[dtype], tuple(shape), data_start + offsets[0], data_start + offsets[1]
    )


def _check_layout(path: Path, tensors: list[STTensor], buffer_len: int, data_start: int) -> None:
    ordered = sorted(tensors, key=lambda t: (t.start, t.end))
    cursor = data_start
    for t in ordered:
        if t.start < cursor:
            raise UnreadableCheckpoint(
                f"{path}: tensor {t.name!r} overlaps the bytes of another tensor"
            )
        if t.start > cursor:
            raise UnreadableCheckpoint(
                f"{path}: gap before tensor {t.name!r}: offsets must be contiguous"
            )
        cursor = t.end
    if cursor - data_start > buffer_len:
        raise UnreadableCheckpoint(
            f"{path}: tensor data runs past the end of the file (truncated download?)"
        )
    if cursor - data_start < buffer_len:
        raise UnreadableCheckpoint(
            f"{path}: {buffer_len - (cursor - data_start)} stray bytes after the last tensor"
        )


@dataclass
class ShardIndex:
    """A `*.index.json` file: which shard holds each key."""

    path: Path
    weight_map: dict[str, str]
    metadata: dict[str, Any]

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def read_index(path: Path) -> ShardIndex:
    """Read a sharded index; every shard must be a plain file name inside the index's folder."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableCheckpoint(f"{path}: index is not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise UnreadableCheckpoint(f"{path}: index has no weight_map of key -> shard file")
    folder = path.parent.resolve()
    for shard in set(weight_map.values()):
        target = (folder / shard).resolve()
        if target.parent != folder or "/" in shard or "\\" in shard:
            raise UnsafeCheckpoint(
                f"{path}: shard {shard!r} points outside the index's folder; refused "
                f"(see `ckpt scan {path}`)"
            )
        if not target.is_file():
            raise UnreadableCheckpoint(f"{path}: shard {shard!r} is missing from {folder}")
    metadata = data.get("metadata") or {}
    return ShardIndex(path, weight_map, metadata if isinstance(metadata, dict) else {})
