"""`ckpt demo`: the whole card in one run, each step a real command, checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _ckpt(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("CKPT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_demo_passes_and_its_steps_match_the_standalone_commands(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = _ckpt(["demo", "--workdir", str(work), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    titles = [s["step"] for s in report["steps"]]
    assert len(titles) == 9 and all(s["ok"] for s in report["steps"])
    assert [s["command"].split()[1] for s in report["steps"]] == [
        "inspect", "inspect", "strip-module", "transplant", "freeze", "count", "cast",
        "convert", "smoke-train",
    ]  # fmt: skip
    # read-only steps print exactly what the standalone command prints
    for step in report["steps"]:
        if step["command"].split()[1] in ("inspect", "count"):
            again = _ckpt(step["command"].split()[1:], work)
            assert (again.stdout + again.stderr).rstrip() == step["output"]
    assert "smoke-train passed" in report["steps"][-1]["output"]
    assert (work / "convnet5.safetensors").is_file()


def test_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    proc = _ckpt(["demo", "--workdir", str(tmp_path)], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "not empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
