"""`ckpt merge-lora`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool.cli.common import InputArg, boundary, show_report, write_command
from ckpt_tool.output.options import WriteArgs


@boundary
@write_command(in_place=False)
def merge_lora(
    base: InputArg,
    adapter: Annotated[
        Path,
        typer.Argument(
            help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors/.bin), "
            "or the adapter file with --config.",
            show_default=False,
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", metavar="JSON", help="adapter_config.json, when ADAPTER is a file."
        ),
    ] = None,
    scale: Annotated[
        float,
        typer.Option("--scale", help="Multiply every update (1 = PEFT's merge; 0.5 = half)."),
    ] = 1.0,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Merge a PEFT LoRA adapter into its base weights: W + scale · B @ A, PEFT's rules.

    float32 math, written in each weight's dtype; ranks and alphas per module (rank_pattern,
    alpha_pattern, use_rslora), fan_in_fan_out, embedding and conv LoRA, modules_to_save.
    One target at a time. Example: ckpt merge-lora base/ adapter/ -o merged.safetensors
    """
    from ckpt_tool import api

    report = api.merge_lora(base, adapter, config=config, scale=scale, weights=weights, **write)
    show_report(report, json_out)
