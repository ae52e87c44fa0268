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
    out = rebuild(ckpt, weight_items(ckpt), weights_only=True)
    out.allow_drops = True  # extract keeps the tensors and lists what it drops
    if not out.weights:
        from ckpt_tool.errors import WeightsNotFound

        raise WeightsNotFound(f"{ckpt.path}: no tensors to extract")
    report = {
        "total_keys": len(out.weights),
        "tensors": len(out.weights),
        "dropped": [str(k) for k in ckpt.extras] if ckpt.layout == "training" else [],
        "layout": ckpt.layout,
    }
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
