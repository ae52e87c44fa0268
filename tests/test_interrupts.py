"""Interrupted and failing writes: the user's files survive whatever happens to a write.

Extends test_write_commands.py (SIGKILL/SIGINT of strip-module with no earlier output, and
RLIMIT_FSIZE on strip-module). Here: SIGKILL at many points of strip-module, extract, cast and
convert while an older output exists (--force): afterwards the output is the old file or the
complete new one, byte for byte; only recognisable temp files remain and the next run removes
them; the input never changes. Then a real full disk (a small tmpfs) and RLIMIT_FSIZE, a
read-only output folder (a read-only tmpfs), and concurrent writers of one output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
TMP_MARK = ".ckpt-tmp-"

# command line (without input and -o), output extension
WRITES: dict[str, tuple[list[str], str]] = {
    "strip-module": (["strip-module"], ".pth"),
    "strip-module-st": (["strip-module"], ".safetensors"),
    "extract": (["extract"], ".pth"),
    "cast": (["cast", "--dtype", "fp16"], ".pth"),
    "convert": (["convert"], ".safetensors"),
}
PHASES = (0.0, 0.25, 0.5, 0.75, 1.0)  # kill when the temp file reaches this share of the output
RANDOM_KILLS = 4
TRIED: Counter[str] = Counter()  # interrupt points per outcome, printed at the end


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CKPT_DEBUG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _argv(command: str, src: Path, out: Path, *extra: str) -> list[str]:
    args, _ = WRITES[command]
    return [sys.executable, "-m", "ckpt_tool", *args, str(src), "-o", str(out), *extra]


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120, **kw
    )


def _make_input(folder: Path, seed: int = 0, mb: int = 32) -> Path:
    g = torch.Generator().manual_seed(seed)
    n = mb * (1 << 20) // 4 // 4
    sd = {f"module.block{i}.weight": torch.rand(n, generator=g) for i in range(4)}
    sd["module.block0.bias"] = torch.rand(7, generator=g)
    sd["module.bn.num_batches_tracked"] = torch.tensor(seed)
    path = folder / f"input{seed}.pth"
    torch.save(sd, path)
    return path


def _old_output(path: Path) -> str:
    """An older, valid, different file at the output path; returns its digest."""
    if path.suffix == ".safetensors":
        save_file({"old": torch.arange(5.0)}, str(path))
    else:
        torch.save({"old": torch.arange(5.0)}, path)
    return _sha(path)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if TMP_MARK in p.name]


def _kill_at(
    proc: subprocess.Popen[bytes], folder: Path, out: Path, share: float, size: int
) -> str:
    """SIGKILL once this process's temp file holds `share` of the output; 'finished' if not."""
    prefix = f".{out.name}{TMP_MARK}{proc.pid}-"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        for p in folder.iterdir():
            if p.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if p.stat().st_size >= share * size:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        return "killed"
        time.sleep(0.0005)
    proc.wait()
    return "finished"


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_input(tmp_path_factory.mktemp("interrupt-input"))


