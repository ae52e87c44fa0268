"""Shared helpers for the benchmark scripts (stdlib only: the parent never imports torch).

On Linux a child's ru_maxrss starts from the RSS high-water mark of the process it was forked
from, so the benchmark parent must stay small; checkpoints are built in a separate subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LARGE_NUMEL = 2_500_000  # fp32 elements per large tensor (10 MB)
BN_CHANNELS = 512
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

BUILD_CODE = """
import sys, torch
path, n, seed, numel, channels = sys.argv[1], *map(int, sys.argv[2:6])
prefix = sys.argv[6] if len(sys.argv) > 6 else ""
g = torch.Generator().manual_seed(seed)
sd = {}
for i in range(n):
    sd[f"{prefix}blocks.{i}.conv.weight"] = torch.empty(numel // 1000, 1000).uniform_(
        -1, 1, generator=g
    )
    p = f"{prefix}blocks.{i}.bn."
    sd[p + "weight"] = torch.empty(channels).uniform_(0.5, 1.5, generator=g)
    sd[p + "bias"] = torch.empty(channels).uniform_(-0.1, 0.1, generator=g)
    sd[p + "running_mean"] = torch.randn(channels, generator=g)
    sd[p + "running_var"] = torch.rand(channels, generator=g) + 0.5
    sd[p + "num_batches_tracked"] = torch.tensor(1000 + i, dtype=torch.long)
torch.save(sd, path)
"""


@dataclass
class Checkpoint:
    """A generated checkpoint file and what it should contain."""

    label: str
    path: Path
    num_large: int
    size_bytes: int = 0
    key_prefix: str = ""

    @property
    def num_tensors(self) -> int:
        """Expected tensor count: one large tensor plus one BN layer per block."""
        return self.num_large * (1 + len(BN_KEYS))


@dataclass
class Result:
    """Timings and peak RSS of one command on one checkpoint."""

    command: str
    checkpoint: str
    size_bytes: int
    wall_s: list[float] = field(default_factory=list)
    peak_rss_kb: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        """Median wall time over the timed runs."""
        return statistics.median(self.wall_s)

    @property
    def peak_mb(self) -> float:
        """Largest peak RSS over the timed runs, in MB (10^6 bytes)."""
        return max(self.peak_rss_kb) * 1024 / 1e6


def ckpt_executable(tool: str) -> str:
    """The installed `ckpt` entry point next to this interpreter, else the one on PATH."""
    local = Path(sys.executable).parent / "ckpt"
    if local.exists():
        return str(local)
    found = shutil.which("ckpt")
    if found is None:
        sys.exit(f"{tool}: cannot find the `ckpt` entry point")
    return found


def num_large_for(size_gb: float) -> int:
    """Number of large fp32 tensors that add up to about size_gb."""
    return max(1, round(size_gb * 1e9 / (LARGE_NUMEL * 4)))


def build_checkpoint(ckpt: Checkpoint, seed: int) -> None:
    """Write the checkpoint in a separate process (keeps torch and its memory out of this one)."""
    args = [str(ckpt.path), str(ckpt.num_large), str(seed), str(LARGE_NUMEL), str(BN_CHANNELS)]
    if ckpt.key_prefix:
        args.append(ckpt.key_prefix)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD_CODE, *args], check=True)
    ckpt.size_bytes = ckpt.path.stat().st_size
    print(
        f"built {ckpt.path} ({ckpt.size_bytes / 1e9:.2f} GB, {ckpt.num_tensors} tensors) "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )


def check_free_space(tool: str, workdir: Path, needed_bytes: float) -> None:
    """Exit early when the work folder cannot hold the checkpoints."""
    free = shutil.disk_usage(workdir).free
    if free < needed_bytes * 1.1:
        sys.exit(
            f"{tool}: {workdir} has {free / 1e9:.1f} GB free, "
            f"need about {needed_bytes / 1e9:.1f} GB"
        )


def run_once(tool: str, argv: list[str]) -> tuple[float, int]:
    """Run argv with stdout discarded; return (wall seconds, the child's own peak RSS in KB)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(
                f"{tool}: {argv} exited {proc.returncode}:\n"
                f"{err.read().decode(errors='replace')[-2000:]}"
            )
    return wall, usage.ru_maxrss


def measure(
    tool: str,
    name: str,
    argv: list[str],
    ckpt: Checkpoint,
    runs: int,
    before_each: Callable[[], None] | None = None,
) -> Result:
    """One untimed warm-up run, then `runs` timed runs; `before_each` runs untimed before each."""
    result = Result(name, ckpt.label, ckpt.size_bytes)
    for i in range(runs + 1):
        if before_each is not None:
            before_each()
        wall, rss = run_once(tool, argv)
        if i > 0:
            result.wall_s.append(wall)
            result.peak_rss_kb.append(rss)
    print(
        f"  {name:<24} {ckpt.label:>8}  median {result.median_s:.3f} s  "
        f"peak {result.peak_mb:.0f} MB",
        flush=True,
    )
    return result


def find(results: list[Result], command: str, label: str) -> Result:
    """The result for one command on one checkpoint."""
    return next(r for r in results if r.command == command and r.checkpoint == label)


def print_checks(checks: list[dict[str, object]]) -> None:
    """Print one PASS/FAIL line per check."""
    for chk in checks:
        print(f"{'PASS' if chk['passed'] else 'FAIL'}: {chk['name']} ({chk['detail']})")


def print_durable_floor(
    results: list[Result], labels: list[str], cp: str, cp_sync: str, commands: tuple[str, ...]
) -> None:
    """Print how far the durable copy (cp + sync: what an fsyncing writer cannot beat) is from
    plain cp, and each ckpt command against that floor, per checkpoint size."""
    for label in labels:
        floor = find(results, cp_sync, label).median_s
        ratios = ", ".join(
            f"`{name}` {find(results, name, label).median_s / floor:.2f}x" for name in commands
        )
        print(
            f"floor on {label}: `{cp_sync}` is {floor / find(results, cp, label).median_s:.2f}x "
            f"`{cp}`; against it: {ratios}"
        )


def make_workdir(prefix: str, parent: Path | None) -> Path:
    """A fresh temporary folder under parent (default: the system temp folder)."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def write_json(
    path: Path,
    args: Any,
    ckpts: list[Checkpoint],
    results: list[Result],
    checks: list[dict[str, object]],
    **extra: object,
) -> None:
    """Write config, checkpoints, per-run raw numbers, summaries, checks (and extra) as JSON."""
    payload = {
        "config": {
            "size_gb": args.size_gb,
            "runs": args.runs,
            "seed": args.seed,
            "quick": args.quick,
            "python": sys.executable,
            "cpu_count": os.cpu_count(),
        },
        "checkpoints": [
            {
                "label": c.label,
                "path": str(c.path),
                "size_bytes": c.size_bytes,
                "num_tensors": c.num_tensors,
                "key_prefix": c.key_prefix,
            }
            for c in ckpts
        ],
        "results": [
            asdict(r) | {"median_s": r.median_s, "peak_rss_mb": r.peak_mb} for r in results
        ],
        "checks": checks,
        **extra,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
