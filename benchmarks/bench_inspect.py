"""Benchmark `ckpt inspect` against torch.load on large synthetic torch zip checkpoints.

Builds two seeded state_dicts (SIZE and 2x SIZE), warms the page cache with one untimed run of
each command, then times N runs, each in a fresh subprocess, and records the child's own peak
RSS via os.wait4. Prints a Markdown table and PASS/FAIL lines; exits 0 even when a target fails.

The parent process never imports torch: on Linux a child's ru_maxrss starts from the RSS
high-water mark of the process it was forked from, so a large parent would inflate every
measurement. The checkpoints are therefore built in a separate subprocess.

    python benchmarks/bench_inspect.py [--size-gb 1.5] [--runs 5] [--workdir DIR] [--keep]
                                       [--json-out PATH] [--quick]
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

LARGE_NUMEL = 2_500_000  # fp32 elements per large tensor (10 MB)
BN_CHANNELS = 512
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
QUICK_SIZE_GB = 0.15

TARGET_INSPECT_S = 0.3
TARGET_INSPECT_MB = 100.0
TARGET_SPEEDUP_VS_MMAP = 10.0
TARGET_FLAT_RATIO = 1.5

BUILD_CODE = """
import sys, torch
path, n, seed, numel, channels = sys.argv[1], *map(int, sys.argv[2:6])
g = torch.Generator().manual_seed(seed)
sd = {}
for i in range(n):
    sd[f"blocks.{i}.conv.weight"] = torch.empty(numel // 1000, 1000).uniform_(-1, 1, generator=g)
    p = f"blocks.{i}.bn."
    sd[p + "weight"] = torch.empty(channels).uniform_(0.5, 1.5, generator=g)
    sd[p + "bias"] = torch.empty(channels).uniform_(-0.1, 0.1, generator=g)
    sd[p + "running_mean"] = torch.randn(channels, generator=g)
    sd[p + "running_var"] = torch.rand(channels, generator=g) + 0.5
    sd[p + "num_batches_tracked"] = torch.tensor(1000 + i, dtype=torch.long)
torch.save(sd, path)
"""

TORCH_LOAD_CODE = (
    "import sys, torch; sd = torch.load(sys.argv[1], {mmap}weights_only=True); print(len(sd))"
)


@dataclass
class Checkpoint:
    """A generated checkpoint file and what it should contain."""

    label: str
    path: Path
    num_large: int
    size_bytes: int = 0

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.5, help="size of the smaller file (GB)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (after 1 warm)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--json-out", type=Path, default=None, help="also write results as JSON")
    ap.add_argument("--seed", type=int, default=0, help="seed for the tensor values")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SIZE_GB} GB files")
    args = ap.parse_args(argv)
    if args.quick:
        args.size_gb = QUICK_SIZE_GB
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def ckpt_executable() -> str:
    """The installed `ckpt` entry point next to this interpreter, else the one on PATH."""
    local = Path(sys.executable).parent / "ckpt"
    if local.exists():
        return str(local)
    found = shutil.which("ckpt")
    if found is None:
        sys.exit("bench_inspect: cannot find the `ckpt` entry point")
    return found


def num_large_for(size_gb: float) -> int:
    """Number of large fp32 tensors that add up to about size_gb."""
    return max(1, round(size_gb * 1e9 / (LARGE_NUMEL * 4)))


def build_checkpoint(ckpt: Checkpoint, seed: int) -> None:
    """Write the checkpoint in a separate process (keeps torch and its memory out of this one)."""
    args = [str(ckpt.path), str(ckpt.num_large), str(seed), str(LARGE_NUMEL), str(BN_CHANNELS)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD_CODE, *args], check=True)
    ckpt.size_bytes = ckpt.path.stat().st_size
    print(
        f"built {ckpt.path} ({ckpt.size_bytes / 1e9:.2f} GB, {ckpt.num_tensors} tensors) "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )


def check_free_space(workdir: Path, needed_bytes: float) -> None:
    """Exit early when the work folder cannot hold the checkpoints."""
    free = shutil.disk_usage(workdir).free
    if free < needed_bytes * 1.1:
        sys.exit(
            f"bench_inspect: {workdir} has {free / 1e9:.1f} GB free, "
            f"need about {needed_bytes / 1e9:.1f} GB"
        )


def commands(ckpt_exe: str, path: Path) -> dict[str, list[str]]:
    """The measured commands, by display name."""
    py = sys.executable
    return {
        "ckpt inspect --json": [ckpt_exe, "inspect", str(path), "--json"],
        "torch.load(mmap=True)": [py, "-c", TORCH_LOAD_CODE.format(mmap="mmap=True, "), str(path)],
        "torch.load": [py, "-c", TORCH_LOAD_CODE.format(mmap=""), str(path)],
        "import torch": [py, "-c", "import torch"],
    }


def run_once(argv: list[str]) -> tuple[float, int]:
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
                f"bench_inspect: {argv} exited {proc.returncode}:\n"
                f"{err.read().decode(errors='replace')[-2000:]}"
            )
    return wall, usage.ru_maxrss


def measure(name: str, argv: list[str], ckpt: Checkpoint, runs: int) -> Result:
    """One untimed warm-up run, then `runs` timed runs."""
    run_once(argv)
    result = Result(name, ckpt.label, ckpt.size_bytes)
    for _ in range(runs):
        wall, rss = run_once(argv)
        result.wall_s.append(wall)
        result.peak_rss_kb.append(rss)
    print(
        f"  {name:<24} {ckpt.label:>8}  median {result.median_s:.3f} s  "
        f"peak {result.peak_mb:.0f} MB",
        flush=True,
    )
    return result


def verify_tensor_count(ckpt_exe: str, ckpt: Checkpoint) -> None:
    """Exit 1 unless `ckpt inspect --json` reports the number of tensors that was written."""
    out = subprocess.run(
        [ckpt_exe, "inspect", str(ckpt.path), "--json"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        print(f"FAIL: ckpt inspect exited {out.returncode} on {ckpt.path}:\n{out.stderr}")
        sys.exit(1)
    got = json.loads(out.stdout)["num_tensors"]
    if got != ckpt.num_tensors:
        print(
            f"FAIL: ckpt inspect reports {got} tensors in {ckpt.path}, expected {ckpt.num_tensors}"
        )
        sys.exit(1)


def find(results: list[Result], command: str, label: str) -> Result:
    """The result for one command on one checkpoint."""
    return next(r for r in results if r.command == command and r.checkpoint == label)


def markdown_table(results: list[Result]) -> str:
    """Results as a Markdown table, with time ratios against ckpt inspect on the same file."""
    lines = [
        "| command | size | median wall s | peak RSS MB | ratio vs ckpt inspect (time) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        base = find(results, "ckpt inspect --json", r.checkpoint)
        ratio = r.median_s / base.median_s
        lines.append(
            f"| `{r.command}` | {r.checkpoint} | {r.median_s:.3f} | {r.peak_mb:.0f} "
            f"| {ratio:.1f}x |"
        )
    return "\n".join(lines)


def check_targets(results: list[Result], small: str, large: str) -> list[dict[str, object]]:
    """Evaluate the performance targets; one dict per check."""
    checks: list[dict[str, object]] = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": passed, "detail": detail})

    ins = find(results, "ckpt inspect --json", small)
    add(
        f"ckpt inspect < {TARGET_INSPECT_S} s on {small}",
        ins.median_s < TARGET_INSPECT_S,
        f"{ins.median_s:.3f} s",
    )
    add(
        f"ckpt inspect < {TARGET_INSPECT_MB:.0f} MB on {small}",
        ins.peak_mb < TARGET_INSPECT_MB,
        f"{ins.peak_mb:.0f} MB",
    )
    for label in (small, large):
        speedup = (
            find(results, "torch.load(mmap=True)", label).median_s
            / find(results, "ckpt inspect --json", label).median_s
        )
        add(
            f"ckpt inspect >= {TARGET_SPEEDUP_VS_MMAP:.0f}x faster than "
            f"torch.load(mmap=True) on {label}",
            speedup >= TARGET_SPEEDUP_VS_MMAP,
            f"{speedup:.1f}x",
        )
    flat = find(results, "ckpt inspect --json", large).median_s / ins.median_s
    add(
        f"ckpt inspect time on {large} within {TARGET_FLAT_RATIO}x of {small}",
        flat <= TARGET_FLAT_RATIO,
        f"{flat:.2f}x",
    )
    return checks


def write_json(
    path: Path,
    args: argparse.Namespace,
    ckpts: list[Checkpoint],
    results: list[Result],
    checks: list[dict[str, object]],
) -> None:
    """Write config, per-run raw numbers, summaries and checks as JSON."""
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
            }
            for c in ckpts
        ],
        "results": [
            asdict(r) | {"median_s": r.median_s, "peak_rss_mb": r.peak_mb} for r in results
        ],
        "checks": checks,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Build the two checkpoints, verify, measure, report."""
    ckpt_exe = ckpt_executable()
    ckpts = []
    for factor in (1, 2):
        gb = args.size_gb * factor
        ckpts.append(
            Checkpoint(
                f"{gb:g} GB", workdir / f"bench_{gb:g}gb.pt", num_large_for(args.size_gb) * factor
            )
        )
    check_free_space(workdir, sum(c.num_large for c in ckpts) * LARGE_NUMEL * 4)
    for c in ckpts:
        build_checkpoint(c, args.seed)
        verify_tensor_count(ckpt_exe, c)
    results = []
    for c in ckpts:
        print(f"measuring {c.label} (1 warm + {args.runs} timed runs each)", flush=True)
        for name, argv in commands(ckpt_exe, c.path).items():
            results.append(measure(name, argv, c, args.runs))
    checks = check_targets(results, ckpts[0].label, ckpts[1].label)
    print()
    print(markdown_table(results))
    print()
    for chk in checks:
        print(f"{'PASS' if chk['passed'] else 'FAIL'}: {chk['name']} ({chk['detail']})")
    if args.json_out is not None:
        write_json(args.json_out, args, ckpts, results, checks)
        print(f"\nwrote {args.json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    args = parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_inspect_", dir=args.workdir))
    try:
        run_benchmark(args, workdir)
    finally:
        if args.keep:
            print(f"kept checkpoints in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
