"""`ckpt archs`, and the architecture options shared by transplant, count and smoke-train."""

from __future__ import annotations

from typing import Annotated

import typer

from ckpt_tool import render

from .common import JsonOpt, boundary

IntoOpt = Annotated[
    str,
    typer.Option(
        "--into",
        "--arch",
        metavar="ARCH",
        help="Target architecture: seed model (convnet, seed_resnet34, mlp, sigmoid_net), "
        "torchvision/timm name (resnet34, timm/resnet34), pkg.module:factory or "
        "file.py:Class; see `ckpt archs`.",
        show_default=False,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        metavar="ARCH",
        help="Count a model built from the registry (resnet34, timm/..., convnet); with "
        "CKPT, after applying the file's freeze state to it.",
    ),
]
ArchArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-arg",
        metavar="NAME=VALUE",
        help="Constructor argument (repeatable); VALUE is a Python literal, else a string.",
        show_default=False,
    ),
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option("--num-classes", min=1, metavar="N", help="Number of output classes."),
]
InChansOpt = Annotated[
    int | None,
    typer.Option(
        "--in-chans",
        min=1,
        metavar="N",
        help="Input channels; the source's first convolution is adapted to it "
        "(summed for 1, repeated and rescaled otherwise).",
    ),
]


@boundary
def archs(
    filter: Annotated[
        str | None,
        typer.Option("--filter", "-f", metavar="GLOB", help="Only names matching a glob."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the architectures --into/--arch accepts here: seed models, torchvision, timm.

    Example: ckpt archs --filter 'resnet*'
    """
    from ckpt_tool import api

    report = api.archs(filter)
    if json_out:
        render.print_json(report.to_json())
    else:
        render.arch_list(report.data, filter)
