"""Whole Hugging Face model folders out: weights, config.json and every other file of the
input folder, written beside the target and renamed into place when complete."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from ckpt_tool.checkpoint import Checkpoint
from ckpt_tool.errors import OutputRefused, WriteFailed
from ckpt_tool.formats import writer
from ckpt_tool.formats.safe_pickle import TensorRecord

from .shards import write_sharded

# Files of a model folder that hold weights: replaced by what is written, never copied.
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHTS_NAME = "model.safetensors"


def write_hf_folder(
    ckpt: Checkpoint,
    weights: dict[str, TensorRecord],
    sources: writer.Sources,
    metadata: dict[str, str],
    target: Path,
    *,
    max_shard: int | None,
    force: bool,
    verify: bool,
) -> dict[str, Any]:
    """A complete model folder at target: the weights (shards and an index past max_shard),
    config.json with its dtype fields updated, every other file of the input folder copied."""
    if target.is_dir() and any(target.iterdir()) and not force:
        raise OutputRefused(f"{target}: exists and is not empty; pass --force to replace it")
    source = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    with writer.atomic_folder(target) as tmp:
        results, index, _ = write_sharded(
            weights, tmp / WEIGHTS_NAME, sources, metadata, max_shard or (1 << 62),
            force=True, verify=verify,
        )  # fmt: skip
        copied = _copy_others(source, tmp)
        dtype = _config_dtype(source, tmp, weights)
    files = sorted(p.name for p in target.iterdir())
    return {
        "format": "hf-folder",
        "bytes": sum((target / f).stat().st_size for f in files),
        "shards": [str(target / r.path.name) for r in results] if index else [],
        "index": str(target / index.name) if index else None,
        "copied_files": copied,
        "config_dtype": dtype,
        "files": files,
    }


def _copy_others(source: Path, dest: Path) -> list[str]:
    """Tokenizer, generation, processor and every other non-weight file, links followed."""
    copied = []
    for p in sorted(source.iterdir()):
        if not p.is_file() or p.name.endswith(WEIGHT_FILES) or p.name.endswith(".index.json"):
            continue
        shutil.copy2(p, dest / p.name)  # an HF cache's symlinks are followed to the blobs
        copied.append(p.name)
    return copied


def _config_dtype(source: Path, dest: Path, weights: dict[str, TensorRecord]) -> str | None:
    """config.json's torch_dtype (and transformers' newer `dtype`) set to the weights' dtype."""
    path = dest / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise WriteFailed(f"{source / 'config.json'}: not valid JSON; nothing written") from None
    floating = Counter(r.dtype for r in weights.values() if r.dtype.startswith(("float", "bfloat")))
    if not floating or not isinstance(config, dict):
        return None
    dtype = floating.most_common(1)[0][0]
    # transformers 5 reads `dtype`, earlier releases `torch_dtype`: both say it
    fields = ["torch_dtype", "dtype"] if "dtype" in config else ["torch_dtype"]
    if all(config.get(f) == dtype for f in fields):
        return None  # already says so: the copy stays byte for byte
    for field in fields:
        config[field] = dtype
    data = json.dumps(config, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        path.unlink()
    path.write_text(data, encoding="utf-8")
    return dtype
