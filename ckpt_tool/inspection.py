"""The inspect report: a plain JSON-ready dict built from a Checkpoint (no printing here)."""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import Checkpoint, TensorEntry, counts_as_parameter, unique_numel
from .formats.safe_pickle import TensorRecord
from .keys import natural_key
from .reports import InspectData, ModuleShare, TensorInfo
from .surgery.prefixes import detect_prefix


@dataclass
class ModuleNode:
    """A module path in the tree with its own tensors and its children."""

    name: str
    path: str
    tensors: list[TensorEntry] = field(default_factory=list)
    children: dict[str, ModuleNode] = field(default_factory=dict)
    numel: int = 0
    nbytes: int = 0
    class_name: str | None = None
    shape_id: int = -1  # equal for subtrees of equal structure; set by build_tree

    def signature(self) -> int:
        """Structure of the subtree (relative names, shapes, dtypes) as a number, to spot
        repeated blocks: equal numbers, equal structure."""
        return self.shape_id


def build_tree(entries: list[TensorEntry], modules: dict[str, str] | None = None) -> ModuleNode:
    """Group tensors by module path; totals per module."""
    root = ModuleNode("", "")
    modules = modules or {}
    root.class_name = modules.get("")
    for e in entries:
        parts = e.key.split(".")
        node = root
        for i, part in enumerate(parts[:-1]):
            if part not in node.children:
                path = ".".join(parts[: i + 1])
                node.children[part] = ModuleNode(part, path, class_name=modules.get(path))
            node = node.children[part]
        node.tensors.append(e)
    _totals(root)
    return root


def _totals(root: ModuleNode) -> None:
    # post-order without recursion
    order: list[ModuleNode] = []
    stack = [root]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children.values())
    ids: dict[tuple[Any, ...], int] = {}  # children first, so a node's key holds their ids
    for n in reversed(order):
        n.numel = sum(t.numel for t in n.tensors) + sum(c.numel for c in n.children.values())
        n.nbytes = sum(t.nbytes for t in n.tensors) + sum(c.nbytes for c in n.children.values())
        own = tuple((t.key.rsplit(".", 1)[-1], t.shape, t.dtype) for t in n.tensors)
        key = (n.class_name, own, tuple((name, c.shape_id) for name, c in n.children.items()))
        n.shape_id = ids.setdefault(key, len(ids))


def select(entries: dict[str, TensorEntry], pattern: str | None) -> list[TensorEntry]:
    """Entries whose key matches a shell-style glob (all when pattern is None)."""
    values = list(entries.values())
    if pattern is None:
        return values
    return [e for e in values if fnmatch.fnmatchcase(e.key, pattern)]


def shared_groups(ckpt: Checkpoint) -> list[list[str]]:
    """Keys that are one tensor (tied weights: same storage, offset, shape and strides)."""
    by_view: dict[tuple[Any, ...], list[str]] = {}
    for key, e in ckpt.tensors.items():
        if e.record.storage is None:
            continue
        view = e.record.view
        keys = by_view.get(view)
        if keys is None:
            by_view[view] = [key]
        else:
            keys.append(key)
    return [keys for keys in by_view.values() if len(keys) > 1]


def view_groups(ckpt: Checkpoint) -> list[list[str]]:
    """Keys that are different views of one storage (cuDNN's flat RNN weights, slices)."""
    by_storage: dict[int, dict[tuple[Any, ...], str]] = {}
    for key, e in ckpt.tensors.items():
        storage, view = e.record.storage, e.record.view
        if storage is None:
            continue
        views = by_storage.get(id(storage))
        if views is None:
            by_storage[id(storage)] = {view: key}
        elif view not in views:
            views[view] = key
    return [list(views.values()) for views in by_storage.values() if len(views) > 1]


def top_level_shares(ckpt: Checkpoint, strip: str = "") -> list[ModuleShare]:
    """Parameter elements per top-level module (below a wrapper prefix), largest first."""
    counts: Counter[str] = Counter()
    for e in ckpt.tensors.values():
        if e.kind == "parameter":
            key = e.key[len(strip) :] if strip and e.key.startswith(strip) else e.key
            counts[key.split(".", 1)[0] if "." in key else "(root)"] += e.numel
    total = sum(counts.values()) or 1
    return [
        {"module": name, "params": n, "share": n / total}
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], natural_key(kv[0])))
    ]


