"""`ckpt diff` and `ckpt average`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.cli.common import (
    InputArg,
    JsonOpt,
    WeightsOpt,
    boundary,
    show_report,
    write_command,
)
from ckpt_tool.output.options import WriteArgs


@boundary
def diff(
    a: InputArg,
    b: Annotated[
        Path,
        typer.Argument(help="The checkpoint to compare with (any format).", show_default=False),
    ],
    atol: Annotated[
        float, typer.Option("--atol", help="Absolute tolerance per element (default 0).")
    ] = 0.0,
    rtol: Annotated[
        float, typer.Option("--rtol", help="Relative tolerance per element, times |a|.")
    ] = 0.0,
    depth: Annotated[
        int, typer.Option("--depth", help="Module path depth of the per-module view.")
    ] = 1,
    weights: WeightsOpt = None,
    weights_b: Annotated[
        str | None,
        typer.Option("--weights-b", metavar="KEY", help="Weight set of B (default: --weights)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare the weights of two checkpoints: keys, shapes, dtypes and values.

    Wrapper prefixes (module., _orig_mod.) carried by every key are removed first. With the
    default --atol 0 --rtol 0 any byte change counts. Exit 0: identical within tolerance;
    3: differences found. Example: ckpt diff pretrained.pth finetuned.safetensors --depth 2
    """
    from ckpt_tool import api

    report = api.diff(a, b, atol=atol, rtol=rtol, depth=depth, weights=weights, weights_b=weights_b)
    if json_out:
        render.print_json(report.to_json())
    else:
        render.diff_report(report.data)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@boundary
@write_command(in_place=False)
def average(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more checkpoints of one architecture (e.g. the last N epochs).",
            show_default=False,
        ),
    ],
    coef: Annotated[
        str | None,
        typer.Option(
            "--coef",
            metavar="W1,W2,...",
            help="Weight per file, normalised by their sum (default: equal).",
        ),
    ] = None,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Average the weights of several checkpoints (float64 math, original dtypes kept).

    Integer buffers (num_batches_tracked) are taken from the last file. Writes a bare
    state_dict (default: FIRST.avg.pth). Example: ckpt average ep8.pth ep9.pth ep10.pth
    -o avg.pth --coef 1,1,2
    """
    from ckpt_tool import api

    show_report(api.average(paths, coef=coef, weights=weights, **write), json_out)
