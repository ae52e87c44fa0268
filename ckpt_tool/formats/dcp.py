"""torch.distributed.checkpoint folders: the `.metadata` file read with the restricted reader."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from ckpt_tool.errors import CkptError, UnreadableCheckpoint

from . import torch_zip
from .pickle_rules import DANGEROUS, NEEDS_CODE, SAFE
from .safe_pickle import (
    DTYPE_SIZES,
    DType,
    Inert,
    PickleResult,
    TensorRecord,
    contiguous_stride,
    global_name,
    raise_unreadable,
    read_pickle,
)
from .survey import Mapped, Survey, survey_buffer

# The classes a genuine DCP `.metadata` pickle names; anything else there is refused before
# torch's own reader (which uses an unrestricted pickle.load) ever sees the folder.
DCP_METADATA_CLASSES = frozenset(
    {
        "torch.distributed.checkpoint.metadata.Metadata",
        "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
        "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
        "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
        "torch.distributed.checkpoint.metadata.TensorProperties",
        "torch.distributed.checkpoint.metadata.MetadataIndex",
        "torch.distributed.checkpoint.metadata.StorageMeta",
        "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed.checkpoint.planner.LoadItemType",
        "torch.distributed.checkpoint.planner.WriteItemType",
        "torch.serialization._get_layout",
        "torch.memory_format",
        "torch.distributed.checkpoint._extension.StreamTransformExtension",
        # StorageMeta.checkpoint_id is the folder's path
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib._local.PosixPath",
        "pathlib._local.WindowsPath",
    }
)


_DCP = "torch.distributed.checkpoint.metadata"


@dataclass
class DCPEntry:
    """One tensor a DCP folder holds (its global shape and dtype)."""

    key: str  # the flattened name DCP stores it under (its FQN)
    dtype: str
    shape: tuple[int, ...]
    chunks: int
    path: tuple[str, ...] = ()  # where it sat in the saved state dict ("model", "conv1.weight")
    stored: tuple[StoredChunk, ...] = ()  # where .metadata says each chunk's item lies


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """One chunk of a DCP tensor: its place in the tensor and its item in a data file."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    relative_path: str
    offset: int
    length: int
    transformed: bool  # compressed or otherwise transformed on the way to disk


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of a DCP tensor's bytes in one data file, in the tensor's row-major order."""

    path: Path
    offset: int
    nbytes: int


@dataclass
class DCPIndex:
    """The tensors and non-tensor items a DCP `.metadata` file describes."""

    path: Path
    tensors: list[DCPEntry]
    other_items: list[str]
    pickle: PickleResult
    survey: Survey


def fields(obj: Any) -> dict[str, Any]:
    """The attribute dict of an inert record (BUILD state, slot state, or keyword args)."""
    if not isinstance(obj, Inert):
        return {}
    out: dict[str, Any] = dict(obj.kwargs)
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:
        for part in state:
            if isinstance(part, dict):
                out.update(part)
    elif isinstance(state, dict):
        out.update(state)
    return out


def survey_dcp(folder: Path) -> Survey:
    """Judge a DCP folder: `.metadata` (which torch's DCP reader unpickles without
    restrictions, so only the classes genuine metadata uses may appear there) and every item
    stored as bytes (which torch's planner reads back with torch.load(weights_only=False))."""
    survey = Survey(folder, "dcp", data_classes=DCP_METADATA_CLASSES)
    meta = folder / ".metadata"
    try:
        with Mapped(meta) as buf:
            result = read_pickle(bytes(buf), 0, DCP_METADATA_CLASSES)
    except (OSError, CkptError) as exc:
        text = exc.message if isinstance(exc, CkptError) else (exc.strerror or str(exc))
        survey.flag("error", "unreadable", f"cannot read .metadata ({text})", ".metadata")
        return survey
    survey.add_pickle(".metadata", result)
    for f in survey.findings:
        if f.verdict == NEEDS_CODE:
            f.verdict = DANGEROUS
            f.message = (
                "no DCP metadata names this, and torch's DCP reader unpickles .metadata "
                "without restrictions"
            )
    survey.main, survey.main_member = result, ".metadata"
    if result.complete:
        # Tensor items are read back with torch.load(weights_only=True); bytes items with
        # weights_only=False, so those are surveyed like files.
        root = fields(result.root)
        sd_meta, storage = root.get("state_dict_metadata"), root.get("storage_data")
        if isinstance(storage, dict) and isinstance(sd_meta, dict):
            for key, info in storage.items():
                fqn = fields(key).get("fqn")
                item = sd_meta.get(fqn) if isinstance(fqn, str) else None
                if global_name(item) != f"{_DCP}.TensorStorageMetadata":
                    _survey_item(folder, survey, fqn, fields(info))
    return survey


def _inside(rel: Any) -> TypeGuard[str]:
    """Whether a data file's relative path names a file in the DCP folder itself."""
    return (
        isinstance(rel, str)
        and bool(rel)
        and "/" not in rel
        and "\\" not in rel
        and rel not in (".", "..")
    )


def _survey_item(folder: Path, survey: Survey, fqn: Any, info: dict[str, Any]) -> None:
    """One stored item's bytes, if it is not raw tensor data: torch.save output."""
    rel, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    where = f"item {str(fqn)!r}"
    if not _inside(rel):
        survey.flag(
            DANGEROUS,
            "path-traversal",
            f"data file {str(rel)!r} is outside the DCP folder: torch's reader would open it",
            where,
        )
        return
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        survey.flag("error", "unreadable", "invalid offset or length in .metadata", where)
        return
    path = folder / rel
    if not path.is_file():
        survey.flag("error", "unreadable", f"data file {rel!r} is missing", where)
        return
    with Mapped(path) as buf:
        if offset + length > len(buf):
            survey.flag("error", "unreadable", f"runs past the end of {rel}", where)
            return
        head = bytes(buf[offset : offset + 4])
        if head[:1] != b"\x80" and head != b"PK\x03\x04":
            return  # raw tensor bytes
        item = Survey(path, "item")
        survey_buffer(bytes(buf[offset : offset + length]), item)
    for f in item.findings:
        f.member = f"{where} ({rel}@{offset}) > {f.member}"
        survey.findings.append(f)


def read_dcp(folder: Path, survey: Survey | None = None) -> DCPIndex:
    """Read a DCP folder's `.metadata` with the restricted reader."""
    survey = survey or survey_dcp(folder)
    meta_path = folder / ".metadata"
    if survey.main is None:
        errors = survey.errors
        raise UnreadableCheckpoint(f"{meta_path}: {errors[0].message if errors else 'unreadable'}")
    result = raise_unreadable(survey.main, str(meta_path))
    root = fields(result.root)
    sd_meta = root.get("state_dict_metadata")
    if not isinstance(sd_meta, dict):
        raise UnreadableCheckpoint(
            f"{meta_path}: not a torch.distributed.checkpoint metadata file "
            "(no state_dict_metadata)"
        )
    tensors: list[DCPEntry] = []
    other: list[str] = []
    planner = root.get("planner_data")
    paths = planner if isinstance(planner, dict) else {}
    items = _storage_items(root.get("storage_data"))
    for key, item in sd_meta.items():
        f = fields(item)
        props = f.get("properties")
        size = f.get("size")
        # TensorProperties pickles its state as a tuple (dtype, layout, requires_grad, ...)
        state = props.state if isinstance(props, Inert) else None
        dtype = state[0] if isinstance(state, tuple) and state else fields(props).get("dtype")
        if isinstance(size, tuple) and isinstance(dtype, DType):
            chunks = f.get("chunks")
            path = paths.get(key)
            tensors.append(
                DCPEntry(
                    str(key),
                    dtype.name,
                    tuple(size),
                    len(chunks) if isinstance(chunks, list) else 1,
                    tuple(str(p) for p in path) if isinstance(path, (tuple, list)) else (),
                    _stored(str(key), chunks, items),
                )
            )
        else:
            other.append(str(key))
    return DCPIndex(folder, tensors, other, result, survey)


def _storage_items(storage: Any) -> dict[tuple[str, tuple[int, ...]], dict[str, Any]]:
    """.metadata's storage_data: (FQN, chunk offsets) -> the item's _StorageInfo fields."""
    out: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
    for key, info in (storage if isinstance(storage, dict) else {}).items():
        k = fields(key)
        fqn, offsets = k.get("fqn"), k.get("offset")
        if isinstance(fqn, str) and isinstance(offsets, tuple):
            out[(fqn, offsets)] = fields(info)
    return out


def _stored(
    fqn: str, chunks: Any, items: dict[tuple[str, tuple[int, ...]], dict[str, Any]]
) -> tuple[StoredChunk, ...]:
    """Each chunk with its item's place, or () when .metadata does not say it plainly."""
    out: list[StoredChunk] = []
    for chunk in chunks if isinstance(chunks, list) else []:
        c = fields(chunk)
        offsets, sizes = c.get("offsets"), c.get("sizes")
        if not (isinstance(offsets, tuple) and isinstance(sizes, tuple)):
            return ()
        info = items.get((fqn, offsets))
        if info is None:
            return ()
        rel, start, length = info.get("relative_path"), info.get("offset"), info.get("length")
        if not (isinstance(rel, str) and isinstance(start, int) and isinstance(length, int)):
            return ()
        out.append(
            StoredChunk(offsets, sizes, rel, start, length, bool(info.get("transform_descriptors")))
        )
    return tuple(out)


def plain_pieces(
    folder: Path, shape: tuple[int, ...], dtype: str, stored: tuple[StoredChunk, ...]
) -> tuple[Piece, ...] | None:
    """A DCP tensor's bytes as file ranges in row-major order, read without torch: torch's
    FileSystemWriter stores each chunk as a small torch.save archive inside a data file;
    read with our own zip and pickle readers, a chunk whose archive holds a contiguous
    little-endian tensor of the chunk's shape in a stored member is one byte range, and a
    tensor split along its first dimension only (FSDP's layout; one chunk on one rank) is its
    chunks' ranges in order. None for anything else (torch's DCP reader then)."""
    if not stored:
        return None
    spans = sorted(stored, key=lambda c: c.offsets[:1])
    at, out = 0, []
    for chunk in spans:
        if len(chunk.offsets) != len(shape) or len(chunk.sizes) != len(shape):
            return None
        if shape and (any(chunk.offsets[1:]) or chunk.sizes[1:] != shape[1:]):
            return None  # split along a later dimension: not one run per chunk
        if shape and chunk.offsets[0] != at:
            return None  # a gap or an overlap
        piece = _chunk_piece(folder, chunk, dtype)
        if piece is None:
            return None
        out.append(piece)
        at += chunk.sizes[0] if shape else 1
    if at != (shape[0] if shape else 1):
        return None
    return tuple(p for p in out if p.nbytes)


_TAIL = (1 << 16) + 22 + 76  # an end record's comment, the record, zip64's records


def _chunk_piece(folder: Path, chunk: StoredChunk, dtype: str) -> Piece | None:
    """Where one chunk's values lie: its item archive read from its tail (the directory)
    and two local headers, never its data (a chunk may be gigabytes)."""
    rel = chunk.relative_path
    if chunk.transformed or not _inside(rel):
        return None
    path = folder / rel
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start, length = chunk.offset, chunk.length
            if start < 0 or length < 22 or start + length > size:
                return None
            tail_len = min(length, _TAIL)
            tail = os.pread(f.fileno(), tail_len, start + length - tail_len)
            members = torch_zip.read_directory(tail)
            shift = length - tail_len  # the tail buffer starts this far into the item
            by_name = {m.filename: m for m in members}
            prefix = members[0].filename.split("/", 1)[0] if members else ""
            pkl = by_name.get(f"{prefix}/data.pkl")
            order = by_name.get(f"{prefix}/byteorder")
            if pkl is None or pkl.compress_type != torch_zip.STORED or pkl.file_size > 1 << 20:
                return None
            if order is not None and _member(f, start, shift, order) != b"little":
                return None
            data = _member(f, start, shift, pkl)
            if data is None:
                return None
            result = read_pickle(data, 0)
            rec = result.root
            if not (result.complete and isinstance(rec, TensorRecord) and rec.storage):
                return None
            if result.verdict() != SAFE or rec.quant is not None or rec.dtype != dtype:
                return None
            if rec.shape != chunk.sizes:
                return None
            if rec.numel > 1 and rec.stride != contiguous_stride(rec.shape):
                return None
            storage = by_name.get(f"{prefix}/data/{rec.storage.key}")
            if storage is None or storage.compress_type != torch_zip.STORED:
                return None
            at = _data_at(f, start, shift, storage)
            first = rec.offset * DTYPE_SIZES[dtype]
            if at is None or first + rec.nbytes > storage.file_size:
                return None
            if at + storage.file_size > start + length:
                return None
            return Piece(path, at + first, rec.nbytes)
    except (OSError, CkptError, torch_zip.DirectoryError, UnicodeDecodeError, struct.error):
        return None


def _data_at(f: Any, start: int, shift: int, member: torch_zip.Member) -> int | None:
    """Absolute file offset of a member's bytes, from its local header."""
    header = start + member.header_offset + shift
    if member.header_offset + shift < 0:
        return None
    raw = os.pread(f.fileno(), 30, header)
    if len(raw) < 30 or raw[:4] != torch_zip.ZIP_MAGIC:
        return None
    nlen, elen = struct.unpack_from("<HH", raw, 26)
    return int(header + 30 + nlen + elen)


def _member(f: Any, start: int, shift: int, member: torch_zip.Member) -> bytes | None:
    at = _data_at(f, start, shift, member)
    if at is None:
        return None
    data = os.pread(f.fileno(), member.file_size, at)
    return data if len(data) == member.file_size else None