def tensor_json(e: TensorEntry) -> TensorInfo:
    rec: TensorRecord = e.record
    info: TensorInfo = {
        "key": e.key,
        "shape": list(rec.shape),
        "dtype": rec.dtype,
        "numel": rec.numel,
        "bytes": rec.nbytes,
        "kind": e.kind,
        "device": rec.device,
        "requires_grad": rec.requires_grad if rec.is_parameter else None,
    }
    if rec.quant is not None:
        info["quant"] = _quant_json(rec)
    return info


def _quant_json(rec: TensorRecord) -> dict[str, Any]:
    q = rec.quant
    assert q is not None
    out: dict[str, Any] = {"scheme": q.scheme}
    if q.per_channel:
        out["axis"] = q.axis
        out["channels"] = q.scales.numel if q.scales is not None else None
    else:
        out["scale"] = q.scale
        out["zero_point"] = q.zero_point
    return out


def inspect_report(ckpt: Checkpoint, pattern: str | None = None) -> InspectData:
    """Everything `ckpt inspect` shows, as plain data."""
    entries = select(ckpt.tensors, pattern)
    params: list[TensorEntry] = []
    buffers: list[TensorEntry] = []
    by_dtype: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    seen: set[tuple[Any, ...]] = set()
    for e in ckpt.tensors.values():
        (params if counts_as_parameter(ckpt, e) else buffers).append(e)
        rec = e.record
        devices[rec.device] += 1
        if rec.view not in seen:  # a tied weight's bytes once
            seen.add(rec.view)
            by_dtype[rec.dtype] += rec.nbytes
    prefix = detect_prefix(ckpt.tensors)
    suggestion = prefix.suggestion.format(path=ckpt.path) if prefix.suggestion else None
    frozen = ckpt.frozen
    frozen_set = set(frozen)
    trainable = unique_numel(e for e in params if e.key not in frozen_set)
    num_params = unique_numel(params)
    return {
        "file": str(ckpt.path),
        "format": ckpt.format,
        "layout": ckpt.layout,
        "framework": ckpt.framework,
        "size_bytes": ckpt.size_bytes,
        "weights": {
            "key": ckpt.weights_key,
            "candidates": ckpt.weight_sets,
            "hint": (
                f"several weight sets; choose with --weights ({', '.join(ckpt.weight_sets)})"
                if len(ckpt.weight_sets) > 1
                else None
            ),
        },
        "extras": ckpt.extras,
        "num_tensors": len(ckpt.tensors),
        "num_params": num_params,
        "num_buffer_elements": unique_numel(buffers),
        "param_kinds_inferred": not ckpt.frozen_recorded and ckpt.layout != "module",
        "bytes_by_dtype": dict(sorted(by_dtype.items())),
        "tensor_bytes": sum(by_dtype.values()),
        "devices": dict(devices),
        "prefix": {
            "prefix": prefix.prefix or None,
            "counts": prefix.counts,
            "partial": prefix.partial,
            "lightning": prefix.lightning,
            "suggest": suggestion,
        },
        "shared": shared_groups(ckpt),
        "views": view_groups(ckpt),
        "trainable": {
            "recorded": ckpt.frozen_recorded,
            "trainable_params": trainable,
            "frozen_params": num_params - trainable,
            "frozen_keys": frozen,
            "bn_eval": ckpt.bn_eval,
        },
        "verdict": ckpt.verdict,
        "refused_globals": [
            {"name": name, "dangerous": verdict == "dangerous", "verdict": verdict}
            for verdict, names in (("dangerous", ckpt.dangerous), ("needs code", ckpt.needs_code))
            for name in names
        ],
        "modules": ckpt.modules,
        "metadata": ckpt.metadata,
        "top_level": top_level_shares(
            ckpt, prefix.prefix or ("model." if prefix.lightning else "")
        ),
        "filter": pattern,
        "tensors": [tensor_json(e) for e in entries],
    }
