"""DCP out: a torch.distributed.checkpoint folder written by torch's own writer, atomically."""

from __future__ import annotations

import contextlib
import warnings
import zlib
from pathlib import Path
from typing import Any

from ckpt_tool.checkpoint import Checkpoint, TensorEntry
from ckpt_tool.errors import WriteFailed
from ckpt_tool.formats import dcp, writer
from ckpt_tool.formats.pickle_rules import SAFE
from ckpt_tool.formats.raw import tensor_bytes
from ckpt_tool.formats.safe_pickle import TensorRecord
from ckpt_tool.tensors import TensorReader


def write_dcp(tensors: dict[str, Any], target: Path, *, verify: bool) -> int:
    """Save tensors as a torch.distributed.checkpoint folder (single process), atomically:
    written beside the target, verified, then renamed into place. Returns bytes on disk."""
    import torch
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save

    # torch's writer creates the folder itself
    with writer.atomic_folder(target, create=False) as tmp:
        with warnings.catch_warnings():  # "assuming ... a single process": that is the intent
            warnings.simplefilter("ignore", UserWarning)
            save(dict(tensors), storage_writer=FileSystemWriter(str(tmp)))
        written = dcp.survey_dcp(tmp)  # re-scanned like every output, even with --no-verify
        if written.verdict != SAFE:
            raise WriteFailed(
                f"{target}: the output's .metadata would not be safe "
                f"({'; '.join(written.names(written.verdict)[:3])}); nothing was written"
            )
        if verify:
            from ckpt_tool.tensors import load_dcp_state_dict

            back = load_dcp_state_dict(tmp)
            for key, t in tensors.items():
                got = back.get(key)
                if (
                    not isinstance(got, torch.Tensor)
                    or got.dtype != t.dtype
                    or got.shape != t.shape
                    or _crc(got) != _crc(t)
                ):
                    raise WriteFailed(f"{target}: verification failed for {key!r}")
    return sum(p.stat().st_size for p in target.iterdir() if p.is_file())


def _crc(t: Any) -> int:

    return zlib.crc32(tensor_bytes(t))


def materialise(
    ckpt: Checkpoint, records: dict[str, TensorRecord], sources: writer.Sources
) -> dict[str, Any]:
    """Live tensors for records (casts run here), for writers that need tensors (DCP)."""
    import torch

    out: dict[str, Any] = {}
    made: dict[int, Any] = {}
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(TensorReader(ckpt))
        for key, rec in records.items():
            if id(rec) in made:
                out[key] = made[id(rec)]
                continue
            raw = sources.produce_all(rec.storage) if rec.storage is not None else None
            if raw is not None:
                t = (
                    torch.frombuffer(raw, dtype=getattr(torch, rec.dtype))
                    if raw
                    else torch.empty(0, dtype=getattr(torch, rec.dtype))
                )
                t = t.reshape(rec.shape)
            else:
                t = reader.read(TensorEntry(key, rec, "tensor"))
            made[id(rec)] = out[key] = t
    return out
