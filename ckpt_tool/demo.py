"""`ckpt demo`: the whole card on an embedded model, each step a real `ckpt` run, checked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckpt_tool.checkpoint import load


@dataclass
class Step:
    """One command of the walk-through and what it must have done."""

    title: str
    args: list[str]
    check: Callable[[Path], str | None]  # None when the step did what it should, else why not


@dataclass
class StepResult:
    step: Step
    exit_code: int
    output: str
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.problem is None


def build_inputs(workdir: Path) -> None:
    """The seed MNIST ConvNet, saved as DataParallel would and as a whole pickled model."""
    import torch
    from torch import nn

    from ckpt_tool.seed_models import ConvNet

    torch.manual_seed(0)
    model = ConvNet()
    torch.save(nn.DataParallel(model).state_dict(), workdir / "convnet_dp.pth")
    torch.save(model, workdir / "convnet_whole.pth")


def _keys_without(prefix: str, name: str) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        keys = list(load(d / name).tensors)
        bad = [k for k in keys if k.startswith(prefix)]
        return f"{len(bad)} keys still start with {prefix}" if bad or not keys else None

    return check


def _layout(name: str, layout: str) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        got = load(d / name).layout
        return None if got == layout else f"layout {got}, expected {layout}"

    return check


def _fc_rows(name: str, rows: int) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        shape = load(d / name).tensors["fc.weight"].shape
        return None if shape[0] == rows else f"fc.weight is {list(shape)}"

    return check


def _frozen(name: str, prefix: str) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        frozen = load(d / name).frozen
        ok = frozen and all(k.startswith(prefix) for k in frozen)
        return None if ok else f"frozen keys {frozen}"

    return check


def _has_dtype(name: str, dtype: str) -> Callable[[Path], str | None]:
    def check(d: Path) -> str | None:
        dtypes = {e.dtype for e in load(d / name).tensors.values()}
        return None if dtype in dtypes and "int64" in dtypes else f"dtypes {sorted(dtypes)}"

    return check


def _exists(name: str) -> Callable[[Path], str | None]:
    return lambda d: None if (d / name).exists() else f"{name} was not written"


def steps() -> list[Step]:
    """The card: inspect, strip-module, transplant, freeze, count, cast, convert, smoke-train."""
    return [
        Step(
            "inspect the DataParallel checkpoint",
            ["inspect", "convnet_dp.pth", "--depth", "2"],
            _exists("convnet_dp.pth"),
        ),
        Step(
            "inspect the whole pickled model",
            ["inspect", "convnet_whole.pth", "--depth", "1"],
            _layout("convnet_whole.pth", "module"),
        ),
        Step(
            "remove the module. prefix",
            ["strip-module", "convnet_dp.pth"],
            _keys_without("module.", "convnet_dp.stripped.pth"),
        ),
        Step(
            "transplant into a 5-class ConvNet",
            [
                "transplant",
                "convnet_dp.stripped.pth",
                "--into",
                "convnet",
                "--num-classes",
                "5",
                "-o",
                "convnet5.pth",
            ],
            _fc_rows("convnet5.pth", 5),
        ),
        Step(
            "freeze layer1",
            ["freeze", "layer1.*", "convnet5.pth", "--bn-eval"],
            _frozen("convnet5.frozen.pth", "layer1."),
        ),
        Step(
            "count what will train",
            ["count", "convnet5.frozen.pth"],
            _exists("convnet5.frozen.pth"),
        ),
        Step(
            "cast to fp16, norms kept fp32",
            ["cast", "convnet5.frozen.pth", "--dtype", "fp16", "--keep-norm"],
            _has_dtype("convnet5.frozen.fp16.pth", "float16"),
        ),
        Step(
            "convert to safetensors",
            ["convert", "convnet5.frozen.fp16.pth", "-o", "convnet5.safetensors"],
            _frozen("convnet5.safetensors", "layer1."),
        ),
        Step(
            "prove it still trains",
            [
                "smoke-train",
                "convnet5.safetensors",
                "--arch",
                "convnet",
                "--num-classes",
                "5",
                "--steps",
                "10",
            ],
            _exists("convnet5.safetensors"),
        ),
    ]


def run_step(step: Step, workdir: Path) -> StepResult:
    """Run one step as a real `ckpt` process (the same output the standalone command prints)."""
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("CKPT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *step.args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = (proc.stdout + proc.stderr).rstrip()
    problem = None
    if proc.returncode == 0:
        try:
            problem = step.check(workdir)
        except Exception as exc:  # a check that cannot read the result is a failed step
            problem = f"could not check the result ({exc})"
    return StepResult(step, proc.returncode, output, problem)
