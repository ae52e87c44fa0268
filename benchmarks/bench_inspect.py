"""Benchmark `ckpt inspect` against torch.load on large synthetic torch zip checkpoints.

Builds two seeded state_dicts (SIZE and 2x SIZE), warms the page cache with one untimed run of
each command, then times N runs, each in a fresh subprocess, and records the child's own peak
RSS via os.wait4. Prints a Markdown table and PASS/FAIL lines; exits 0 even when a target fails.

The parent process never imports torch: on Linux a child's ru_maxrss starts from the RSS
high-water mark of the process it was forked from, so a large parent would inflate every
measurement. The checkpoints are therefore built in a separate subprocess.

    python benchmarks/bench_inspect.py [--size-gb 1.5] [--runs 5] [--workdir DIR] [--keep]
                                       [--json-out PATH] [--quick] [--no-compile]

Before timing, ckpt's modules are byte-compiled as a wheel install does (see byte_compile).
"""

from __future__ import annotations

import argparse
import json
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

TOOL = "bench_inspect"
QUICK_SIZE_GB = 0.15

TARGET_INSPECT_S = 0.3
TARGET_INSPECT_MB = 100.0
TARGET_SPEEDUP_VS_MMAP = 10.0
TARGET_FLAT_RATIO = 1.5

TARGET_SCAN_VS_INSPECT = 1.5
TARGET_VS_MINIMAL = 2.5
TARGET_HELP_VS_TYPER = 3.0
MINIMAL = "minimal read (zip dir + data.pkl)"
INSPECT = "ckpt inspect --json"
SCAN = "ckpt scan --json"

