"""Key surgery commands: strip-module, add-module, rename, extract."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ckpt_tool.checkpoint import load
from ckpt_tool.cli.common import (
    DryRunOpt,
    ForceOpt,
    InPlaceOpt,
    InputArg,
    JsonOpt,
    KeepDeviceOpt,
    NoVerifyOpt,
    OutputOpt,
    WeightsOpt,
    boundary,
)
from ckpt_tool.cli.write import finish
from ckpt_tool.edit import apply_plan, rebuild, refuse_dangerous, refuse_rewrite, weight_items
from ckpt_tool.errors import SurgeryError
from ckpt_tool.surgery.rename import RenamePlan, add_plan, regex_plan, strip_plan

PrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--prefix", "-p", metavar="P", help="Use this prefix instead (e.g. Lightning's 'model.')."
    ),
]


def _plan_report(plan: RenamePlan) -> dict[str, Any]:
    return {
        "total_keys": len(plan.pairs),
        "changed": len(plan.changed),
        "unchanged": len(plan.pairs) - len(plan.changed),
        "groups": plan.groups(),
        "changes": [{"from": a, "to": b} for a, b in plan.changed],
        "unmatched_maps": plan.unmatched,
        "notes": plan.notes,
    }


@boundary
def strip_module(
    path: InputArg,
    prefix: PrefixOpt = None,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Strip where present when only some keys carry the prefix."),
    ] = False,
    output: OutputOpt = None,
    force: ForceOpt = False,
    in_place: InPlaceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove DataParallel/DDP `module.` (and torch.compile `_orig_mod.`) from every key.

    Example: ckpt strip-module model.pth          (writes model.stripped.pth)
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    plan = strip_plan([k for k, _ in weight_items(ckpt)], prefix, partial, ckpt.framework)
    finish(
        "strip-module",
        ckpt,
        apply_plan(ckpt, plan),
        _plan_report(plan),
        output=output,
        tag="stripped",
        force=force,
        in_place=in_place,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )


@boundary
def add_module(
    path: InputArg,
    prefix: PrefixOpt = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    in_place: InPlaceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add `module.` to every key, to load into a DataParallel/DDP-wrapped model.

    Example: ckpt add-module model.pth -o model_dp.pth
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    plan = add_plan([k for k, _ in weight_items(ckpt)], prefix or "module.")
    finish(
        "add-module",
        ckpt,
        apply_plan(ckpt, plan, add_root=True),
        _plan_report(plan),
        output=output,
        tag="module",
        force=force,
        in_place=in_place,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )


@boundary
def rename(
    path: InputArg,
    maps: Annotated[
        list[str],
        typer.Option(
            "--map",
            "-m",
            metavar="'REGEX=REPLACEMENT'",
            help="Rename keys by regex (re.sub, \\1 groups); repeatable, applied in order.",
        ),
    ],
    output: OutputOpt = None,
    force: ForceOpt = False,
    in_place: InPlaceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rename keys with regular expressions, applied in order.

    Example: ckpt rename model.pth --map '^backbone\\.=' --map 'fc\\.=head.'
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    plan = regex_plan([k for k, _ in weight_items(ckpt)], maps)
    finish(
        "rename",
        ckpt,
        apply_plan(ckpt, plan),
        _plan_report(plan),
        output=output,
        tag="renamed",
        force=force,
        in_place=in_place,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )


@boundary
def extract(
    path: InputArg,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep",
            metavar="GLOB",
            help="Only the weights whose keys match (repeatable), e.g. 'backbone.*'.",
        ),
    ] = None,
    strip_prefix: Annotated[
        str | None,
        typer.Option(
            "--strip-prefix",
            metavar="PREFIX",
            help="Remove PREFIX from every kept key (each must start with it), e.g. backbone.",
        ),
    ] = None,
    output: OutputOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write only the weights as a bare state_dict (drop optimizer, epoch, ...).

    Works on training checkpoints (Lightning, timm, mmengine...) and on whole pickled models
    whose class code you do not have. Example: ckpt extract last.ckpt -o weights.safetensors
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    items = weight_items(ckpt)
    left_out: list[str] = []
    if keep:
        items, left_out = select_items(items, keep)
    meta_fn = None
    strip_notes: list[str] = []
    if strip_prefix is not None:
        plan = strip_plan(
            [k for k, _ in items],
            strip_prefix,
            partial=False,
            partial_hint=f"keep only those with --keep '{strip_prefix}*'",
        )
        strip_notes = plan.notes
        mapping = dict(plan.pairs)
        items = [(mapping.get(k, k), v) for k, v in items]
        meta_fn = plan.meta_fn
    out = rebuild(ckpt, items, meta_fn, weights_only=True)
    out.notes += strip_notes
    out.allow_drops = True  # extract keeps the tensors and lists what it drops
    if not out.weights:
        from ckpt_tool.errors import WeightsNotFound

        raise WeightsNotFound(f"{ckpt.path}: no tensors to extract")
    report = {
        "total_keys": len(out.weights),
        "tensors": len(out.weights),
        "dropped": [str(k) for k in ckpt.extras] if ckpt.layout == "training" else [],
        "left_out": left_out,
        "strip_prefix": strip_prefix,
        "layout": ckpt.layout,
    }
    if left_out:
        out.notes.append(f"--keep left out {len(left_out)} keys (e.g. {', '.join(left_out[:3])})")
    finish(
        "extract",
        ckpt,
        out,
        report,
        output=output,
        tag="weights",
        force=force,
        in_place=False,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )


def select_items(
    items: list[tuple[str, Any]], globs: list[str]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """Items whose key matches one of the globs, and the keys left out; every glob must
    match something."""
    import fnmatch

    used = dict.fromkeys(globs, False)
    kept: list[tuple[str, Any]] = []
    left: list[str] = []
    for key, value in items:
        hit = next((g for g in globs if fnmatch.fnmatchcase(key, g)), None)
        if hit is None:
            left.append(key)
        else:
            used[hit] = True
            kept.append((key, value))
    unused = [g for g, u in used.items() if not u]
    if unused:
        raise SurgeryError(
            f"--keep {unused[0]!r} matches no key (keys look like "
            f"{', '.join(repr(k) for k, _ in items[:3])})"
        )
    return kept, left


@boundary
def drop(
    path: InputArg,
    patterns: Annotated[
        list[str],
        typer.Argument(
            metavar="PATTERN...",
            help="Weight keys (globs such as 'aux_head.*') or entries of a training checkpoint "
            "(optimizer, lr_scheduler, callbacks, ...) to remove.",
            show_default=False,
        ),
    ],
    output: OutputOpt = None,
    force: ForceOpt = False,
    in_place: InPlaceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove weights by pattern, or training-checkpoint entries by name; keep the rest.

    Reports what went and the bytes saved. Example: ckpt drop last.ckpt optimizer_states
    lr_schedulers callbacks -o slim.ckpt
    """
    import fnmatch

    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    entries = [str(k) for k in ckpt.root] if ckpt.layout == "training" else []
    items = weight_items(ckpt)
    gone_entries: list[str] = []
    gone_keys: list[str] = []
    for pattern in patterns:
        entries_hit = [
            e for e in entries if e != ckpt.weights_key and fnmatch.fnmatchcase(e, pattern)
        ]
        keys_hit = [k for k, _ in items if fnmatch.fnmatchcase(k, pattern)]
        if not entries_hit and not keys_hit:
            shown = ", ".join(repr(e) for e in entries[:6]) or ", ".join(
                repr(k) for k, _ in items[:3]
            )
            raise SurgeryError(f"{ckpt.path}: {pattern!r} matches nothing (the file holds {shown})")
        gone_entries += [e for e in entries_hit if e not in gone_entries]
        gone_keys += [k for k in keys_hit if k not in gone_keys]
    kept = [(k, v) for k, v in items if k not in set(gone_keys)]
    if not kept:
        raise SurgeryError(f"{ckpt.path}: the patterns would remove every weight; use extract")
    out = rebuild(ckpt, kept)
    root_entries = {str(k): v for k, v in ckpt.root.items()} if isinstance(ckpt.root, dict) else {}
    for entry in gone_entries:
        for k in [k for k in out.root if str(k) == entry]:
            del out.root[k]
    saved = _tensor_bytes([root_entries[e] for e in gone_entries]) + _tensor_bytes(
        [v for k, v in items if k in set(gone_keys)]
    )
    report = {
        "dropped_entries": gone_entries,
        "dropped_keys": gone_keys,
        "bytes_saved": saved,
        "tensors": len(out.weights),
    }
    out.notes.insert(
        0,
        f"dropped {len(gone_entries)} entries ({', '.join(gone_entries) or '-'}) and "
        f"{len(gone_keys)} weight keys; about {saved:,} bytes of tensors less",
    )
    finish(
        "drop",
        ckpt,
        out,
        report,
        output=output,
        tag="dropped",
        force=force,
        in_place=in_place,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )


def _tensor_bytes(values: list[Any]) -> int:
    """Bytes of the distinct storages the values hold."""
    from ckpt_tool.formats.safe_pickle import TensorRecord, walk

    seen: set[int] = set()
    total = 0
    for obj in walk(values):
        if (
            isinstance(obj, TensorRecord)
            and obj.storage is not None
            and id(obj.storage) not in seen
        ):
            seen.add(id(obj.storage))
            total += obj.storage.nbytes
    return total
