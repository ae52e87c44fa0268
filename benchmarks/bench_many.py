"""Benchmark ckpt on files of many small tensors (MoE-like: 10,000 and 100,000 tensors).

Builds two seeded state_dicts (`module.layers.L.experts.E.w`, shapes [8, 8] and [16]), then
times, each in a fresh subprocess (1 warm-up + N runs, peak RSS of the child via os.wait4):
  - the floor: a minimal Python read (zipfile directory + unpickling data.pkl with stub
    classes, nothing else), and torch.load(mmap=True) for reference;
  - `ckpt inspect --json`, `ckpt count --json`;
  - `ckpt strip-module -o OUT` beside a hand-written torch.load(mmap=True) + torch.save +
    fsync script doing the same rename, and `cp` + `sync` of the file.
Targets: inspect and count within 1.5x of the minimal read in time and memory, and time
linear in the tensor count. Prints a Markdown table and PASS/FAIL lines; exits 0 even when a
target fails.

    python benchmarks/bench_many.py [--tensors 100000] [--runs 3] [--workdir DIR] [--keep]
                                    [--json-out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    CP_SYNC,
    Checkpoint,
    Checks,
    Result,
    ckpt_executable,
    copy_baselines,
    find,
    measure,
    print_checks,
    reset_output,
    results_table,
    run_in_workdir,
    versus,
    write_json,
)

TOOL = "bench_many"
TARGET_VS_MINIMAL = 1.5
TARGET_LINEAR = 1.25  # time per tensor at 10x the tensors, at most this much above

BUILD_CODE = """
import sys, torch
path, n = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
sd = {}
for i in range(n):
    shape = (8, 8) if i % 3 else (16,)
    sd[f"module.layers.{i // 10}.experts.{i % 10}.w"] = torch.randn(*shape, generator=g)
torch.save(sd, path)
"""

# The floor: read the zip directory and unpickle data.pkl with stub classes, nothing else.
MINIMAL_READ_CODE = """
import io, pickle, sys, zipfile
class Stub(dict):  # stands for every class, OrderedDict included
    def __init__(self, *a, **k): pass
    def __setstate__(self, s): pass
class U(pickle.Unpickler):
    def find_class(self, m, n): return Stub
    def persistent_load(self, pid): return pid
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
    root = U(io.BytesIO(z.read(name))).load()
print(len(root))
"""
TORCH_MMAP_CODE = (
    "import sys, torch; sd = torch.load(sys.argv[1], mmap=True, weights_only=True); print(len(sd))"
)
HAND_STRIP_CODE = """
import os, sys, torch
sd = torch.load(sys.argv[1], mmap=True, weights_only=True)
torch.save({k.removeprefix("module."): v for k, v in sd.items()}, sys.argv[2])
fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
"""

MINIMAL = "minimal read (floor)"
TORCH_MMAP = "torch.load(mmap=True)"
INSPECT = "ckpt inspect --json"
COUNT = "ckpt count --json"
STRIP = "ckpt strip-module"
HAND_STRIP = "hand-written strip script"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=100_000, help="tensors in the larger file")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (after 1 warm)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--json-out", type=Path, default=None, help="also write results as JSON")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 / 20,000 tensors")
    args = ap.parse_args(argv)
    if args.quick:
        args.tensors = 20_000
    args.size_gb, args.seed = 0.0, 0  # for write_json's config block
    return args


def build(ckpt: Checkpoint, n: int) -> None:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BUILD_CODE, str(ckpt.path), str(n)], check=True)
    ckpt.size_bytes = ckpt.path.stat().st_size
    print(
        f"built {ckpt.path} ({n:,} tensors, {ckpt.size_bytes / 1e6:.1f} MB) in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )


def commands(ckpt_exe: str, src: Path, dst: Path) -> dict[str, list[str]]:
    """The measured commands, by display name (the writing ones write dst)."""
    py = sys.executable
    return {
        MINIMAL: [py, "-c", MINIMAL_READ_CODE, str(src)],
        TORCH_MMAP: [py, "-c", TORCH_MMAP_CODE, str(src)],
        INSPECT: [ckpt_exe, "inspect", str(src), "--json"],
        COUNT: [ckpt_exe, "count", str(src), "--json"],
        CP_SYNC: copy_baselines(src, dst)[CP_SYNC],
        HAND_STRIP: [py, "-c", HAND_STRIP_CODE, str(src), str(dst)],
        STRIP: [ckpt_exe, "strip-module", str(src), "-o", str(dst), "--force"],
    }


WRITES = (CP_SYNC, HAND_STRIP, STRIP)


def markdown_table(results: list[Result]) -> str:
    return results_table(results, "tensors", {"time vs minimal read": versus(results, MINIMAL)})


def check_targets(results: list[Result], small: str, large: str) -> Checks:
    checks = Checks()
    floor = find(results, MINIMAL, large)
    for cmd in (INSPECT, COUNT):
        r = find(results, cmd, large)
        checks.within(
            f"{cmd} within {TARGET_VS_MINIMAL}x of the minimal read on {large}",
            r,
            floor,
            TARGET_VS_MINIMAL,
        )
        mem = r.peak_mb / floor.peak_mb
        checks.add(
            f"{cmd} memory within {TARGET_VS_MINIMAL}x of the minimal read on {large}",
            mem <= TARGET_VS_MINIMAL,
            f"{r.peak_mb:.0f} MB vs {floor.peak_mb:.0f} MB, {mem:.2f}x",
        )
    n_small, n_large = (int(label.replace(",", "")) for label in (small, large))
    for cmd in (MINIMAL, INSPECT, COUNT, STRIP):
        a, b = find(results, cmd, small).median_s, find(results, cmd, large).median_s
        per = (b / n_large) / (a / n_small)
        checks.add(
            f"{cmd} linear: time per tensor at {large} within {TARGET_LINEAR}x of {small}",
            per <= TARGET_LINEAR,
            f"{a:.2f} s -> {b:.2f} s, {per:.2f}x per tensor",
        )
    hand, strip = find(results, HAND_STRIP, large), find(results, STRIP, large)
    checks.within(f"{STRIP} no slower than the hand-written script on {large}", strip, hand, 1.0)
    return checks


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    ckpt_exe = ckpt_executable(TOOL)
    sizes = (args.tensors // 10, args.tensors)
    ckpts = [Checkpoint(f"{n:,}", workdir / f"many_{n}.pt", 0) for n in sizes]
    for c, n in zip(ckpts, sizes, strict=True):
        build(c, n)
    results = []
    for c in ckpts:
        print(f"measuring {c.label} tensors (1 warm + {args.runs} timed runs each)", flush=True)
        dst = c.path.with_name(c.path.stem + ".out.pt")
        for name, argv in commands(ckpt_exe, c.path, dst).items():
            reset = reset_output(dst) if name in WRITES else None
            results.append(measure(TOOL, name, argv, c, args.runs, before_each=reset))
        dst.unlink(missing_ok=True)
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
    return run_in_workdir("bench_many_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
