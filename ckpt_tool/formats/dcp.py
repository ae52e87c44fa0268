"""torch.distributed.checkpoint folders: the `.metadata` file read with the restricted reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_tool.errors import UnreadableCheckpoint

from .safe_pickle import DType, GlobalRef, Inert, PickleResult, safe_loads

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
    }
)


@dataclass
class DCPEntry:
    """One tensor a DCP folder holds (its global shape and dtype)."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    chunks: int


@dataclass
class DCPIndex:
    """The tensors and non-tensor items a DCP `.metadata` file describes."""

    path: Path
    tensors: list[DCPEntry]
    other_items: list[str]
    pickle: PickleResult


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


def read_dcp(folder: Path) -> DCPIndex:
    """Read a DCP folder's `.metadata` safely; refuse names a real DCP metadata never uses."""
    meta_path = folder / ".metadata"
    try:
        data = meta_path.read_bytes()
    except OSError as exc:
        raise UnreadableCheckpoint(f"{meta_path}: cannot read ({exc.strerror})") from None
    result = safe_loads(data, str(meta_path))
    for name, ref in result.globals.items():
        if name in DCP_METADATA_CLASSES:
            ref.kind = "safe"  # inert records of the classes a genuine DCP file uses
    root = fields(result.root)
    sd_meta = root.get("state_dict_metadata")
    if not isinstance(sd_meta, dict):
        raise UnreadableCheckpoint(
            f"{meta_path}: not a torch.distributed.checkpoint metadata file "
            "(no state_dict_metadata)"
        )
    tensors: list[DCPEntry] = []
    other: list[str] = []
    for key, item in sd_meta.items():
        f = fields(item)
        props = f.get("properties")
        size = f.get("size")
        # TensorProperties pickles its state as a tuple (dtype, layout, requires_grad, ...)
        state = props.state if isinstance(props, Inert) else None
        dtype = state[0] if isinstance(state, tuple) and state else fields(props).get("dtype")
        if isinstance(size, tuple) and isinstance(dtype, DType):
            chunks = f.get("chunks")
            tensors.append(
                DCPEntry(
                    str(key),
                    dtype.name,
                    tuple(size),
                    len(chunks) if isinstance(chunks, list) else 1,
                )
            )
        else:
            other.append(str(key))
    return DCPIndex(folder, tensors, other, result)


def unexpected_globals(index: DCPIndex) -> list[GlobalRef]:
    """Globals in `.metadata` outside the DCP classes and our allowlist."""
    return [g for g in index.pickle.globals.values() if g.kind != "safe"]
