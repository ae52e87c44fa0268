"""Applying key surgery to a checkpoint's container, and saving the result with the writer.

The surgery functions decide names; this module puts the renamed weights back where they came
from (bare state_dict, training dict, whole pickled model) so everything else survives.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.checkpoint import (
    BN_EVAL_META_KEY,
    FROZEN_META_KEY,
    STATE_KEYS,
    Checkpoint,
    as_record,
    is_module_record,
    load,
    tensors_in,
)
from ckpt_tool.errors import OutputRefused, SurgeryError, UnsafeCheckpoint
from ckpt_tool.formats import writer
from ckpt_tool.formats.safe_pickle import TensorRecord
from ckpt_tool.surgery.rename import RenamePlan, rename_metadata


def refuse_rewrite(ckpt: Checkpoint) -> None:
    """Container-preserving writes need a container: TorchScript and torch.export archives
    are refused (their code or graph would be lost), pointing to `ckpt extract`."""
    if ckpt.format in ("torchscript", "torch-export"):
        kind = "a TorchScript archive" if ckpt.format == "torchscript" else "a torch.export archive"
        raise SurgeryError(
            f"{ckpt.path}: {kind} cannot be rewritten without its code; write its weights as a "
            f"state_dict first (`ckpt extract {ckpt.path} -o weights.pth`), then edit those"
        )


def refuse_dangerous(ckpt: Checkpoint) -> None:
    """Write commands do not touch files that reach dangerous callables."""
    if ckpt.dangerous:
        names = "; ".join(ckpt.dangerous[:3])
        raise UnsafeCheckpoint(
            f"{ckpt.path}: dangerous content ({names}); refused. Nothing was run. "
            f"See `ckpt scan {ckpt.path}` for details"
        )


def weights_container(ckpt: Checkpoint) -> dict[Any, Any] | None:
    """The dict the weights live in (None for whole models, safetensors and DCP)."""
    if ckpt.layout == "state_dict" and isinstance(ckpt.root, dict):
        return ckpt.root
    if ckpt.layout == "training" and isinstance(ckpt.root, dict):
        value = ckpt.root.get(ckpt.weights_key)
        return value if isinstance(value, dict) else None
    return None


def weight_items(ckpt: Checkpoint) -> list[tuple[str, Any]]:
    """Every entry of the weights mapping, tensors and other values, in file order."""
    container = weights_container(ckpt)
    if container is None:
        return [(k, e.record) for k, e in ckpt.tensors.items()]
    return [(str(k), v) for k, v in container.items()]


@dataclass
class Output:
    """What a write command will write: the object for .pth, the weights, and notes."""

    root: Any
    weights: dict[str, TensorRecord]
    weights_key: str | None
    notes: list[str] = field(default_factory=list)
    whole_container: bool = True  # False when only the weights are kept (extract)
    allow_drops: bool = False  # non-tensor entries may be left out (extract, --drop-extras)
    bn_eval: list[str] = field(default_factory=list)  # BatchNorm paths kept in eval mode
    # notes true of one output format only ("pth", "safetensors"), added for the one written
    format_notes: dict[str, list[str]] = field(default_factory=dict)

    def notes_for(self, fmt: str, path: Path) -> list[str]:
        """The notes for an output written as fmt at path ({path} in a note names it)."""
        own = [n.replace("{path}", repr(str(path))) for n in self.format_notes.get(fmt, [])]
        return [*self.notes, *own]


def rebuild(
    ckpt: Checkpoint,
    items: list[tuple[str, Any]],
    metadata_fn: Any = None,
    add_root: bool = False,
    weights_only: bool = False,
) -> Output:
    """Put new weight items back into the checkpoint's container, keeping everything else."""
    if not weights_only:
        refuse_rewrite(ckpt)
    if ckpt.layout == "training" and not isinstance(ckpt.root, dict) and not weights_only:
        raise SurgeryError(
            f"{ckpt.path}: the other entries of this {ckpt.format} checkpoint "
            f"({', '.join(list(ckpt.extras)[:3])}) cannot be carried into a single file; "
            f"`ckpt extract {ckpt.path}` or `ckpt convert` write the weights under "
            f"{ckpt.weights_key!r}"
        )
    old = weights_container(ckpt)
    new: dict[Any, Any] = type(old)() if isinstance(old, dict) else collections.OrderedDict()
    # numpy arrays (plain pickles) become tensor records once, so root and weights agree
    items = [(k, as_record(v) or v) for k, v in items]
    for k, v in items:
        new[k] = v
    old_meta = getattr(old, "_metadata", None)
    if old_meta is not None and isinstance(new, collections.OrderedDict):
        new._metadata = rename_metadata(old_meta, metadata_fn, add_root)  # type: ignore[attr-defined]
    weights = tensors_in({k: v for k, v in items if str(k) not in STATE_KEYS})
    notes: list[str] = []
    if ckpt.layout == "training" and not weights_only:
        root = type(ckpt.root)()
        for k, v in ckpt.root.items():
            root[k] = new if k == ckpt.weights_key else v
        key = ckpt.weights_key
        if is_module_record(ckpt.root.get(key)):
            notes.append(f"the whole pickled model under {key!r} was written as a state_dict")
    else:
        root = new
        key = None
        if ckpt.format == "torchscript":
            notes.append(
                "TorchScript module's weights written as a state_dict, named as "
                "torch.jit.load(...).state_dict() names them"
            )
        elif ckpt.layout == "module":
            notes.append(
                "whole pickled model written as a state_dict: its class code is not needed "
                "to load it"
            )
        elif ckpt.layout == "training":
            dropped = (
                [k for k in ckpt.root if k != ckpt.weights_key]
                if isinstance(ckpt.root, dict)
                else list(ckpt.extras)
            )
            notes.append(
                f"kept only the weights under {ckpt.weights_key!r}; dropped "
                f"{', '.join(map(str, dropped))}"
            )
    out = Output(root, weights, key, notes, whole_container=not weights_only)
    if ckpt.layout == "module" or (weights_only and ckpt.layout == "training"):
        out.format_notes = {
            "pth": ["load it with model.load_state_dict(torch.load({path}, weights_only=True))"],
            "safetensors": [
                "load it with model.load_state_dict(safetensors.torch.load_file({path}))"
            ],
        }
    if ckpt.bn_eval:  # follows the keys through renames, and into .pth from safetensors
        rename = metadata_fn or (lambda p: p)
        mark_bn_eval(out, [rename(p) for p in ckpt.bn_eval])
    return out


