"""Broken, truncated and non-checkpoint inputs: exit 1, one line on stderr naming the file.

Never a traceback, nothing on stdout (also with --json), the input left as it was, and the
library raises a CkptError.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import hostile_files as H
import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
IDS = [build.__name__ for build, _ in H.BAD_INPUTS]
REAL_PROCESS = [
    H.random_bytes,
    H.truncated_zip,
    H.safetensors_absurd_header_len,
    H.missing_path,
    H.folder_without_checkpoint,
]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _check_one_line_error(
    stdout: str, stderr: str, path: Path, expected: str | None, json_out: bool, code: int = 1
) -> None:
    """One stderr line naming the file; stdout empty, or with --json exactly one JSON
    document holding the same message and the exit code."""
    assert "Traceback" not in stdout + stderr, stderr
    if json_out:
        doc = json.loads(stdout)  # one document: json.loads refuses anything after it
        assert doc["exit_code"] == code
        assert f"error: {doc['error']}" == stderr.strip()
    else:
        assert stdout == "", f"stdout should be empty, got {stdout!r}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"want exactly one stderr line, got {stderr!r}"
    assert path.name in lines[0], f"{path.name!r} not named in {lines[0]!r}"
    if expected is not None:
        assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKPT_DEBUG", raising=False)


@pytest.mark.parametrize(("build", "expected"), H.BAD_INPUTS, ids=IDS)
@pytest.mark.parametrize("flags", [[], ["--json"]], ids=["text", "json"])
def test_inspect_bad_input(tmp_path, build, expected, flags):
    from ckpt_tool.cli import app

    path = build(tmp_path)
    before = _digest(path)
    result = CliRunner().invoke(app, ["inspect", str(path), *flags])
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"command crashed with {exc!r}") from exc
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    _check_one_line_error(result.stdout, result.stderr, path, expected, json_out=bool(flags))
    assert _digest(path) == before


@pytest.mark.parametrize(("build", "expected"), H.BAD_INPUTS, ids=IDS)
def test_library_load_raises_ckpt_error(tmp_path, build, expected):
    import ckpt_tool
    from ckpt_tool.errors import CkptError

    path = build(tmp_path)
    with pytest.raises(CkptError) as info:
        ckpt_tool.load(path)
    assert "\n" not in info.value.message
    assert path.name in info.value.message


@pytest.mark.parametrize("build", REAL_PROCESS, ids=[b.__name__ for b in REAL_PROCESS])
def test_inspect_bad_input_real_process(tmp_path, build):
    path = build(tmp_path)
    expected = dict(H.BAD_INPUTS)[build]
    env = {k: v for k, v in os.environ.items() if k != "CKPT_DEBUG"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", "inspect", str(path), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    _check_one_line_error(proc.stdout, proc.stderr, path, expected, json_out=True)


def test_control_safetensors_is_readable(tmp_path):
    """The hand-built safetensors the broken ones derive from is itself fine."""
    from ckpt_tool.cli import app

    path = H.safetensors_valid(tmp_path)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    tensors = {t["key"]: (t["shape"], t["dtype"]) for t in json.loads(result.stdout)["tensors"]}
    assert tensors == {"a": ([2, 2], "float32"), "b": ([2, 2], "float32")}