TORCH_LOAD_CODE = (
    "import sys, torch; sd = torch.load(sys.argv[1], {mmap}weights_only=True); print(len(sd))"
)
# The floor: read the zip directory and unpickle data.pkl with stub classes, nothing else.
MINIMAL_READ_CODE = """
import pickle, sys, zipfile
class Stub(dict):  # stands for every class, OrderedDict included
    def __init__(self, *a, **k): pass
    def __setstate__(self, s): pass
class U(pickle.Unpickler):
    def find_class(self, m, n): return Stub
    def persistent_load(self, pid): return pid
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
    import io
    root = U(io.BytesIO(z.read(name))).load()
print(len(root))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = common_parser(__doc__, runs=5, quick_size_gb=QUICK_SIZE_GB)
    ap.add_argument(
        "--no-compile",
        action="store_true",
        help="time ckpt without byte-compiling its modules first",
    )
    return parse_common(ap, argv, QUICK_SIZE_GB)


def byte_compile() -> None:
    """Byte-compile ckpt_tool as `pip install` of a wheel does. An editable install under
    PYTHONDONTWRITEBYTECODE=1 (this project's machines) never caches bytecode, so every run
    would compile each module from source, which installed tools (picklescan) do not pay."""
    where = "import ckpt_tool, os; print(os.path.dirname(ckpt_tool.__file__))"
    found = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, check=True
    )
    folder = found.stdout.strip()  # asked in a child: this parent stays small (see above)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder)], check=True)
    print(f"byte-compiled {folder} (as a wheel install does; --no-compile to skip)", flush=True)


def commands(ckpt_exe: str, path: Path) -> dict[str, list[str]]:
    """The measured commands, by display name."""
    py = sys.executable
    return {
        INSPECT: [ckpt_exe, "inspect", str(path), "--json"],
        SCAN: [ckpt_exe, "scan", str(path), "--json"],
        "picklescan": [str(Path(ckpt_exe).with_name("picklescan")), "-p", str(path)],
        MINIMAL: [py, "-c", MINIMAL_READ_CODE, str(path)],
        "torch.load(mmap=True)": [py, "-c", TORCH_LOAD_CODE.format(mmap="mmap=True, "), str(path)],
        "torch.load": [py, "-c", TORCH_LOAD_CODE.format(mmap=""), str(path)],
        "import torch": [py, "-c", "import torch"],
        "ckpt --help": [ckpt_exe, "--help"],
        'python -c "import typer"': [py, "-c", "import typer"],
    }


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


def markdown_table(results: list[Result]) -> str:
    """Results as a Markdown table, with time ratios against ckpt inspect on the same file."""
    ratio = {"ratio vs ckpt inspect (time)": versus(results, INSPECT)}
    return results_table(results, "size", ratio, digits=3)


def check_targets(results: list[Result], small: str, large: str) -> Checks:
    """Evaluate the performance targets."""
    checks = Checks()
    ins = find(results, INSPECT, small)
    checks.add(
        f"ckpt inspect < {TARGET_INSPECT_S} s on {small}",
        ins.median_s < TARGET_INSPECT_S,
        f"{ins.median_s:.3f} s",
    )
    checks.add(
        f"ckpt inspect < {TARGET_INSPECT_MB:.0f} MB on {small}",
        ins.peak_mb < TARGET_INSPECT_MB,
        f"{ins.peak_mb:.0f} MB",
    )
    for label in (small, large):
        speedup = (
            find(results, "torch.load(mmap=True)", label).median_s
            / find(results, INSPECT, label).median_s
        )
        checks.add(
            f"ckpt inspect >= {TARGET_SPEEDUP_VS_MMAP:.0f}x faster than "
            f"torch.load(mmap=True) on {label}",
            speedup >= TARGET_SPEEDUP_VS_MMAP,
            f"{speedup:.1f}x",
        )
    for label in (small, large):
        scan, inspect = find(results, SCAN, label), find(results, INSPECT, label)
        checks.within(
            f"ckpt scan within {TARGET_SCAN_VS_INSPECT}x of ckpt inspect on {label}",
            scan,
            inspect,
            TARGET_SCAN_VS_INSPECT,
        )
        checks.within(
            f"ckpt scan faster than picklescan on {label}",
            scan,
            find(results, "picklescan", label),
            1.0,
        )
        checks.within(
            f"ckpt inspect within {TARGET_VS_MINIMAL}x of the minimal read on {label}",
            inspect,
            find(results, MINIMAL, label),
            TARGET_VS_MINIMAL,
        )
        checks.within(
            f"ckpt --help under {TARGET_HELP_VS_TYPER:g}x of 'import typer' ({label} run)",
            find(results, "ckpt --help", label),
            find(results, 'python -c "import typer"', label),
            TARGET_HELP_VS_TYPER,
        )
    flat = find(results, INSPECT, large).median_s / ins.median_s
    checks.add(
        f"ckpt inspect time on {large} within {TARGET_FLAT_RATIO}x of {small}",
        flat <= TARGET_FLAT_RATIO,
        f"{flat:.2f}x",
    )
    return checks


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Build the two checkpoints, verify, measure, report."""
    ckpt_exe = ckpt_executable(TOOL)
    ckpts = []
    for factor in (1, 2):
        gb = args.size_gb * factor
        ckpts.append(
            Checkpoint(
                f"{gb:g} GB", workdir / f"bench_{gb:g}gb.pt", num_large_for(args.size_gb) * factor
            )
        )
    check_free_space(TOOL, workdir, sum(c.num_large for c in ckpts) * LARGE_NUMEL * 4)
    if not args.no_compile:
        byte_compile()
    for c in ckpts:
        build_checkpoint(c, args.seed)
        verify_tensor_count(ckpt_exe, c)
    results = []
    for c in ckpts:
        print(f"measuring {c.label} (1 warm + {args.runs} timed runs each)", flush=True)
        for name, argv in commands(ckpt_exe, c.path).items():
            results.append(measure(TOOL, name, argv, c, args.runs))
    checks = check_targets(results, ckpts[0].label, ckpts[1].label)
    print()
    print(markdown_table(results))
    print()
    print_checks(checks)
    if args.json_out is not None:
        write_json(args.json_out, args, ckpts, results, checks)
        print(f"\nwrote {args.json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    return run_in_workdir("bench_inspect_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