def mark_bn_eval(out: Output, paths: list[str]) -> None:
    """Record BatchNorm eval marks in the weights' `_metadata` (load_state_dict ignores them)."""
    from ckpt_tool.surgery.freeze import with_bn_eval

    container = out.root[out.weights_key] if out.weights_key is not None else out.root
    if not isinstance(container, collections.OrderedDict):
        container = collections.OrderedDict(container)
        if out.weights_key is not None:
            out.root[out.weights_key] = container
        else:
            out.root = container
        out.format_notes.setdefault("pth", []).append(
            "weights written as an OrderedDict, to carry the BatchNorm eval marks"
        )
    container._metadata = with_bn_eval(getattr(container, "_metadata", None), paths)  # type: ignore[attr-defined]
    out.bn_eval = list(paths)


def apply_plan(ckpt: Checkpoint, plan: RenamePlan, add_root: bool = False) -> Output:
    """The checkpoint with its weight keys renamed by plan."""
    items = weight_items(ckpt)
    mapping = dict(plan.pairs)
    renamed = [(mapping.get(k, k), v) for k, v in items]
    return rebuild(ckpt, renamed, plan.meta_fn, add_root)


def training_state(out: Output) -> list[str]:
    """Entries of the output's container beside its weights (what safetensors cannot hold):
    judged on what will be written, so entries a command dropped do not count."""
    if not out.whole_container or out.weights_key is None or not isinstance(out.root, dict):
        return []
    return [str(k) for k in out.root if k != out.weights_key]


