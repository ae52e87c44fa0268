"""`ckpt merge-lora`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
from ckpt_tool.convert import replace_items
from ckpt_tool.edit import rebuild, refuse_dangerous, refuse_rewrite, weight_items
from ckpt_tool.merge_lora import load_adapter, plan_merge, prepare, scale_option


@boundary
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
    output: OutputOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    no_verify: NoVerifyOpt = False,
    keep_device: KeepDeviceOpt = False,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Merge a PEFT LoRA adapter into its base weights: W + scale · B @ A, PEFT's rules.

    float32 math, written in each weight's dtype; ranks and alphas per module (rank_pattern,
    alpha_pattern, use_rslora), fan_in_fan_out, embedding and conv LoRA, modules_to_save.
    One target at a time. Example: ckpt merge-lora base/ adapter/ -o merged.safetensors
    """
    ckpt = load(base, weights=weights)
    refuse_dangerous(ckpt)
    refuse_rewrite(ckpt)
    adapter_ckpt, cfg = load_adapter(adapter, config)
    refuse_dangerous(adapter_ckpt)
    plan = plan_merge(ckpt.tensors, adapter_ckpt.tensors, cfg, scale_option(scale))
    merging = prepare(ckpt, adapter_ckpt, plan)
    try:
        out = rebuild(ckpt, replace_items(weight_items(ckpt), merging.records))
        if dry_run:
            merging.compute_all()
        base_report: dict[str, Any] = {
            "adapter": str(adapter),
            "scale": scale,
            "use_rslora": bool(cfg.get("use_rslora")),
            "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
            "copied": sorted(plan.copies),
        }
        finish(
            "merge-lora",
            ckpt,
            out,
            base_report,
            output=output,
            tag="merged",
            force=force,
            in_place=False,
            dry_run=dry_run,
            verify=not no_verify,
            json_out=json_out,
            sources=merging.sources,
            late_report=lambda: {"targets": [t.as_json() for t in plan.targets]},
            keep_device=keep_device,
        )
    finally:
        merging.close()
