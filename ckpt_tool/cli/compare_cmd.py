"""`ckpt diff` and `ckpt average`."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.checkpoint import load
from ckpt_tool.cli.common import (
    DryRunOpt,
    ForceOpt,
    InputArg,
    JsonOpt,
    KeepDeviceOpt,
    NoVerifyOpt,
    OutputOpt,
    WeightsOpt,
    boundary,
)
from ckpt_tool.cli.write import finish
from ckpt_tool.compare import average as plan_average
from ckpt_tool.compare import diff as compare
from ckpt_tool.compare import parse_coef
from ckpt_tool.edit import Output, refuse_dangerous
from ckpt_tool.errors import EXIT_CHECK_FAILED


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
    ca = load(a, weights=weights)
    cb = load(b, weights=weights_b if weights_b is not None else weights)
    refuse_dangerous(ca)
    refuse_dangerous(cb)
    result = compare(ca, cb, atol=atol, rtol=rtol, depth=depth)
    report = result.as_dict()
    if json_out:
        render.print_json(report)
    else:
        render.diff_report(report)
    if not result.identical:
        raise typer.Exit(EXIT_CHECK_FAILED)


@boundary
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
    output: OutputOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Average the weights of several checkpoints (float64 math, original dtypes kept).

    Integer buffers (num_batches_tracked) are taken from the last file. Writes a bare
    state_dict (default: FIRST.avg.pth). Example: ckpt average ep8.pth ep9.pth ep10.pth
    -o avg.pth --coef 1,1,2
    """
    ckpts = [load(p, weights=weights) for p in paths]
    for c in ckpts:
        refuse_dangerous(c)
    plan = plan_average(ckpts, parse_coef(coef, len(ckpts)))
    norm = ", ".join(f"{c / sum(plan.coef):.4g}" for c in plan.coef)
    notes = [
        f"averaged {len(plan.averaged)} floating tensor(s) over {len(ckpts)} files in float64 "
        f"(coefficients {norm}), written in their original dtypes",
        *plan.notes,
    ]
    if plan.from_last:
        notes.append(
            f"{len(plan.from_last)} non-floating tensor(s) not averaged, taken from the last "
            f"file ({ckpts[-1].path.name}): "
            + ", ".join(plan.from_last[:4])
            + (" ..." if len(plan.from_last) > 4 else "")
        )
    if any(c.layout == "training" for c in ckpts):
        notes.append("training state (optimizer, epoch ...) is not averaged; only weights written")
    root = OrderedDict(plan.root)
    out = Output(root, dict(plan.root), None, notes, whole_container=False)
    try:
        finish(
            "average",
            ckpts[0],
            out,
            plan.report(),
            output=output,
            tag="avg",
            force=force,
            in_place=False,
            dry_run=dry_run,
            verify=not no_verify,
            keep_device=keep_device,
            json_out=json_out,
            sources=plan.sources,
        )
    finally:
        plan.close()
