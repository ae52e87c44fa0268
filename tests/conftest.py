"""Shared test helpers: fixture paths, the CLI runner, JSON and subprocess invocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_cli(args: list[str]) -> Any:
    """Invoke `ckpt ARGS` in-process; returns typer's Result (stdout/stderr separate)."""
    from ckpt_tool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def run_json(args: list[str]) -> tuple[int, Any]:
    """Invoke `ckpt ARGS --json` in-process: (exit code, parsed stdout or None if not JSON)."""
    args = [str(a) for a in args]
    if "--json" not in args:
        args.append("--json")
    result = run_cli(args)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        data = None
    return result.exit_code, data


def run_module(
    args: list[str], timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run `python -m ckpt_tool ARGS` as a real process (text mode, captured)."""
    env = {**os.environ, **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        **kwargs,
    )
