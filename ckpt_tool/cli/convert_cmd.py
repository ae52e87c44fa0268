"""`ckpt cast` and `ckpt convert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool.cli.common import (
    DryRunOpt,
    ForceOpt,
    InputArg,
    JsonOpt,
    KeepDeviceOpt,
    NoVerifyOpt,
    WeightsOpt,
    boundary,
    show_report,
    write_command,
)
from ckpt_tool.output.options import WriteArgs

KeepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--keep", metavar="GLOB", help="Keep matching tensors in their dtype (repeatable)."
    ),
]
KeepNormOpt = Annotated[
    bool,
    typer.Option(
        "--keep-norm",
        help="Hold normalisation layers (BatchNorm, LayerNorm, "
        "GroupNorm: weights and running stats) in float32.",
    ),
]
Fp8ScaleOpt = Annotated[
    bool,
    typer.Option(
        "--fp8-scale",
        help="With an fp8 --dtype: divide each tensor by a per-tensor scale (amax / the "
        "format's largest value) and store it as a float32 KEY_scale tensor after it.",
    ),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Values overflowing the target dtype are an error (exit 3) instead of a warning.",
    ),
]


@boundary
@write_command()
def cast(
    path: InputArg,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", "-t", help="fp16, bf16, fp32, fp64, or fp8_e4m3fn / fp8_e5m2 (saturating)."
        ),
    ],
    keep: KeepOpt = None,
    keep_norm: KeepNormOpt = False,
    strict: StrictOpt = False,
    fp8_scale: Fp8ScaleOpt = False,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Cast floating-point weights (integers and bools keep their dtype); the rest survives.

    Example: ckpt cast model.pth --dtype fp16 --keep-norm      (writes model.fp16.pth)
    """
    from ckpt_tool import api

    report = api.cast(
        path, dtype, keep=keep or [], keep_norm=keep_norm, strict=strict, fp8_scale=fp8_scale,
        weights=weights, **write,
    )  # fmt: skip
    show_report(report, json_out)


@boundary
def convert(
    path: InputArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="OUT",
            help="Output: .pth/.pt/.bin/.ckpt, .safetensors, a folder with --to-dcp, or (from a "
            "model folder) a new model folder: weights, config.json and the other files.",
        ),
    ],
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype", "-t", help="Cast on the way: fp16, bf16, fp32, fp8_e4m3fn, fp8_e5m2."
        ),
    ] = None,
    keep: KeepOpt = None,
    keep_norm: KeepNormOpt = False,
    strict: StrictOpt = False,
    fp8_scale: Fp8ScaleOpt = False,
    max_shard_size: Annotated[
        str | None,
        typer.Option(
            "--max-shard-size",
            metavar="SIZE",
            help="Write sharded safetensors (Hugging Face names + index.json), e.g. 5GB.",
        ),
    ] = None,
    to_dcp: Annotated[
        bool, typer.Option("--to-dcp", help="Write a torch.distributed.checkpoint folder.")
    ] = False,
    dequantize: Annotated[
        bool,
        typer.Option(
            "--dequantize",
            help="Write quantized tensors (qint8, quint8, qint32) as float32 into .safetensors "
            "or DCP, which cannot hold them (.pth keeps them quantized).",
        ),
    ] = False,
    drop_extras: Annotated[
        bool,
        typer.Option(
            "--drop-extras",
            help="Let a .safetensors output leave out non-tensor entries of the weights "
            "(refused otherwise, naming them).",
        ),
    ] = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    weights: WeightsOpt = None,
    keep_device: KeepDeviceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert any readable checkpoint's weights to .pth, .safetensors (sharded) or DCP.

    Example: ckpt convert model.pth -o model.safetensors --dtype bf16
    """
    from ckpt_tool import api

    report = api.convert(
        path, output, dtype=dtype, keep=keep or [], keep_norm=keep_norm, strict=strict,
        fp8_scale=fp8_scale, max_shard_size=max_shard_size, to_dcp=to_dcp,
        dequantize=dequantize, drop_extras=drop_extras, force=force, dry_run=dry_run,
        verify=not no_verify, keep_device=keep_device, weights=weights,
    )  # fmt: skip
    show_report(report, json_out)
