"""`ckpt scan` as a gate: the verdict corpus (verdict_corpus.py) through the CLI.

Every malicious file: `scan --json` exits 3 with verdict "dangerous" and names the callable the
payload reaches (where it has one), `inspect --json` exits 3, and every write command refuses it
(non-zero exit, no output). Every benign file: `scan --json` exits 0 with verdict "safe" or
"needs code" and `inspect --json` exits 0. For all: no payload runs (the canary never appears),
no traceback, the input bytes are unchanged. The corpus is built once per session.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import verdict_corpus as V
from conftest import run_cli, run_module

MALICIOUS_IDS = [b.__name__ for b in V.MALICIOUS]
BENIGN_IDS = [b.__name__ for b in V.BENIGN]

# Each write command, with OUT standing for the output path (all refuse malicious input).
WRITES: dict[str, tuple[list[str], str]] = {
    "strip-module": (["strip-module", "{IN}", "-o", "{OUT}", "--partial"], "out.pth"),
    "extract": (["extract", "{IN}", "-o", "{OUT}"], "out.pth"),
    "cast": (["cast", "{IN}", "--dtype", "fp16", "-o", "{OUT}"], "out.pth"),
    "convert": (["convert", "{IN}", "-o", "{OUT}"], "out.safetensors"),
    "freeze": (["freeze", "x*", "{IN}", "-o", "{OUT}"], "out.pth"),
    "rename": (["rename", "{IN}", "--map", "a=b", "-o", "{OUT}"], "out.pth"),
}


def _digest(path: Path) -> str:
    """sha256 over a file, or over every file (name and bytes) under a folder."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


class Built:
    """The files of one corpus list, each in its own folder (its canary lives there)."""

    def __init__(self, root: Path, builders: list[V.Builder]) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}
        self.digests: dict[str, str] = {}
        for build in builders:
            folder = root / build.__name__
            folder.mkdir(parents=True)
            path = build(folder)
            assert path.exists(), f"{build.__name__} wrote nothing"
            self.paths[build.__name__] = path
            self.digests[build.__name__] = _digest(path)
            assert not V.canary_path(folder).exists(), f"building {build.__name__} fired it"

    def check_untouched(self, name: str) -> None:
        path = self.paths[name]
        assert not V.canary_path(path.parent).exists(), f"{name}: a payload was executed"
        assert _digest(path) == self.digests[name], f"{name}: the input changed"


@pytest.fixture(scope="session")
def malicious(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("verdict") / "malicious", V.MALICIOUS)


@pytest.fixture(scope="session")
def benign(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("verdict") / "benign", V.BENIGN)


@pytest.fixture(autouse=True)
def _unsafe_loads_would_fire(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Were any command to call torch.load, make it the unrestricted one: the canary would show."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("BROWSER", "touch")  # a webbrowser payload would `touch` the canary
    monkeypatch.delenv("CKPT_DEBUG", raising=False)
    yield


def _invoke(args: list[Any]) -> Any:
    """`ckpt ARGS` in-process: no uncaught exception, no traceback on either stream."""
    result = run_cli(args)
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"`ckpt {args[0]}` crashed with {exc!r}") from exc
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    return result


def _json(result: Any) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"not one JSON document on stdout: {result.stdout[:500]!r}") from e


def _file_report(report: Any) -> Any:
    files = report["files"]
    assert len(files) >= 1, report
    return files[0]


# --------------------------------------------------------------------------- the corpus itself


def test_corpus_size() -> None:
    assert len(V.MALICIOUS) >= 70
    assert len(V.BENIGN) >= 25
    assert set(V.EXPECTED_NAME) == set(MALICIOUS_IDS)
    assert not set(MALICIOUS_IDS) & set(BENIGN_IDS)


# --------------------------------------------------------------------------- malicious


@pytest.mark.parametrize("name", MALICIOUS_IDS)
def test_malicious_scan_is_dangerous(malicious: Built, name: str) -> None:
    path = malicious.paths[name]
    result = _invoke(["scan", path, "--json"])
    try:
        report = _json(result)
        assert result.exit_code == 3, (result.exit_code, result.stderr[-500:])
        assert report.get("exit_code", 3) == 3, report.get("exit_code")
        entry = _file_report(report)
        assert entry["verdict"] == "dangerous", entry
        expected = V.EXPECTED_NAME[name]
        if expected is not None:
            findings = json.dumps(entry["findings"])
            assert expected in findings, (expected, entry["findings"])
    finally:
        malicious.check_untouched(name)


@pytest.mark.parametrize("name", MALICIOUS_IDS)
def test_malicious_inspect_refuses(malicious: Built, name: str) -> None:
    result = _invoke(["inspect", malicious.paths[name], "--json"])
    malicious.check_untouched(name)
    assert result.exit_code == 3, (result.exit_code, result.stdout[:300], result.stderr[-500:])


@pytest.mark.parametrize("command", list(WRITES))
@pytest.mark.parametrize("name", MALICIOUS_IDS)
def test_malicious_write_refused(malicious: Built, tmp_path: Path, name: str, command: str) -> None:
    template, out_name = WRITES[command]
    out = tmp_path / "out" / out_name
    out.parent.mkdir()
    args = [str(malicious.paths[name]) if a == "{IN}" else a for a in template]
    args = [str(out) if a == "{OUT}" else a for a in args]
    result = _invoke(args)
    malicious.check_untouched(name)
    assert result.exit_code != 0, f"`ckpt {command}` accepted {name}: {result.stdout[:300]}"
    assert not out.exists(), f"`ckpt {command}` wrote {out.name} for a refused input"
    leftovers = sorted(p.name for p in out.parent.iterdir())
    assert leftovers == [], f"`ckpt {command}` left files behind: {leftovers}"


def test_scan_whole_malicious_folder(malicious: Built) -> None:
    """The installed CLI as a real process over the folder of every malicious file: exit 3."""
    proc = run_module(
        ["scan", malicious.root, "--json"],
        timeout=600,
        env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "BROWSER": "touch"},
    )
    for name in MALICIOUS_IDS:
        malicious.check_untouched(name)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-1000:])
    report = json.loads(proc.stdout)
    ours = {os.path.realpath(p): n for n, p in malicious.paths.items()}
    passed = [
        ours[os.path.realpath(f["path"])]
        for f in report["files"]
        if os.path.realpath(f["path"]) in ours and f.get("verdict") in ("safe", "needs code")
    ]
    assert passed == [], f"a folder scan let these through: {passed}"


# --------------------------------------------------------------------------- benign


@pytest.mark.parametrize("name", BENIGN_IDS)
def test_benign_scan_passes(benign: Built, name: str) -> None:
    result = _invoke(["scan", benign.paths[name], "--json"])
    benign.check_untouched(name)
    report = _json(result)
    entry = _file_report(report)
    assert result.exit_code == 0, (result.exit_code, entry.get("verdict"), result.stderr[-500:])
    assert entry["verdict"] in ("safe", "needs code"), entry
    assert all(f.get("verdict") != "dangerous" for f in entry["findings"]), entry["findings"]


@pytest.mark.parametrize("name", BENIGN_IDS)
def test_benign_inspect_reads(benign: Built, name: str) -> None:
    result = _invoke(["inspect", benign.paths[name], "--json"])
    benign.check_untouched(name)
    assert result.exit_code == 0, (result.exit_code, result.stderr[-500:])
    _json(result)
