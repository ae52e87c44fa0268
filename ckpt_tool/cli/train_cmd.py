"""`ckpt smoke-train`: prove that an edited checkpoint still trains."""

from __future__ import annotations

import os
from enum import Enum
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.cli.common import InputArg, JsonOpt, WeightsOpt, boundary, runs_models, show_report
from ckpt_tool.errors import CheckFailed
from ckpt_tool.train_dist import reporting_rank

from .archs_cmd import ArchArgOpt, InChansOpt, IntoOpt, NumClassesOpt


class Task(str, Enum):
    classification = "classification"
    regression = "regression"


class Optim(str, Enum):
    adam = "adam"
    sgd = "sgd"


class Sched(str, Enum):
    step = "step"


class Amp(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"


@boundary
@runs_models
def smoke_train_cmd(
    path: InputArg,
    arch: IntoOpt,
    arch_arg: ArchArgOpt = None,
    num_classes: NumClassesOpt = None,
    in_chans: InChansOpt = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            metavar="C,H,W",
            help="One sample's shape. Default: from the first layer (Conv2d: C×28×28 for one "
            "channel, else C×64×64; Linear: its in_features).",
            show_default=False,
        ),
    ] = None,
    task: Annotated[
        Task,
        typer.Option(
            "--task",
            help="classification: cross-entropy on random labels; "
            "regression: MSE on random targets.",
        ),
    ] = Task.classification,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Synthetic batch.")] = 8,
    steps: Annotated[int, typer.Option("--steps", min=2, help="Training steps.")] = 20,
    lr: Annotated[
        float | None,
        typer.Option("--lr", min=0.0, help="Learning rate (default 1e-3 adam, 1e-2 sgd)."),
    ] = None,
    optimizer: Annotated[Optim, typer.Option("--optimizer", help="Optimizer.")] = Optim.adam,
    lr_for: Annotated[
        list[str] | None,
        typer.Option(
            "--lr-for",
            metavar="'GLOB=LR'",
            help="Learning rate for parameters matching a glob (repeatable; first match wins).",
            show_default=False,
        ),
    ] = None,
    scheduler: Annotated[
        Sched | None,
        typer.Option("--scheduler", help="step: torch.optim.lr_scheduler.StepLR."),
    ] = None,
    step_size: Annotated[int, typer.Option("--step-size", min=1, help="StepLR step size.")] = 10,
    gamma: Annotated[float, typer.Option("--gamma", help="StepLR decay factor.")] = 0.1,
    amp: Annotated[
        Amp | None,
        typer.Option("--amp", help="Train under torch.autocast on CPU (fp16 uses a GradScaler)."),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Processes: >1 runs DistributedDataParallel on gloo on this machine and checks "
            "that every rank ends with the same parameters.",
        ),
    ] = 1,
    fsdp: Annotated[
        bool,
        typer.Option(
            "--fsdp",
            help="Shard the model with FSDP2 (fully_shard over a device mesh) instead of DDP; "
            "each rank reads only its slices of the checkpoint. Runs on --nproc ranks, or on "
            "the ranks torchrun started.",
        ),
    ] = False,
    save_dcp: Annotated[
        str | None,
        typer.Option(
            "--save-dcp",
            metavar="DIR",
            help="After the steps, write the trained model state with DCP from every rank "
            "(a folder `ckpt inspect` / `ckpt convert` read back).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the model and the batch.")] = 0,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Load a checkpoint strictly into an architecture and train a few steps on a fixed batch.

    Checks: loads_strictly, forward_ok, loss_decreases, gradients_flow (frozen parameters and
    eval BatchNorm layers unchanged), ranks_agree (--nproc). Exit 3 when one fails.

    Example: ckpt smoke-train model.pth --arch resnet34 --num-classes 4 --input-shape 3,64,64
    """
    from ckpt_tool import api

    result = api.smoke_train(
        path, arch, arch_args=arch_arg or [], num_classes=num_classes, in_chans=in_chans,
        input_shape=input_shape, task=task.value, batch_size=batch_size, steps=steps, lr=lr,
        optimizer=optimizer.value, lr_for=lr_for or [], seed=seed,
        scheduler=scheduler.value if scheduler else None, step_size=step_size, gamma=gamma,
        amp=amp.value if amp else None, nproc=nproc, weights=weights, fsdp=fsdp,
        save_dcp=save_dcp,
    )  # fmt: skip
    failed = f"{result.data['input']}: smoke-train failed {', '.join(result.data['failed'])}"
    if not reporting_rank():  # under torchrun rank 0 reports; every rank exits with the code
        if result.exit_code:
            render.error(f"{failed} (rank {os.environ.get('RANK')})")
            raise typer.Exit(result.exit_code)
        return
    if result.exit_code:
        raise CheckFailed(f"{failed} (see the report above)", report=result)
    show_report(result, json_out)
