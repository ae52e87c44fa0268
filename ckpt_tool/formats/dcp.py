"""torch.distributed.checkpoint folders: the `.metadata` file read with the restricted reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, UnreadableCheckpoint

from .pickle_rules import DANGEROUS, NEEDS_CODE
from .safe_pickle import DType, Inert, PickleResult, global_name, raise_unreadable, read_pickle
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


def _survey_item(folder: Path, survey: Survey, fqn: Any, info: dict[str, Any]) -> None:
    """One stored item's bytes, if it is not raw tensor data: torch.save output."""
    rel, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    where = f"item {str(fqn)!r}"
    if not isinstance(rel, str) or not rel or "/" in rel or "\\" in rel or rel in (".", ".."):
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
                )
            )
        else:
            other.append(str(key))
    return DCPIndex(folder, tensors, other, result, survey)
