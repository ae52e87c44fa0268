"""Benchmark `ckpt inspect --stats` against the naive torch script on two file sizes.

Builds two seeded checkpoints (SIZE and 2x SIZE), checks once that ckpt's figures equal a
float64 reduction by torch, then times, each in a fresh subprocess (1 warm-up + N runs, peak
RSS of the child via os.wait4):
  - naive: torch.load(mmap=True), then per tensor min/max/mean/std/NaN/Inf in float64
    (what one writes by hand; its import of torch is part of the work it does);
  - `ckpt inspect FILE --stats --json`.
Targets: ckpt at least as fast as the naive script, under 200 MB, and flat in file size.
Prints a Markdown table and PASS/FAIL lines; exits 0 even when a target fails.

    python benchmarks/bench_stats.py [--size-gb 0.5] [--runs 3] [--workdir DIR] [--keep]
                                     [--json-out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from _common import (
    LARGE_NUMEL,
    Checkpoint,
    Checks,
    Result,
    build_checkpoint,
    check_free_space,
    ckpt_executable,
    common_parser,
    find,
    measure,
    num_large_for,
    parse_common,
    print_checks,
    results_table,
    run_in_workdir,
    versus,
    write_json,
)

TOOL = "bench_stats"
QUICK_SIZE_GB = 0.1
TARGET_RSS_MB = 200.0
TARGET_FLAT_RATIO = 1.2
TARGET_FLAT_SLACK_MB = 10.0

NAIVE = "naive torch script"
STATS = "ckpt inspect --stats --json"

NAIVE_CODE = """
import sys, torch
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
out = {}
for k, t in sd.items():
    x = t.double()
    f = x[torch.isfinite(x)]
    out[k] = (float(f.min()), float(f.max()), float(f.mean()),
              float(f.std()) if f.numel() > 1 else 0.0,
              int(torch.isnan(x).sum()), int(torch.isinf(x).sum()))
print(len(out))
"""

CHECK_CODE = """
import json, subprocess, sys, torch
exe, path = sys.argv[1:3]
doc = json.loads(subprocess.run([exe, "inspect", path, "--stats", "--json"],
                                capture_output=True, text=True, check=True).stdout)
sd = torch.load(path, mmap=True, weights_only=True)
bad = []
for t in doc["tensors"]:
    x = sd[t["key"]].double()
    s = t["stats"]
    std = float(x.std()) if x.numel() > 1 else 0.0
    want = (float(x.min()), float(x.max()), float(x.mean()), std)
    got = (s["min"], s["max"], s["mean"], s["std"])
    close = all(abs(g - w) <= 1e-9 * max(1.0, abs(w)) for g, w in zip(got[2:], want[2:]))
    if got[:2] != want[:2] or not close:
        bad.append(t["key"])
n = len(doc["tensors"])
print(f"wrong: {bad[:3]}" if bad else f"ok: {n} tensors equal torch's float64 figures")
sys.exit(1 if bad else 0)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = common_parser(__doc__, runs=3, quick_size_gb=QUICK_SIZE_GB)
    ap.set_defaults(size_gb=0.5)
    return parse_common(ap, argv, QUICK_SIZE_GB)


def commands(ckpt_exe: str, path: Path) -> dict[str, list[str]]:
    """The measured commands, by display name."""
    return {
        NAIVE: [sys.executable, "-c", NAIVE_CODE, str(path)],
        STATS: [ckpt_exe, "inspect", str(path), "--stats", "--json"],
    }


def markdown_table(results: list[Result]) -> str:
    """Results as a Markdown table, with time ratios against the naive script."""
    return results_table(results, "size", {"ratio vs naive": versus(results, NAIVE)}, digits=3)


def check_targets(results: list[Result], labels: list[str]) -> Checks:
    """Evaluate the targets."""
    checks = Checks()
    for label in labels:
        ours, naive = find(results, STATS, label), find(results, NAIVE, label)
        checks.within(
            f"inspect --stats at least as fast as the naive script on {label}", ours, naive, 1.0
        )
        checks.under_mb(ours, TARGET_RSS_MB)
    small, large = (find(results, STATS, label) for label in labels)
    checks.flat(small, large, TARGET_FLAT_RATIO, TARGET_FLAT_SLACK_MB)
    return checks


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Build, check, measure, report."""
    ckpt_exe = ckpt_executable(TOOL)
    ckpts = [
        Checkpoint(f"{gb:g} GB", workdir / f"stats_{gb:g}gb.pt", num_large_for(args.size_gb) * f)
        for f, gb in ((1, args.size_gb), (2, args.size_gb * 2))
    ]
    check_free_space(TOOL, workdir, sum(c.num_large for c in ckpts) * LARGE_NUMEL * 4)
    for c in ckpts:
        build_checkpoint(c, args.seed)
    chk = subprocess.run(
        [sys.executable, "-c", CHECK_CODE, ckpt_exe, str(ckpts[0].path)],
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"check on {ckpts[0].label}: {(chk.stdout or chk.stderr).strip()[-500:]}", flush=True)
    if chk.returncode != 0:
        sys.exit(1)
    results = []
    for c in ckpts:
        print(f"measuring {c.label} (1 warm + {args.runs} timed runs each)", flush=True)
        for name, argv in commands(ckpt_exe, c.path).items():
            results.append(measure(TOOL, name, argv, c, args.runs))
    labels = [c.label for c in ckpts]
    checks = check_targets(results, labels)
    print()
    print(markdown_table(results))
    print()
    print_checks(checks)
    if args.json_out is not None:
        write_json(args.json_out, args, ckpts, results, checks)
        print(f"\nwrote {args.json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    return run_in_workdir("bench_stats_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
