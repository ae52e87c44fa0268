"""Nothing in a checkpoint runs: hostile pickles are inspected, never executed.

After every command on a hostile file: no canary, the input's bytes unchanged, and nothing
new written next to it. The module for the import-side-effect case is importable from the
test's sys.path, PYTHONPATH and cwd, so any import of it would fire. The environment also
sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: a torch.load that leaves weights_only unset
would become an unrestricted load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hostile_files as H
import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
WITH_TENSORS = [*H.HOSTILE_ZIPS, H.HOSTILE_OTHER[2]]  # zips + the legacy torch file
PLAIN_PICKLES = H.HOSTILE_OTHER[:2]
ALL_HOSTILE = H.HOSTILE_ZIPS + H.HOSTILE_OTHER
EXPECTED_TENSORS = {"weight": ([3, 4], "float32"), "bias": ([3], "float32")}


def _ids(entries: list[tuple]) -> list[str]:
    return [entry[0].__name__ for entry in entries]


def _snapshot(directory: Path) -> dict[str, str]:
    """Name -> sha256 of every file under directory (folders by name only)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def _assert_untouched(directory: Path, path: Path, before: dict[str, str]) -> None:
    time.sleep(0.3)  # a payload run through Popen would finish its `touch` by now
    assert not H.canary_path(directory).exists(), "a payload in the checkpoint was executed"
    assert H.EVIL_MODULE not in sys.modules, "the checkpoint's module was imported"
    assert _snapshot(directory).get(path.name) == before[path.name], "input bytes changed"
    assert _snapshot(directory) == before, "files were written next to the input"


@pytest.fixture
def hostile_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("CKPT_DEBUG", raising=False)
    yield tmp_path
    sys.modules.pop(H.EVIL_MODULE, None)


def _invoke(*args: object):
    from ckpt_tool.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"command crashed with {exc!r}") from exc
    assert "Traceback" not in result.stdout + result.stderr
    return result


def _check_refused(report: dict, names: tuple[str, ...], dangerous: bool) -> None:
    refused = report["refused_globals"]
    assert {r["name"] for r in refused} & set(names), f"{names} not in {refused}"
    assert len({r["name"] for r in refused}) == 1, f"only {names} should be refused: {refused}"
    assert all(r["dangerous"] is dangerous for r in refused), refused


def _check_tensors(report: dict) -> None:
    tensors = {t["key"]: (t["shape"], t["dtype"]) for t in report["tensors"]}
    assert tensors == EXPECTED_TENSORS


@pytest.mark.parametrize(("build", "names", "dangerous"), WITH_TENSORS, ids=_ids(WITH_TENSORS))
def test_inspect_json_lists_tensors_and_refused_globals(hostile_dir, build, names, dangerous):
    path = build(hostile_dir)
    before = _snapshot(hostile_dir)
    result = _invoke("inspect", path, "--json")
    _assert_untouched(hostile_dir, path, before)
    assert result.exit_code == 3, result.stderr  # the whole report, then exit 3 as scan says
    report = json.loads(result.stdout)
    assert report["verdict"] == "dangerous"
    _check_tensors(report)
    _check_refused(report, names, dangerous)


@pytest.mark.parametrize(("build", "names", "dangerous"), WITH_TENSORS, ids=_ids(WITH_TENSORS))
@pytest.mark.parametrize("flags", [[], ["--keys"]], ids=["table", "keys"])
def test_inspect_text(hostile_dir, build, names, dangerous, flags):
    path = build(hostile_dir)
    before = _snapshot(hostile_dir)
    result = _invoke("inspect", path, *flags)
    _assert_untouched(hostile_dir, path, before)
    assert result.exit_code == 3, result.stderr
    assert "weight" in result.stdout and "bias" in result.stdout
    assert "DANGEROUS" in result.stdout and "ckpt scan" in result.stderr


@pytest.mark.parametrize(("build", "names", "dangerous"), PLAIN_PICKLES, ids=_ids(PLAIN_PICKLES))
def test_inspect_json_plain_pickle(hostile_dir, build, names, dangerous):
    """Contract leaves open whether numpy pickles inspect; either way nothing runs."""
    path = build(hostile_dir)
    before = _snapshot(hostile_dir)
    result = _invoke("inspect", path, "--json")
    _assert_untouched(hostile_dir, path, before)
    assert result.exit_code == 3, result.stderr
    if result.stdout:
        _check_refused(json.loads(result.stdout), names, dangerous)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("build", "names", "dangerous"), ALL_HOSTILE, ids=_ids(ALL_HOSTILE))
def test_library_load_never_executes(hostile_dir, build, names, dangerous):
    import ckpt_tool
    from ckpt_tool.errors import CkptError

    path = build(hostile_dir)
    before = _snapshot(hostile_dir)
    if (build, names, dangerous) in WITH_TENSORS:
        ckpt_tool.load(path)
    else:
        with contextlib.suppress(CkptError):  # refusing is fine, executing is not
            ckpt_tool.load(path)
    _assert_untouched(hostile_dir, path, before)


@pytest.mark.parametrize(("build", "names", "dangerous"), ALL_HOSTILE, ids=_ids(ALL_HOSTILE))
def test_inspect_real_process(tmp_path, build, names, dangerous):
    """A real `python -m ckpt_tool` run from the hostile folder, the module importable."""
    path = build(tmp_path)
    before = _snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "CKPT_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", "inspect", str(path), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_untouched(tmp_path, path, before)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stderr
    if (build, names, dangerous) in WITH_TENSORS:
        report = json.loads(proc.stdout)
        _check_tensors(report)
        _check_refused(report, names, dangerous)


@pytest.mark.parametrize(("build", "names", "dangerous"), ALL_HOSTILE, ids=_ids(ALL_HOSTILE))
def test_payload_is_armed(tmp_path, build, names, dangerous):
    """Control: an unrestricted load of the same file does fire the canary."""
    path = build(tmp_path)
    code = (
        "import pickle, sys, torch; p = sys.argv[1]\n"
        "torch.load(p, weights_only=False) if p.endswith('.pth') else pickle.load(open(p, 'rb'))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=tmp_path, env=env, timeout=120)
    for _ in range(50):
        if H.canary_path(tmp_path).exists():
            break
        time.sleep(0.1)
    assert H.canary_path(tmp_path).exists()
