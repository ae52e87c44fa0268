"""Benchmark `ckpt convert DCP_FOLDER -o OUT.safetensors` (and `-o OUT.pth`): time and peak
memory against torch's own converter (`dcp_to_torch_save`, which loads every tensor at once)
and the durable copy of the same bytes (`cp -r` + `sync`).

Builds a seeded DCP folder (`--size-gb`, default 1.5 GB: many 10 MB fp32 tensors under
`model`, as `dcp.save({"model": sd})` writes them) in a torch subprocess, checks once that the
ckpt outputs equal the saved tensors bitwise, then times each command in a fresh subprocess
(1 warm-up, `--runs` timed runs, output removed and `sync` run before each) and records the
child's own peak RSS. Target: peak RSS under 300 MB. Exits 0 even when a target fails.

    python benchmarks/bench_dcp.py [--size-gb 1.5] [--runs 3] [--workdir DIR] [--keep]
                                   [--json-out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _common import (
    LARGE_NUMEL,
    Checkpoint,
    Checks,
    Result,
    check_free_space,
    ckpt_executable,
    common_parser,
    measure,
    num_large_for,
    parse_common,
    print_checks,
    results_table,
    run_in_workdir,
    versus,
    write_json,
)

TOOL = "bench_dcp"
QUICK_SIZE_GB = 0.15
TARGET_PEAK_MB = 300.0
FLOOR = "cp -r + sync (floor)"

BUILD_DCP = """
import sys, warnings, torch
import torch.distributed.checkpoint as dcp
warnings.simplefilter("ignore")
out, n, numel, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(seed)
sd = {f"layers.{i}.weight": torch.randn(numel, generator=g) for i in range(n)}
sd["norm.weight"] = torch.ones(512)
dcp.save({"model": sd}, checkpoint_id=out)
"""
CHECK = """
import sys, warnings, torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
warnings.simplefilter("ignore")
folder, st, pth = sys.argv[1], sys.argv[2], sys.argv[3]
got_st, got_pth = load_file(st), torch.load(pth, weights_only=True)
state = {"model": {k: torch.empty_like(v) for k, v in got_st.items()}}
dcp.load(state, checkpoint_id=folder)
for k, v in state["model"].items():
    assert torch.equal(v, got_st[k]) and torch.equal(v, got_pth[k]), k
print(len(state["model"]))
"""
TORCH_CONVERT = (
    "import sys, warnings; warnings.simplefilter('ignore'); "
    "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save; "
    "dcp_to_torch_save(sys.argv[1], sys.argv[2])"
)
IMPORT_TORCH = "import torch.distributed.checkpoint"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = common_parser(__doc__, runs=3, quick_size_gb=QUICK_SIZE_GB)
    return parse_common(ap, argv, QUICK_SIZE_GB)


def _reset(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    subprocess.run(["sync"], check=True)


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    """Build the DCP folder, check the outputs, measure, report."""
    ckpt_exe = ckpt_executable(TOOL)
    n = num_large_for(args.size_gb)
    folder = workdir / "dcp"
    check_free_space(TOOL, workdir, 4 * n * LARGE_NUMEL * 4)
    py = sys.executable
    subprocess.run(
        [py, "-c", BUILD_DCP, str(folder), str(n), str(LARGE_NUMEL), str(args.seed)], check=True
    )
    size = sum(p.stat().st_size for p in folder.iterdir())
    ckpt = Checkpoint(f"{size / 1e9:.2g} GB", folder, n)
    st, pth, torch_out, copy = (workdir / x for x in ("o.safetensors", "o.pth", "t.pt", "copy"))
    for out in (st, pth):
        subprocess.run([ckpt_exe, "convert", str(folder), "-o", str(out), "--force"], check=True)
    subprocess.run([py, "-c", CHECK, str(folder), str(st), str(pth)], check=True)
    commands = {
        "ckpt convert -o .safetensors": [ckpt_exe, "convert", str(folder), "-o", str(st)],
        "ckpt convert -o .pth": [ckpt_exe, "convert", str(folder), "-o", str(pth)],
        "dcp_to_torch_save (torch)": [py, "-c", TORCH_CONVERT, str(folder), str(torch_out)],
        "import torch (memory floor)": [py, "-c", IMPORT_TORCH],
        FLOOR: ["sh", "-c", f"cp -r {folder} {copy} && sync"],
    }
    results: list[Result] = []
    print(f"measuring {ckpt.label} DCP folder (1 warm + {args.runs} timed runs each)", flush=True)
    for name, argv in commands.items():
        results.append(
            measure(
                TOOL,
                name,
                argv,
                ckpt,
                args.runs,
                before_each=lambda: _reset(st, pth, torch_out, copy),
            )
        )
    print()
    print(results_table(results, "checkpoint", {"time vs durable copy": versus(results, FLOOR)}))
    checks = Checks()
    for r in results:
        if r.command.startswith("ckpt"):
            checks.under_mb(r, TARGET_PEAK_MB)
    print()
    print_checks(checks)
    if args.json_out is not None:
        write_json(args.json_out, args, [ckpt], results, checks)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    return run_in_workdir("bench_dcp_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
