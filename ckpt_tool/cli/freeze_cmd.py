"""`ckpt freeze` (choose what trains) and `ckpt count` (know how much will)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ckpt_tool import render
from ckpt_tool.apply import (
    count_checkpoint,
    count_model,
    freeze_checkpoint,
    freeze_report,
    parameter_state,
)
from ckpt_tool.checkpoint import FROZEN_META_KEY, load
from ckpt_tool.cli.common import (
    DryRunOpt,
    ForceOpt,
    InPlaceOpt,
    JsonOpt,
    KeepDeviceOpt,
    NoVerifyOpt,
    OutputOpt,
    WeightsOpt,
    boundary,
    exit_if_dangerous,
)
from ckpt_tool.cli.write import finish
from ckpt_tool.edit import refuse_dangerous, refuse_rewrite
from ckpt_tool.errors import UsageError
from ckpt_tool.surgery.freeze import batchnorm_layers, plan_freeze


def split_args(args: list[str], only: list[str]) -> tuple[list[str], Path]:
    """`PATTERN... CKPT`: the checkpoint is the last argument."""
    *patterns, last = args
    path = Path(last)
    if not path.exists() and patterns and Path(patterns[0]).exists():
        raise UsageError(
            f"{last!r} is not a file, but {patterns[0]!r} is: the checkpoint comes last "
            f"(ckpt freeze PATTERN... CKPT)"
        )
    if only and patterns:
        raise UsageError(
            "give PATTERNs to freeze or --only PATTERNs to keep training, not both "
            "(e.g. ckpt freeze --only 'fc.*' model.pth)"
        )
    if not only and not patterns:
        raise UsageError(
            f"no PATTERN before {last!r}; e.g. ckpt freeze 'layer1.*' {last}, "
            f"or ckpt freeze --only 'fc.*' {last}"
        )
    return patterns or only, path


@boundary
def freeze(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="PATTERN... CKPT",
            help="Parameter names to freeze as globs ('layer1.*'; --regex for regular "
            "expressions), then the checkpoint, last. A wrapper prefix (module., _orig_mod.) "
            "is ignored when matching.",
            show_default=False,
        ),
    ],
    unfreeze: Annotated[
        bool, typer.Option("--unfreeze", help="Make the matching parameters trainable instead.")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="PATTERN",
            help="Freeze every parameter except these, which become trainable (repeatable).",
        ),
    ] = None,
    regex: Annotated[
        bool,
        typer.Option(
            "--regex", help="Patterns are regular expressions matching the whole name (fullmatch)."
        ),
    ] = False,
    bn_eval: Annotated[
        bool,
        typer.Option(
            "--bn-eval",
            help="Also record that the BatchNorm layers frozen here stay in eval mode, so their "
            "running statistics stop updating (ckpt_tool.apply_freeze honours it).",
        ),
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
    """Freeze parameters by name: requires_grad=False, recorded in the output file.

    Example: ckpt freeze 'layer1.*' model.pth   (writes model.frozen.pth)

    Train only the head: ckpt freeze --only 'fc.*' model.pth
    """
    if unfreeze and only:
        raise UsageError("--only already makes its matches trainable; drop --unfreeze")
    patterns, path = split_args(args, only or [])
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    params, others = parameter_state(ckpt)
    plan = plan_freeze(
        params,
        others,
        patterns,
        where=str(ckpt.path),
        mode="only" if only else "unfreeze" if unfreeze else "freeze",
        regex=regex,
        bn_layers=batchnorm_layers(ckpt.tensors, ckpt.modules),
        bn_eval=ckpt.bn_eval,
        keep_bn_eval=bn_eval,
    )
    out = freeze_checkpoint(ckpt, plan)
    report = freeze_report(ckpt, plan)
    out.format_notes.setdefault("pth", []).append(
        "requires_grad is stored on each parameter (written as nn.Parameter); "
        "ckpt_tool.apply_freeze(model, {path}) applies it to a live model"
    )
    out.format_notes.setdefault("safetensors", []).append(
        f"safetensors tensors carry no requires_grad: the frozen names are stored in the "
        f"header's __metadata__[{FROZEN_META_KEY!r}]; ckpt_tool.apply_freeze(model, {{path}}) "
        "applies them"
    )
    ckpt.bn_eval = plan.bn_eval_after  # safetensors output writes the checkpoint's marks
    finish(
        "freeze",
        ckpt,
        out,
        report,
        output=output,
        tag="unfrozen" if unfreeze else "frozen",
        force=force,
        in_place=in_place,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )


@boundary
def count(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Checkpoint file or folder (optional with --arch).", show_default=False
        ),
    ] = None,
    depth: Annotated[
        int,
        typer.Option("--depth", "-d", min=1, help="Group by module N levels deep."),
    ] = 1,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            metavar="ARCH",
            help="Count a model built from the registry (resnet34, timm/..., convnet); with "
            "CKPT, after applying the file's freeze state to it.",
        ),
    ] = None,
    arch_args: Annotated[
        list[str] | None,
        typer.Option("--arch-arg", metavar="K=V", help="Constructor argument (repeatable)."),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", metavar="N", help="Classifier outputs.")
    ] = None,
    in_chans: Annotated[
        int | None, typer.Option("--in-chans", metavar="N", help="Input channels.")
    ] = None,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Count parameters: trainable and frozen (as recorded), buffers, bytes, per module.

    Example: ckpt count model.pth --depth 2

    Before you have weights: ckpt count --arch resnet34 --num-classes 4
    """
    if path is None and arch is None:
        raise UsageError("give a checkpoint, --arch ARCH, or both")
    if arch is None and (arch_args or num_classes is not None or in_chans is not None):
        raise UsageError("--arch-arg, --num-classes and --in-chans need --arch")
    ckpt = load(path, weights=weights) if path is not None else None
    report: dict[str, Any]
    if arch is not None:
        from ckpt_tool import archs

        built = archs.construct(arch, archs.parse_arch_args(arch_args or []), num_classes, in_chans)
        report = count_model(built.model, built.spec.label, ckpt, depth)
        report["notes"] = built.notes + report["notes"]
    else:
        assert ckpt is not None
        report = count_checkpoint(ckpt, depth)
    # counting reads only records (nothing runs), but a hostile file must not look clean
    report["dangerous"] = ckpt.dangerous if ckpt is not None else []
    if json_out:
        render.print_json(report)
    else:
        render.count_report(report)
    if ckpt is not None and path is not None:
        exit_if_dangerous(ckpt.dangerous, path)
