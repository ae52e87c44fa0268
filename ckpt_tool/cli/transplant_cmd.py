"""`ckpt transplant`: pretrained weights into a new architecture, with an honest report."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from ckpt_tool.cli.common import InputArg, boundary, runs_models, show_report, write_command
from ckpt_tool.output.options import DEFAULT_MIN_COVERAGE, WriteArgs

from .archs_cmd import ArchArgOpt, InChansOpt, IntoOpt, NumClassesOpt


class Match(str, Enum):
    exact = "exact"
    suffix = "suffix"


class Init(str, Enum):
    default = "default"
    kaiming = "kaiming"
    xavier = "xavier"
    normal = "normal"
    zeros = "zeros"


@boundary
@runs_models
@write_command(in_place=False)
def transplant(
    path: InputArg,
    into: IntoOpt,
    arch_arg: ArchArgOpt = None,
    num_classes: NumClassesOpt = None,
    in_chans: InChansOpt = None,
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            "-m",
            metavar="'REGEX=REPLACEMENT'",
            help="Rename source keys before matching (re.sub, \\1 groups); repeatable.",
            show_default=False,
        ),
    ] = None,
    match: Annotated[
        Match,
        typer.Option(
            "--match",
            help="exact: same key names. suffix: also pair keys by their longest common dotted "
            "suffix (backbone.layer1.x ↔ layer1.x); ambiguity is an error.",
        ),
    ] = Match.exact,
    init: Annotated[
        Init,
        typer.Option(
            "--init",
            help="Weights not copied: keep the architecture's own initialisation (default), or "
            "kaiming/xavier/normal(0, 0.01)/zeros for 2+-dim weights (biases 0, norm weights 1).",
        ),
    ] = Init.default,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed set before building the target.")
    ] = 0,
    keep_dtype: Annotated[
        bool,
        typer.Option(
            "--keep-dtype", help="Keep the source's dtypes for copied tensors (default: target's)."
        ),
    ] = False,
    resize_patch: Annotated[
        bool,
        typer.Option(
            "--resize-patch",
            help="Resample the patch-embedding kernel when the patch size differs (ViTs; "
            "timm's resample_patch_embed). Position embeddings are resampled to the target's "
            "grid whenever only the grid differs.",
        ),
    ] = False,
    min_coverage: Annotated[
        float,
        typer.Option(
            "--min-coverage",
            min=0.0,
            max=100.0,
            metavar="PCT",
            help="Fail (exit 3, nothing written) if under PCT % of the target's parameters "
            "were copied (default 1: copying nothing always fails, a new head passes; a "
            "warning under 50 %; 0 turns the check off).",
        ),
    ] = DEFAULT_MIN_COVERAGE,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Copy pretrained weights into a new architecture; report every key's fate.

    Writes a state_dict that loads into the target with load_state_dict(strict=True).

    Example: ckpt transplant resnet18.pth --into resnet34 --num-classes 4

    Example: ckpt transplant vit224.pth --into timm/vit_small_patch16_224 --arch-arg img_size=384
    """
    from ckpt_tool import api

    report = api.transplant(
        path, into, arch_args=arch_arg or [], num_classes=num_classes, in_chans=in_chans,
        maps=maps or [], match=match.value, init=init.value, seed=seed, keep_dtype=keep_dtype,
        resize_patch=resize_patch, min_coverage=min_coverage, weights=weights, **write,
    )  # fmt: skip
    show_report(report, json_out)
