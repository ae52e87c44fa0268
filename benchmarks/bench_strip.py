"""Benchmark `ckpt strip-module` against `cp` and the naive torch.load/torch.save script.

Builds two seeded DataParallel-style state_dicts (every key starts with `module.`; SIZE and
2x SIZE), checks once that `ckpt strip-module` writes the stripped keys with unchanged tensor
bytes, then times each command in a fresh subprocess: 1 warm-up run, then N timed runs, the
output removed and `sync` run (untimed) before every run; records wall time and the child's
own peak RSS via os.wait4.
Prints a Markdown table and PASS/FAIL lines; exits 0 even when a target fails.

The parent process never imports torch (see _common.py): builds and checks run in subprocesses.

    python benchmarks/bench_strip.py [--size-gb 1.5] [--runs 3] [--workdir DIR] [--keep]
                                     [--json-out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import (
    CP,
    CP_SYNC,
    LARGE_NUMEL,
    Checkpoint,
    Checks,
    Result,
    build_checkpoint,
    check_free_space,
    ckpt_executable,
    common_parser,
    copy_baselines,
    find,
    measure,
    num_large_for,
    parse_common,
    print_checks,
    print_durable_floor,
    reset_output,
    results_table,
    run_and_check,
    run_in_workdir,
    versus,
    write_json,
)

TOOL = "bench_strip"
PREFIX = "module."
QUICK_SIZE_GB = 0.15

TARGET_VS_DURABLE = 1.2  # the durable copy: what an fsyncing writer cannot beat
TARGET_RSS_MB = 100.0
TARGET_FLAT_RATIO = 1.2
TARGET_FLAT_SLACK_MB = 5.0

NAIVE = "naive torch.load/save"
STRIP = "ckpt strip-module"
STRIP_NO_VERIFY = "ckpt strip-module --no-verify"

NAIVE_CODE = (
    "import sys, torch; sd = torch.load(sys.argv[1], weights_only=True); "
    "sd = {k.removeprefix('module.'): v for k, v in sd.items()}; torch.save(sd, sys.argv[2])"
)

CHECK_CODE = """
import sys, torch
src, dst, prefix = sys.argv[1:4]
a = torch.load(src, mmap=True, weights_only=True)
b = torch.load(dst, mmap=True, weights_only=True)
want = [k.removeprefix(prefix) for k in a]
problems = []
if not all(k.startswith(prefix) for k in a):
    problems.append("input has keys without the prefix")
if list(b) != want:
    problems.append(f"keys differ: got {list(b)[:3]}..., want {want[:3]}...")
else:
    for k in (next(iter(a)), next(reversed(a))):
        x, y = a[k], b[k.removeprefix(prefix)]
        same = x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride()
        raw = [t.reshape(-1).view(torch.uint8) for t in (x, y)]
        if not (same and torch.equal(*raw)):
            problems.append(f"tensor {k} differs")
print("; ".join(problems) if problems else f"ok: {len(b)} keys, first/last tensor bytes equal")
sys.exit(1 if problems else 0)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = common_parser(__doc__, runs=3, quick_size_gb=QUICK_SIZE_GB)
    return parse_common(ap, argv, QUICK_SIZE_GB)


def output_path(ckpt: Checkpoint) -> Path:
    """Where every measured command writes its copy of ckpt."""
    return ckpt.path.with_name(ckpt.path.stem + ".out.pt")


def commands(ckpt_exe: str, src: Path, dst: Path) -> dict[str, list[str]]:
    """The measured commands, by display name; each writes dst."""
    strip = [ckpt_exe, "strip-module", str(src), "-o", str(dst), "--force"]
    return {
        **copy_baselines(src, dst),
        NAIVE: [sys.executable, "-c", NAIVE_CODE, str(src), str(dst)],
        STRIP: strip,
        STRIP_NO_VERIFY: [*strip, "--no-verify"],
    }


def verify_output(ckpt_exe: str, ckpt: Checkpoint) -> None:
    """Exit 1 unless both strip-module variants write stripped keys with the same tensor bytes."""
    dst = output_path(ckpt)
    argv = commands(ckpt_exe, ckpt.path, dst)
    for name in (STRIP, STRIP_NO_VERIFY):
        dst.unlink(missing_ok=True)
        check = [sys.executable, "-c", CHECK_CODE, str(ckpt.path), str(dst), PREFIX]
        run_and_check(name, argv[name], check, ckpt)
    dst.unlink(missing_ok=True)


def markdown_table(results: list[Result]) -> str:
    """Results as a Markdown table, with time ratios against cp and cp + sync on the same file."""
    ratios = {"vs cp": versus(results, CP), "vs cp + sync": versus(results, CP_SYNC)}
    return results_table(results, "size", ratios, digits=3)


def check_targets(results: list[Result], small: str, large: str) -> Checks:
    """Evaluate the performance targets."""
    checks = Checks()
    for label in (small, large):
        checks.within(
            f"{STRIP} (verify on) within {TARGET_VS_DURABLE}x of cp + sync on {label}",
            find(results, STRIP, label),
            find(results, CP_SYNC, label),
            TARGET_VS_DURABLE,
        )
    strip_small, strip_large = find(results, STRIP, small), find(results, STRIP, large)
    for r in (strip_small, strip_large):
        checks.under_mb(r, TARGET_RSS_MB)
    checks.flat(strip_small, strip_large, TARGET_FLAT_RATIO, TARGET_FLAT_SLACK_MB)
    return checks


def make_checkpoints(size_gb: float, workdir: Path) -> list[Checkpoint]:
    """The SIZE and 2x SIZE checkpoint descriptions (not yet built)."""
    ckpts = []
    for factor in (1, 2):
        gb = size_gb * factor
        path = workdir / f"dp_{gb:g}gb.pt"
        ckpts.append(Checkpoint(f"{gb:g} GB", path, num_large_for(size_gb) * factor, 0, PREFIX))
    return ckpts


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Build the two checkpoints, verify, measure, report."""
    ckpt_exe = ckpt_executable(TOOL)
    ckpts = make_checkpoints(args.size_gb, workdir)
    # Inputs, plus one output and the writer's temp file for the larger one.
    check_free_space(TOOL, workdir, 2 * sum(c.num_large for c in ckpts) * LARGE_NUMEL * 4)
    for c in ckpts:
        build_checkpoint(c, args.seed)
        verify_output(ckpt_exe, c)
    results = []
    for c in ckpts:
        print(f"measuring {c.label} (1 warm + {args.runs} timed runs each)", flush=True)
        dst = output_path(c)
        for name, argv in commands(ckpt_exe, c.path, dst).items():
            results.append(measure(TOOL, name, argv, c, args.runs, before_each=reset_output(dst)))
        dst.unlink(missing_ok=True)
    checks = check_targets(results, ckpts[0].label, ckpts[1].label)
    print()
    print(markdown_table(results))
    print()
    print_checks(checks)
    labels = [c.label for c in ckpts]
    print_durable_floor(results, labels, CP, CP_SYNC, (STRIP, STRIP_NO_VERIFY))
    if args.json_out is not None:
        write_json(args.json_out, args, ckpts, results, checks)
        print(f"\nwrote {args.json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    return run_in_workdir("bench_strip_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
