"""smoke-train past one process: FSDP2 and DDP on 2 gloo ranks, launched by torchrun and by
--nproc (torch's launcher), sharded reading from DCP and sharded safetensors, --save-dcp read
back by ckpt, and a check failing on one rank failing the run on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, REPO, run_json
from safetensors.torch import load_file

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]

# An MLP whose output is NaN on rank 1 only: a failure exactly one rank sees.
RANK_BAD = """
import torch
import torch.distributed as dist
from torch import nn


class RankBad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        out = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        if dist.is_initialized() and dist.get_rank() == 1:
            out = out * float("nan")
        return out
"""


def _torchrun(args: list[Any], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*TORCHRUN, "-m", "ckpt_tool", *[str(a) for a in args]],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip


def _checks(report: dict[str, Any]) -> dict[str, bool | None]:
    return {c["name"]: c["ok"] for c in report["checks"]}


def test_fsdp_nproc_from_sharded_safetensors_and_save_dcp(tmp_path: Path) -> None:
    out = tmp_path / "trained"
    code, r = run_json(
        ["smoke-train", FIXTURES / "convnet_sharded", "--arch", "convnet", "--nproc", "2",
         "--fsdp", "--steps", "4", "--save-dcp", out]
    )  # fmt: skip
    assert code == 0, r
    assert r["config"]["fsdp"] is True and r["config"]["nproc"] == 2 and r["world_size"] == 2
    assert all(_checks(r).values()), r["checks"]
    assert "FSDP2" in next(c["detail"] for c in r["checks"] if c["name"] == "ranks_agree")
    assert [p["rank"] for p in r["ranks"]] == [0, 1]
    assert "shards" in next(c["detail"] for c in r["checks"] if c["name"] == "loads_strictly")
    # the trained state is a real 2-rank DCP folder that ckpt converts back
    assert sorted(p.name for p in out.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    code, conv = run_json(["convert", out, "-o", tmp_path / "trained.safetensors"])
    assert code == 0, conv
    trained = load_file(tmp_path / "trained.safetensors")
    original: dict[str, torch.Tensor] = {}
    for shard in sorted((FIXTURES / "convnet_sharded").glob("*.safetensors")):
        original.update(load_file(shard))
    assert trained.keys() == original.keys()
    assert all(trained[k].shape == original[k].shape for k in original)
    assert not torch.equal(trained["fc.weight"], original["fc.weight"])  # it trained


def test_fsdp_keeps_frozen_parameters(tmp_path: Path) -> None:
    """Mixed requires_grad inside FSDP2 units: frozen slices stay bit-identical on every rank."""
    out = tmp_path / "trained"
    code, r = run_json(
        ["smoke-train", FIXTURES / "convnet_frozen.pth", "--arch", "convnet", "--nproc", "2",
         "--fsdp", "--steps", "3", "--save-dcp", out]
    )  # fmt: skip
    assert code == 0, r["checks"]
    assert r["freeze"]["frozen"] > 0 and r["frozen"] > 0
    code, _ = run_json(["convert", out, "-o", tmp_path / "t.safetensors"])
    assert code == 0
    trained = load_file(tmp_path / "t.safetensors")
    before = torch.load(FIXTURES / "convnet_frozen.pth", weights_only=True)
    for key, value in before.items():
        if isinstance(value, torch.nn.Parameter) and not value.requires_grad:
            assert torch.equal(trained[key], value.detach()), key


def test_torchrun_ddp_prints_one_report(tmp_path: Path) -> None:
    proc = _torchrun(
        ["smoke-train", FIXTURES / "mlp.pth", "--arch", "mlp", "--steps", "4", "--json"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)  # one document: rank 1 printed nothing
    assert r["config"]["nproc"] == 2 and _checks(r)["ranks_agree"] is True
    assert "parameters identical on 2 ranks" in r["checks"][-1]["detail"]


def test_torchrun_fsdp_reads_a_dcp_folder(tmp_path: Path) -> None:
    proc = _torchrun(
        ["smoke-train", FIXTURES / "sigmoidnet_dcp", "--arch", "sigmoid_net", "--fsdp",
         "--task", "regression", "--steps", "4", "--json"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["format"] == "dcp" and r["config"]["fsdp"] is True
    assert all(_checks(r).values()), r["checks"]


@pytest.mark.parametrize("launcher", ["torchrun", "nproc"])
def test_a_check_failing_on_one_rank_fails_every_rank(tmp_path: Path, launcher: str) -> None:
    (tmp_path / "rankbad.py").write_text(RANK_BAD)
    args = ["smoke-train", FIXTURES / "mlp.pth", "--arch", tmp_path / "rankbad.py:RankBad",
            "--steps", "3", "--json"]  # fmt: skip
    if launcher == "torchrun":
        proc = _torchrun(args, tmp_path)
        assert proc.returncode != 0
        # every rank exited 3 (torchrun names the first failed child)
        assert "exitcode  : 3" in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 2 and any("(rank 1)" in ln for ln in lines), proc.stderr[-2000:]
        r = json.loads(proc.stdout)
    else:
        code, r = run_json([*args, "--nproc", "2"])
        assert code == 3
    forward = next(c for c in r["checks"] if c["name"] == "forward_ok")
    assert forward["ok"] is False and forward["detail"].startswith("rank 1:")
    assert r["exit_code"] == 3 and "forward_ok" in r["failed"]
    assert [c["ok"] for c in r["ranks"][0]["checks"]][:2] == [True, True]  # rank 0 was fine
