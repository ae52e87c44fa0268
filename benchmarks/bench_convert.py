"""Benchmark `ckpt convert IN -o OUT.safetensors` (and `--dtype fp16`) and `ckpt cast --dtype fp16`
against `cp`, the durable copy (`cp` + `sync`) and the naive torch.load + save_file script.

Builds two seeded torch-zip state_dicts (SIZE and 2x SIZE: many large fp32 tensors plus small
BatchNorm-like ones with int64 counters), checks once per file, in a torch subprocess, that every
ckpt variant writes a file that the owning loader (`safetensors.torch.load_file`, or `torch.load`
for the cast's .pth) reads back with every key and bitwise-correct values (the input's bytes;
`t.to(float16)` for floating tensors with fp16, integers unchanged), then times each command in
a fresh subprocess:
1 warm-up run, then N timed runs, the output removed and `sync` run (untimed) before every run;
records wall time and the child's own peak RSS via os.wait4. Prints a Markdown table and
PASS/FAIL lines; when a ckpt time target fails it profiles that command once with cProfile on
the smaller file and prints the top costs. Exits 0 even when a target fails.

The parent process never imports torch (see _common.py): builds and checks run in subprocesses.

    python benchmarks/bench_convert.py [--size-gb 1.5] [--runs 3] [--workdir DIR] [--keep]
                                       [--json-out PATH] [--quick] [--no-profile]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
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

TOOL = "bench_convert"
QUICK_SIZE_GB = 0.15

TARGET_VS_DURABLE = 1.2  # the durable copy (cp + sync): what an fsyncing writer cannot beat
TARGET_CAST_VS_DURABLE = 1.6
TARGET_VS_NAIVE = 4.0
TARGET_RSS_MB = 100.0
TARGET_CAST_RSS_MB = 200.0
TARGET_FLAT_RATIO = 1.2
TARGET_FLAT_SLACK_MB = 5.0
PROFILE_TOP = 12

NAIVE = "naive torch.load + save_file"
CONVERT = "ckpt convert"
CONVERT_FP16 = "ckpt convert --dtype fp16"
CAST_FP16 = "ckpt cast --dtype fp16"
CKPT_COMMANDS = (CONVERT, CONVERT_FP16, CAST_FP16)

NAIVE_CODE = (
    "import sys, torch; from safetensors.torch import save_file; "
    "sd = torch.load(sys.argv[1], weights_only=True); "
    "save_file(sd, sys.argv[2], metadata={'format': 'pt'})"
)

CHECK_CODE = """
import sys, torch
from safetensors import safe_open
from safetensors.torch import load_file
src, dst, dtype = sys.argv[1:4]
a = torch.load(src, mmap=True, weights_only=True)
problems = []
if dst.endswith(".safetensors"):
    b = load_file(dst)  # safetensors' own loader
    with safe_open(dst, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "pt":
        problems.append(f"__metadata__ format is {meta.get('format')!r}, not 'pt'")
else:
    b = torch.load(dst, weights_only=True)  # torch's own loader
if sorted(b) != sorted(a):
    problems.append(f"keys differ: {len(b)} read back, {len(a)} in the input")
else:
    for k, x in a.items():
        want = x.to(getattr(torch, dtype)) if dtype != "none" and x.is_floating_point() else x
        y = b[k]
        raw = [t.contiguous().reshape(-1).view(torch.uint8) for t in (want, y)]
        if want.dtype != y.dtype or want.shape != y.shape or not torch.equal(*raw):
            problems.append(f"tensor {k} differs ({y.dtype} {tuple(y.shape)})")
            break
print("; ".join(problems) if problems else f"ok: {len(b)} tensors, all bytes equal")
sys.exit(1 if problems else 0)
"""

PROFILE_CODE = """
import pstats, sys
stats = pstats.Stats(sys.argv[1])
stats.sort_stats("tottime").print_stats(int(sys.argv[2]))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = common_parser(__doc__, runs=3, quick_size_gb=QUICK_SIZE_GB)
    ap.add_argument(
        "--no-profile", action="store_true", help="do not profile ckpt when it misses a target"
    )
    return parse_common(ap, argv, QUICK_SIZE_GB)


def output_path(ckpt: Checkpoint) -> Path:
    """Where every measured command writes its copy of ckpt."""
    return ckpt.path.with_name(ckpt.path.stem + ".out.safetensors")


def commands(ckpt_exe: str, src: Path, dst: Path) -> dict[str, list[str]]:
    """The measured commands, by display name; each writes dst."""
    convert = [ckpt_exe, "convert", str(src), "-o", str(dst), "--force"]
    return {
        **copy_baselines(src, dst),
        NAIVE: [sys.executable, "-c", NAIVE_CODE, str(src), str(dst)],
        CONVERT: convert,
        CONVERT_FP16: [*convert, "--dtype", "fp16"],
        CAST_FP16: [ckpt_exe, "cast", str(src), "-t", "fp16", "-o", str(cast_path(dst)), "--force"],
    }


def cast_path(dst: Path) -> Path:
    """Where `ckpt cast` writes: a torch zip file beside dst."""
    return dst.with_suffix(".pth")


def verify_output(ckpt_exe: str, ckpt: Checkpoint) -> None:
    """Exit 1 unless every ckpt variant writes what the owning loader reads back right."""
    dst = output_path(ckpt)
    argv = commands(ckpt_exe, ckpt.path, dst)
    for name, dtype, out in (
        (CONVERT, "none", dst),
        (CONVERT_FP16, "float16", dst),
        (CAST_FP16, "float16", cast_path(dst)),
    ):
        reset_output(dst, cast_path(dst))()
        check = [sys.executable, "-c", CHECK_CODE, str(ckpt.path), str(out), dtype]
        run_and_check(name, argv[name], check, ckpt)
    reset_output(dst, cast_path(dst))()


def markdown_table(results: list[Result]) -> str:
    """Results as a Markdown table, with time ratios against cp, cp + sync and the naive script."""
    naive = versus(results, NAIVE)
    ratios: dict[str, Callable[[Result], float | None]] = {
        "vs cp": versus(results, CP),
        "vs cp + sync": versus(results, CP_SYNC),
        "naive / this": lambda r: 1 / naive(r),
    }
    return results_table(results, "size", ratios, digits=3)


def check_targets(results: list[Result], labels: list[str]) -> Checks:
    """Evaluate the performance targets (each names the command it is about, for profiling)."""
    checks = Checks()
    for label in labels:
        durable = find(results, CP_SYNC, label)
        conv = find(results, CONVERT, label)
        checks.within(
            f"{CONVERT} within {TARGET_VS_DURABLE}x of cp + sync on {label}",
            conv,
            durable,
            TARGET_VS_DURABLE,
            command=CONVERT,
        )
        naive = find(results, NAIVE, label).median_s
        checks.add(
            f"{CONVERT} >= {TARGET_VS_NAIVE}x faster than the naive script on {label}",
            naive / conv.median_s >= TARGET_VS_NAIVE,
            f"{naive / conv.median_s:.2f}x",
            command=CONVERT,
        )
        for name in (CONVERT_FP16, CAST_FP16):
            checks.within(
                f"{name} within {TARGET_CAST_VS_DURABLE}x of cp + sync on {label}",
                find(results, name, label),
                durable,
                TARGET_CAST_VS_DURABLE,
                command=name,
            )
    small, large = labels
    for name, limit in (
        (CONVERT, TARGET_RSS_MB),
        (CONVERT_FP16, TARGET_CAST_RSS_MB),
        (CAST_FP16, TARGET_CAST_RSS_MB),
    ):
        rs, rl = find(results, name, small), find(results, name, large)
        checks.under_mb(rs, limit)
        checks.flat(rs, rl, TARGET_FLAT_RATIO, TARGET_FLAT_SLACK_MB)
    return checks


def profile(argv: list[str], dst: Path) -> str:
    """Run one ckpt command under cProfile (main thread only) and return its top costs."""
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "ckpt.prof"
        reset_output(dst, cast_path(dst))()
        run = subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "ckpt_tool", *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            return f"profiled run exited {run.returncode}: {run.stderr[-500:]}"
        out = subprocess.run(
            [sys.executable, "-c", PROFILE_CODE, str(prof), str(PROFILE_TOP)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    reset_output(dst, cast_path(dst))()
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if "function calls" in ln), 0)
    return "\n".join(ln for ln in lines[start:] if ln.strip())


def make_checkpoints(size_gb: float, workdir: Path) -> list[Checkpoint]:
    """The SIZE and 2x SIZE checkpoint descriptions (not yet built)."""
    ckpts = []
    for factor in (1, 2):
        gb = size_gb * factor
        path = workdir / f"model_{gb:g}gb.pth"
        ckpts.append(Checkpoint(f"{gb:g} GB", path, num_large_for(size_gb) * factor))
    return ckpts


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Build the two checkpoints, verify, measure, report, profile misses."""
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
            reset = reset_output(dst, cast_path(dst))
            results.append(measure(TOOL, name, argv, c, args.runs, before_each=reset))
        reset_output(dst, cast_path(dst))()
    labels = [c.label for c in ckpts]
    checks = check_targets(results, labels)
    print()
    print(markdown_table(results))
    print()
    print_checks(checks)
    print_durable_floor(results, labels, CP, CP_SYNC, CKPT_COMMANDS)
    profiles: dict[str, str] = {}
    missed = {str(c["command"]) for c in checks if not c["passed"] and c["command"]}
    if missed and not args.no_profile:
        dst = output_path(ckpts[0])
        for name in (n for n in CKPT_COMMANDS if n in missed):
            argv = commands(ckpt_exe, ckpts[0].path, dst)[name]
            print(
                f"\nprofile of `{name}` on {ckpts[0].label} (cProfile, main thread, top "
                f"{PROFILE_TOP} by own time):"
            )
            profiles[name] = profile(argv, dst)
            print(profiles[name])
    if args.json_out is not None:
        write_json(args.json_out, args, ckpts, results, checks, profiles=profiles)
        print(f"\nwrote {args.json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    return run_in_workdir("bench_convert_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
