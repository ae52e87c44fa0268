"""`ckpt freeze` (choose what trains) and `ckpt count` (know how much will)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.cli.common import (
    JsonOpt,
    WeightsOpt,
    boundary,
    exit_if_dangerous,
    show_report,
    write_command,
)
from ckpt_tool.errors import UsageError
from ckpt_tool.output.options import WriteArgs

from .archs_cmd import ArchArgOpt, ArchOpt, InChansOpt, NumClassesOpt


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
@write_command()
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
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Freeze parameters by name: requires_grad=False, recorded in the output file.

    Example: ckpt freeze 'layer1.*' model.pth   (writes model.frozen.pth)

    Train only the head: ckpt freeze --only 'fc.*' model.pth
    """
    from ckpt_tool import api

    if unfreeze and only:
        raise UsageError("--only already makes its matches trainable; drop --unfreeze")
    patterns, path = split_args(args, only or [])
    mode = "only" if only else "unfreeze" if unfreeze else "freeze"
    report = api.freeze(
        path, patterns, mode=mode, regex=regex, bn_eval=bn_eval, weights=weights, **write
    )
    show_report(report, json_out)


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
    arch: ArchOpt = None,
    arch_args: ArchArgOpt = None,
    num_classes: NumClassesOpt = None,
    in_chans: InChansOpt = None,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Count parameters: trainable and frozen (as recorded), buffers, bytes, per module.

    Example: ckpt count model.pth --depth 2

    Before you have weights: ckpt count --arch resnet34 --num-classes 4
    """
    from ckpt_tool import api

    report = api.count(
        path, arch=arch, arch_args=arch_args or [], num_classes=num_classes,
        in_chans=in_chans, depth=depth, weights=weights,
    )  # fmt: skip
    if json_out:
        render.print_json(report.to_json())
    else:
        render.count_report(report.data)
    if path is not None:
        exit_if_dangerous(report.dangerous, path)