@pytest.mark.parametrize("command", list(WRITES))
def test_sigkill_anywhere_leaves_old_or_new(tmp_path: Path, big_input: Path, command: str) -> None:
    src_sha = _sha(big_input)
    ext = WRITES[command][1]
    ref = tmp_path / f"reference{ext}"
    t0 = time.monotonic()
    proc = _run(_argv(command, big_input, ref))
    duration = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    new_sha, size = _sha(ref), ref.stat().st_size
    work = tmp_path / "work"
    work.mkdir()
    out = work / f"out{ext}"
    old_sha = _old_output(out)
    rng = random.Random(f"ckpt-interrupts-{command}")
    points: list[tuple[str, float]] = [("phase", s) for s in PHASES]
    points += [("time", rng.uniform(0.3, 1.1) * duration) for _ in range(RANDOM_KILLS)]
    outcomes: Counter[str] = Counter()
    for how, at in points:
        p = subprocess.Popen(
            _argv(command, big_input, out, "--force"), cwd=REPO, env=_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if how == "phase":
            _kill_at(p, work, out, at, size)
        else:
            time.sleep(at)
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert out.exists(), f"{command}: the output vanished ({how} {at:.2f})"
        digest = _sha(out)
        assert digest in (old_sha, new_sha), f"{command}: a mixed or partial output ({how} {at})"
        outcomes["old" if digest == old_sha else "new"] += 1
        for t in _temps(work):
            assert t.name.startswith(f".{out.name}{TMP_MARK}"), t.name
        if digest == new_sha:
            old_sha = _old_output(out)  # start from an old file again
        assert _sha(big_input) == src_sha, "the input changed"
    outcomes["temps left by kills"] = len(_temps(work))
    # the next run removes the dead runs' temp files and completes
    proc = _run(_argv(command, big_input, out, "--force"))
    assert proc.returncode == 0, proc.stderr
    assert _temps(work) == [] and _sha(out) == new_sha
    assert sorted(p.name for p in work.iterdir()) == [out.name]
    TRIED.update({f"{command}:{k}": v for k, v in outcomes.items()})
    print(f"interrupts {command}: {len(points)} points, {dict(outcomes)}")


# --- full disk, read-only folder ---------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs mounted on folder (needs root and mount); skips the test where impossible."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; RLIMIT_FSIZE variants still run")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:100]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _remount_ro(folder: Path) -> None:
    proc = subprocess.run(
        ["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot remount read-only ({proc.stderr.strip()[:100]})")


def _one_error_line(proc: subprocess.CompletedProcess[str], pattern: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["strip-module", "extract", "convert", "cast"])
def test_full_disk_tmpfs(tmp_path: Path, big_input: Path, command: str) -> None:
    with _tmpfs(tmp_path / "small", "12m") as disk:
        out = disk / f"out{WRITES[command][1]}"
        old_sha = _old_output(out)
        proc = _run(_argv(command, big_input, out, "--force"))
        _one_error_line(proc, r"(?i)disk full|no space")
        assert _sha(out) == old_sha, "the earlier output was damaged"
        assert sorted(p.name for p in disk.iterdir()) == [out.name], "partial files left"


@pytest.mark.parametrize(
    "command",
    [
        "extract",
        "convert",
        "cast",
    ],
)
def test_file_size_limit_keeps_old_output(tmp_path: Path, big_input: Path, command: str) -> None:
    out = tmp_path / f"out{WRITES[command][1]}"
    old_sha = _old_output(out)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        lim = 8 << 20
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))

    proc = _run(_argv(command, big_input, out, "--force"), preexec_fn=limit)
    _one_error_line(proc, r"(?i)disk full|too large")
    assert _sha(out) == old_sha
    assert _temps(tmp_path) == []


def test_read_only_output_folder(tmp_path: Path, big_input: Path) -> None:
    with _tmpfs(tmp_path / "ro", "64m") as ro:
        out = ro / "out.pth"
        old_sha = _old_output(out)
        inplace = ro / "model.pth"
        inplace.write_bytes(big_input.read_bytes())
        src_sha = _sha(inplace)
        _remount_ro(ro)
        listing = sorted(p.name for p in ro.iterdir())
        proc = _run(_argv("strip-module", big_input, out, "--force"))
        _one_error_line(proc, r"not writable|read-only|cannot create")
        proc = _run(_argv("extract", big_input, ro / "new.pth"))
        _one_error_line(proc, r"not writable|read-only|cannot create")
        proc = _run([sys.executable, "-m", "ckpt_tool", "strip-module", str(inplace), "--in-place"])
        _one_error_line(proc, r"not writable|read-only|cannot create")
        assert sorted(p.name for p in ro.iterdir()) == listing
        assert _sha(out) == old_sha and _sha(inplace) == src_sha


# --- concurrent writers ------------------------------------------------------------------------


def test_concurrent_writers_one_wins_never_a_mix(tmp_path: Path) -> None:
    a = _make_input(tmp_path, seed=1, mb=16)
    b = _make_input(tmp_path, seed=2, mb=16)
    refs = {}
    for src in (a, b):
        ref = tmp_path / f"ref-{src.stem}.pth"
        assert _run(_argv("strip-module", src, ref)).returncode == 0
        refs[_sha(ref)] = src.stem
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out.pth"
    _old_output(out)
    winners: Counter[str] = Counter()
    for _ in range(4):
        procs = [
            subprocess.Popen(
                _argv("strip-module", src, out, "--force"),
                cwd=REPO,
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for src in (a, b)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        digest = _sha(out)
        assert digest in refs, "the output is a mix of two writes"
        winners[refs[digest]] += 1
        assert _temps(work) == []
    print(f"concurrent writers: winners {dict(winners)}")