def non_tensor_entries(ckpt: Checkpoint) -> list[str]:
    """Entries of the weights mapping that hold no tensor (a dtype, a version number)."""
    return [str(k) for k, v in weight_items(ckpt) if as_record(v) is None and not tensors_in(v)]


def refuse_drops(entries: list[str], target: Path, kind: str) -> None:
    """Exit 0 means nothing lost: an output that cannot hold these entries is refused."""
    if entries:
        raise OutputRefused(
            f"{target}: {kind} holds only tensors, so {len(entries)} non-tensor entries of the "
            f"weights would be lost ({', '.join(entries[:4])}{' ...' if len(entries) > 4 else ''})"
            "; write a .pth, or pass --drop-extras to write only the tensors"
        )


def safetensors_metadata(
    ckpt: Checkpoint, weights: dict[str, TensorRecord], bn_eval: list[str] | None = None
) -> dict[str, str]:
    """__metadata__ for safetensors output: input metadata, provenance and the freeze state."""
    meta = {
        k: v
        for k, v in ckpt.metadata.items()
        if not k.startswith(("index.", "ckpt.")) and k != "config"
    }
    meta["format"] = "pt"
    meta["ckpt.source"] = f"{ckpt.path.name} ({ckpt.format}" + (
        f", weights {ckpt.weights_key})" if ckpt.weights_key else ")"
    )
    if any(r.is_parameter for r in weights.values()):
        frozen = [k for k, r in weights.items() if r.is_parameter and not r.requires_grad]
        meta[FROZEN_META_KEY] = json.dumps(frozen)
    bn = ckpt.bn_eval if bn_eval is None else bn_eval
    if bn:
        meta[BN_EVAL_META_KEY] = json.dumps(bn)
    return meta


def save(
    ckpt: Checkpoint,
    out: Output,
    target: Path,
    verify: bool = True,
    sources: writer.Sources | None = None,
    keep_device: bool = False,
) -> writer.WriteResult:
    """Write out to target in the format its extension names, atomically and verified.
    .pth outputs hold CPU tensors unless `keep_device` (a cuda:0 file then loads anywhere)."""
    fmt = writer.output_format(target)
    sources = sources or writer.Sources(ckpt)
    if fmt == "safetensors":
        lost = training_state(out)
        if lost:
            raise OutputRefused(
                f"{target}: safetensors holds only tensors, so the training state "
                f"({', '.join(lost[:4])}) would be lost; write a .pth, or run "
                f"`ckpt extract {ckpt.path}` first"
            )
        others = non_tensor_entries(ckpt)
        if not out.allow_drops:
            refuse_drops(others, target, "safetensors")
        records = writer.storage_backed(out.weights, sources)
        result = writer.write_safetensors(
            records,
            target,
            sources,
            safetensors_metadata(ckpt, out.weights, out.bn_eval),
            verify=verify,
        )
        if others:
            result.notes.append(
                f"safetensors holds only tensors: non-tensor entries not written: "
                f"{', '.join(others[:5])}" + (" ..." if len(others) > 5 else "")
            )
    else:
        backed = writer.storage_backed(out.weights, sources)
        root = _replace_records(out.root, out.weights, backed)
        result = writer.write_pth(
            root,
            target,
            sources,
            verify=verify,
            expect=backed,
            weights_key=out.weights_key,
            keep_device=keep_device,
            read_back=lambda path, weights: load(path, weights=weights),
        )
    result.notes = out.notes_for(fmt, target) + result.notes
    return result


def _replace_records(root: Any, old: dict[str, TensorRecord], new: dict[str, TensorRecord]) -> Any:
    """Swap records that got in-memory storages (numpy, DCP) into the weights container."""
    swaps = {id(old[k]): new[k] for k in old if old[k] is not new[k]}
    if not swaps:
        return root
    container = root
    if isinstance(root, dict) and not any(id(v) in swaps for v in root.values()):
        container = next(
            (
                v
                for v in root.values()
                if isinstance(v, dict) and any(id(x) in swaps for x in v.values())
            ),
            root,
        )
    for k, v in list(container.items()):
        if id(v) in swaps:
            container[k] = swaps[id(v)]
    return root
