"""Sharded safetensors out: Hugging Face shard names, each shard atomic and verified, the
index written last."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import OutputRefused, WriteFailed
from ckpt_tool.formats import writer
from ckpt_tool.formats.safe_pickle import TensorRecord, view_key


@dataclass
class ShardPlan:
    """Which keys go to which shard file."""

    names: list[str]
    keys: list[list[str]]
    oversized: list[str] = field(default_factory=list)


def plan_shards(records: dict[str, TensorRecord], target: Path, max_bytes: int) -> ShardPlan:
    """Greedy shards in key order, Hugging Face names; a tensor larger than the limit gets a
    shard of its own. Tied tensors (one record) are stored once, in the first shard."""
    groups: list[list[str]] = [[]]
    sizes = [0]
    oversized: list[str] = []
    placed: set[tuple[Any, ...]] = set()
    for key, rec in records.items():
        if view_key(rec) in placed:
            continue
        placed.add(view_key(rec))
        if rec.nbytes > max_bytes:
            oversized.append(key)
        if groups[-1] and sizes[-1] + rec.nbytes > max_bytes:
            groups.append([])
            sizes.append(0)
        groups[-1].append(key)
        sizes[-1] += rec.nbytes
    n = len(groups)
    stem = target.name.removesuffix(".safetensors")
    names = (
        [target.name]
        if n == 1
        else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    return ShardPlan(names, groups, oversized)


def write_sharded(
    records: dict[str, TensorRecord],
    target: Path,
    sources: writer.Sources,
    metadata: dict[str, str],
    max_bytes: int,
    *,
    force: bool,
    verify: bool,
) -> tuple[list[writer.WriteResult], Path | None, ShardPlan]:
    """Each shard written atomically and verified, then the index (written last)."""
    plan = plan_shards(records, target, max_bytes)
    if len(plan.names) == 1:
        return (
            [writer.write_safetensors(records, target, sources, metadata, verify=verify)],
            None,
            plan,
        )
    index_path = target.parent / f"{target.name}.index.json"
    paths = [target.parent / n for n in plan.names]
    if not force:
        for p in [*paths, index_path]:
            if p.exists():
                raise OutputRefused(f"{p}: already exists; pass --force to overwrite it")
    owner: dict[tuple[Any, ...], str] = {}  # view -> first key holding it
    for k, r in records.items():
        owner.setdefault(view_key(r), k)
    results = []
    weight_map: dict[str, str] = {}
    try:
        for name, path, keys in zip(plan.names, paths, plan.keys, strict=True):
            members = set(keys)
            shard = {k: r for k, r in records.items() if owner[view_key(r)] in members}
            for k in shard:
                if owner[view_key(shard[k])] == k:  # aliases live in ckpt.aliases only
                    weight_map[k] = name
            results.append(writer.write_safetensors(shard, path, sources, metadata, verify=verify))
    except BaseException:
        # a failure in a later shard (e.g. --strict overflow) must not leave earlier ones
        for written in results:
            with contextlib.suppress(OSError):
                written.path.unlink()
        raise
    unique = [r for k, r in records.items() if owner[view_key(r)] == k]
    index = {  # as transformers writes it: sizes of the stored tensors, keys sorted
        "metadata": {
            "total_size": sum(r.nbytes for r in unique),
            "total_parameters": sum(r.numel for r in unique),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    data = (json.dumps(index, indent=2) + "\n").encode()
    try:
        with writer.atomic_file(index_path) as (f, tmp):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            writer.commit(tmp, index_path)
    except OSError as exc:
        raise WriteFailed(f"{index_path}: write failed ({exc.strerror})") from None
    return results, index_path, plan
