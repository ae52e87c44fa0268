"""Shared helpers for the benchmark scripts (stdlib only: the parent never imports torch).

On Linux a child's ru_maxrss starts from the RSS high-water mark of the process it was forked
from, so the benchmark parent must stay small; checkpoints are built in a separate subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
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


class Checks(list[dict[str, object]]):
    """PASS/FAIL checks in order; each a dict of name, passed, detail (and any extra fields)."""

    def add(self, name: str, passed: bool, detail: str, **extra: object) -> None:
        """Record one check."""
        self.append({"name": name, "passed": passed, "detail": detail, **extra})

    def within(self, name: str, r: Result, floor: Result, target: float, **extra: object) -> None:
        """r's median time is at most target times floor's."""
        ratio = r.median_s / floor.median_s
        detail = f"{r.median_s:.2f} s vs {floor.median_s:.2f} s, {ratio:.2f}x"
        self.add(name, ratio <= target, detail, **extra)

    def under_mb(self, r: Result, limit_mb: float) -> None:
        """r's peak RSS is under limit_mb."""
        self.add(
            f"{r.command} peak RSS < {limit_mb:.0f} MB on {r.checkpoint}",
            r.peak_mb < limit_mb,
            f"{r.peak_mb:.0f} MB",
        )

    def flat(self, small: Result, large: Result, ratio: float, slack_mb: float) -> None:
        """Peak RSS on the larger input is at most ratio times the smaller's plus slack_mb."""
        limit = small.peak_mb * ratio + slack_mb
        self.add(
            f"{small.command} memory flat: {large.checkpoint} <= {ratio}x {small.checkpoint} "
            f"+ {slack_mb:.0f} MB",
            large.peak_mb <= limit,
            f"{large.peak_mb:.0f} MB vs limit {limit:.0f} MB",
        )


def results_table(
    results: list[Result],
    label_header: str,
    ratios: Mapping[str, Callable[[Result], float | None]],
    digits: int = 2,
) -> str:
    """Markdown: command, label, median time, peak RSS, then one column per named ratio
    (a ratio function returns None where its column does not apply)."""
    head = f"| command | {label_header} | median wall s | peak RSS MB | " + " | ".join(ratios)
    lines = [head + " |", "|---|---|---:|---:|" + "---:|" * len(ratios)]
    for r in results:
        cells = [f"{v:.2f}x" if (v := ratio(r)) is not None else "" for ratio in ratios.values()]
        lines.append(
            f"| `{r.command}` | {r.checkpoint} | {r.median_s:.{digits}f} | {r.peak_mb:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def versus(results: list[Result], floor_name: str) -> Callable[[Result], float]:
    """A ratio column: time over floor_name's time on the same checkpoint."""
    return lambda r: r.median_s / find(results, floor_name, r.checkpoint).median_s


def against_hand_written(
    tool: str,
    commands: dict[str, list[str]],
    work: Checkpoint,
    runs: int,
    ours: str,
    hand: str,
    target: float,
    before_each: Callable[[], None] | None = None,
) -> None:
    """Measure each command on one piece of work, then print the table (time against the
    hand-written script) and whether `ours` is within `target` of it."""
    print(f"{work.label}, 1 warm + {runs} timed runs each", flush=True)
    results = [
        measure(tool, name, argv, work, runs, before_each) for name, argv in commands.items()
    ]
    print()
    print(results_table(results, "work", {"vs hand-written": versus(results, hand)}))
    checks = Checks()
    checks.within(
        f"{ours} within {target}x of the {hand}",
        find(results, ours, work.label),
        find(results, hand, work.label),
        target,
    )
    print()
    print_checks(checks)


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


CP = "cp"
CP_SYNC = "cp + sync (extra)"


def copy_baselines(src: Path, dst: Path) -> dict[str, list[str]]:
    """`cp` (the physical floor) and `cp` + `sync` (the floor for a durable write)."""
    return {
        CP: ["cp", str(src), str(dst)],
        CP_SYNC: ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(src), str(dst)],
    }


def reset_output(*paths: Path) -> Callable[[], None]:
    """A callable that deletes paths, then flushes dirty pages so runs do not share writeback."""

    def reset() -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        os.sync()

    return reset


def run_and_check(name: str, argv: list[str], check: list[str], ckpt: Checkpoint) -> None:
    """Run a ckpt command, then the check command on its output; exit 1 if either fails."""
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(f"FAIL: `{name}` exited {run.returncode} on {ckpt.path}:\n{run.stderr}")
        sys.exit(1)
    chk = subprocess.run(check, capture_output=True, text=True, check=False)
    print(f"check `{name}` on {ckpt.label}: {(chk.stdout or chk.stderr).strip()}", flush=True)
    if chk.returncode != 0:
        print(f"FAIL: `{name}` output is wrong:\n{chk.stderr[-2000:]}")
        sys.exit(1)


def common_parser(doc: str, runs: int, quick_size_gb: float) -> argparse.ArgumentParser:
    """The options every size-based benchmark takes (a script may add its own)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.5, help="size of the smaller file (GB)")
    ap.add_argument("--runs", type=int, default=runs, help="timed runs per command (after 1 warm)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--json-out", type=Path, default=None, help="also write results as JSON")
    ap.add_argument("--seed", type=int, default=0, help="seed for the tensor values")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {quick_size_gb} GB files")
    return ap


def parse_common(
    ap: argparse.ArgumentParser, argv: list[str] | None, quick_size_gb: float
) -> argparse.Namespace:
    """Parse, apply --quick and check --runs."""
    args = ap.parse_args(argv)
    if args.quick:
        args.size_gb = quick_size_gb
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def run_in_workdir(
    prefix: str, args: argparse.Namespace, run: Callable[[argparse.Namespace, Path], None]
) -> int:
    """Run a benchmark in a fresh work folder, removed afterwards unless --keep; returns 0 even
    when a target fails (only setup errors exit non-zero)."""
    workdir = make_workdir(prefix, args.workdir)
    try:
        run(args, workdir)
    finally:
        if args.keep:
            print(f"kept checkpoints in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


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
