"""`ckpt transplant`: pretrained weights into a new architecture, with an honest report."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from ckpt_tool import render
from ckpt_tool.archs import construct, parse_arch_args
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
from ckpt_tool.edit import refuse_dangerous
from ckpt_tool.errors import CheckFailed, WeightsNotFound
from ckpt_tool.formats.writer import cache_note, resolve_output
from ckpt_tool.surgery import transplant as tp

from .archs_cmd import ArchArgOpt, InChansOpt, IntoOpt, NumClassesOpt

WARN_UNDER_PCT = 50.0
DEFAULT_MIN_COVERAGE = 1.0  # copying nothing is a failure; a head swap copies far more


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
    output: OutputOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy pretrained weights into a new architecture; report every key's fate.

    Writes a state_dict that loads into the target with load_state_dict(strict=True).

    Example: ckpt transplant resnet18.pth --into resnet34 --num-classes 4

    Example: ckpt transplant vit224.pth --into timm/vit_small_patch16_224 --arch-arg img_size=384
    """
    ckpt = load(path, weights=weights)
    refuse_dangerous(ckpt)
    if not ckpt.tensors:
        raise WeightsNotFound(
            f"{ckpt.path}: no tensors to transplant (layout {ckpt.layout}); pass a checkpoint "
            "that holds weights, or choose them with --weights"
        )
    built = construct(into, parse_arch_args(arch_arg or []), num_classes, in_chans, seed)
    ext = ".safetensors" if "safetensors" in ckpt.format else ".pth"
    target = resolve_output(
        ckpt.path, output, tag=built.spec.tag, force=force, in_place=False, ext=ext
    )
    plan, out = tp.transplant(
        ckpt,
        built,
        maps=maps or [],
        match=match.value,
        init=init.value,
        seed=seed,
        keep_dtype=keep_dtype,
        resize_patch=resize_patch,
    )
    ckpt.bn_eval = []  # the source's BatchNorm freeze state names its modules, not the target's
    report: dict[str, Any] = {
        "arch": {
            "name": into,
            "label": built.spec.label,
            "source": built.spec.source,
            "kwargs": built.kwargs,
            "input_conv_rebuilt": built.input_conv,
        },
        "match": match.value,
        "maps": maps or [],
        "init": init.value,
        "seed": seed,
        "keep_dtype": keep_dtype,
        **tp.report(plan),
        "notes": plan.notes + (cache_note(ckpt.path) if output is None else []),
    }
    pct = report["totals"]["coverage_pct"]
    ok = pct >= min_coverage
    report["coverage"] = {"pct": pct, "min": min_coverage, "ok": ok}
    if not ok:
        if json_out:
            render.print_json(
                {"command": "transplant", "input": str(ckpt.path), "output": str(target),
                 "dry_run": dry_run, "written": False, "weights_key": ckpt.weights_key,
                 **report}
            )  # fmt: skip
        else:
            render.transplant_report(report, str(ckpt.path))
        raise CheckFailed(
            f"{ckpt.path}: only {pct:.1f}% of {built.spec.label}'s parameters were copied, under "
            f"--min-coverage {min_coverage:g}; nothing written (check the architecture, "
            "--map or --match suffix)"
        )
    if pct < WARN_UNDER_PCT:
        render.warn(
            f"only {pct:.1f}% of {built.spec.label}'s parameters were copied from {ckpt.path}; "
            "the rest keeps its initialisation (check the architecture, --map, --match suffix; "
            f"--min-coverage {WARN_UNDER_PCT:g} makes this an error)"
        )
    if not json_out:
        render.transplant_report(report, str(ckpt.path))
    finish(
        "transplant",
        ckpt,
        out,
        report,
        output=target,
        tag=built.spec.tag,
        force=force,
        in_place=False,
        dry_run=dry_run,
        verify=not no_verify,
        keep_device=keep_device,
        json_out=json_out,
    )
