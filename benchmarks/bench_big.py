"""Benchmark ckpt on big models on one machine: an LLM-shaped Hugging Face folder (bf16,
5 safetensors shards + index, tied embeddings) and a DCP folder written by 2 gloo ranks.

Generated at benchmark time (seeded): a ~12 GB HF folder, a quarter-size one beside it (to
show memory does not grow with model size), and a ~3 GB DCP folder saved by FSDP2 on two
processes. Each command runs in a fresh subprocess (1 warm-up + N runs; peak RSS of the child
via os.wait4; outputs removed and `sync` run, untimed, before each run):
  inspect --json, count --json, diff (the folder against itself: every byte read twice),
  convert to one .safetensors, to new shards (--max-shard-size 2GB), to .pth,
  cast --dtype fp16 (a new model folder), strip-module --prefix model.
Floors in the same run: `cp -r` + `sync` of the same bytes (writing commands) and reading
them (`cat` to /dev/null: reading commands; twice for diff).
Targets: peak RSS under 300 MB and not growing with model size; writing commands within
1.3x of the durable copy. Prints a Markdown table and PASS/FAIL lines; exits 0 even when a
target fails.

    python benchmarks/bench_big.py [--size-gb 12] [--dcp-gb 3] [--runs 1] [--workdir DIR]
                                   [--keep] [--json-out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import (
    Checkpoint,
    Checks,
    Result,
    check_free_space,
    ckpt_executable,
    find,
    measure,
    print_checks,
    results_table,
    run_in_workdir,
    versus,
    write_json,
)

TOOL = "bench_big"
TARGET_RSS_MB = 300.0
TARGET_VS_COPY = 1.3
TARGET_FLAT_RATIO = 1.2
TARGET_FLAT_SLACK_MB = 10.0

HF_CODE = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
out, size_gb, seed, wide = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
h, ffn, vocab = (4096, 11008, 128256) if wide == "wide" else (2048, 5504, 64128)
per_layer = 4 * h * h + 3 * h * ffn + 2 * h
layers = max(1, round((size_gb * 1e9 / 2 - vocab * h) / per_layer))
g = torch.Generator().manual_seed(seed)
block = torch.randn(1 << 24, generator=g).bfloat16()  # values tiled from one random block
def fill(*shape):
    n = 1
    for d in shape:
        n *= d
    reps = -(-n // block.numel())
    return block.repeat(reps)[:n].roll(int(torch.randint(0, 1 << 20, (1,), generator=g)))\\
        .reshape(shape).clone()
names = [("model.embed_tokens.weight", (vocab, h))]
for i in range(layers):
    p = f"model.layers.{i}."
    names += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    names += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
    names += [(p + "mlp.gate_proj.weight", (ffn, h)), (p + "mlp.up_proj.weight", (ffn, h)),
              (p + "mlp.down_proj.weight", (h, ffn))]
names.append(("model.norm.weight", (h,)))
nbytes = lambda shape: 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
per_shard, shards, current, size = sum(nbytes(s) for _, s in names) / 5, [], [], 0
for name, shape in names:
    current.append((name, shape))
    size += nbytes(shape)
    if size >= per_shard and len(shards) < 4:
        shards.append(current); current, size = [], 0
shards.append(current)
out.mkdir(parents=True)
weight_map, total_size = {}, 0
for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {name: fill(*shape) for name, shape in shard}
    save_file(tensors, str(out / fname), metadata={"format": "pt"})
    total_size += sum(t.numel() * 2 for t in tensors.values())
    weight_map.update({name: fname for name in tensors})
    del tensors
index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
(out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
          "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": h // 128,
          "num_key_value_heads": h // 128, "vocab_size": vocab, "tie_word_embeddings": True,
          "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5}
(out / "config.json").write_text(json.dumps(config, indent=2))
print(len(names), "tensors", len(shards), "shards", layers, "layers")
"""

DCP_CODE = """
import os, sys, torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

def run(rank, world, path, layers, h, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.ModuleDict({"layers": torch.nn.ModuleList(
                torch.nn.Linear(h, h, bias=False, dtype=torch.bfloat16) for _ in range(layers))})
    with torch.device("meta"):
        net = Net()
    for layer in net.model["layers"]:
        fully_shard(layer, mesh=mesh)
    fully_shard(net, mesh=mesh)
    net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(rank)
    with torch.no_grad():
        for p in net.parameters():
            p.to_local().normal_(generator=g)
    dcp.save(net.state_dict(), checkpoint_id=path)
    dist.destroy_process_group()

if __name__ == "__main__":
    path, size_gb, port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    h = 4096 if size_gb >= 1 else 1024
    layers = max(2, round(size_gb * 1e9 / (2 * h * h)))
    mp.spawn(run, args=(2, path, layers, h, port), nprocs=2)
    print(layers, "layers of", h, "x", h)
"""

COPY = "cp -r + sync (floor)"
READ = "read the bytes (floor)"
READ_TWICE = "read the bytes twice (floor)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=12.0, help="size of the HF folder (GB)")
    ap.add_argument("--dcp-gb", type=float, default=3.0, help="size of the DCP folder (GB)")
    ap.add_argument("--runs", type=int, default=1, help="timed runs per command (after 1 warm)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--json-out", type=Path, default=None, help="also write results as JSON")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1.2 GB and 0.3 GB")
    args = ap.parse_args(argv)
    if args.quick:
        args.size_gb, args.dcp_gb = 1.2, 0.3
    args.seed = 0
    return args


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(label: str, path: Path, code: str, *args: str) -> Checkpoint:
    """Run a generator script (from a file: DCP's spawned ranks import their function)."""
    t0 = time.perf_counter()
    script = path.with_name(path.name + "_build.py")
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script), str(path), *args], check=True, capture_output=True, text=True
    )
    ckpt = Checkpoint(label, path, 0, _size(path))
    print(
        f"built {label}: {path} ({ckpt.size_bytes / 1e9:.2f} GB; {done.stdout.strip()}) in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return ckpt


def commands(exe: str, src: Path, out: Path, hf: bool) -> dict[str, tuple[list[str], Path | None]]:
    """Display name -> (argv, the output to remove before each run, if it writes)."""
    files = " ".join(f'"{p}"' for p in sorted(src.rglob("*")) if p.is_file())
    cmds: dict[str, tuple[list[str], Path | None]] = {
        COPY: (["sh", "-c", f'cp -r "{src}" "{out}" && sync'], out),
        READ: (["sh", "-c", f"cat {files} > /dev/null"], None),
        READ_TWICE: (["sh", "-c", f"cat {files} {files} > /dev/null"], None),
        "inspect --json": ([exe, "inspect", str(src), "--json"], None),
        "count --json": ([exe, "count", str(src), "--json"], None),
        "diff (same folder)": ([exe, "diff", str(src), str(src), "--json"], None),
        "convert -o one .safetensors": (
            [exe, "convert", str(src), "-o", str(out / "model.safetensors")],
            out,
        ),
        "convert --max-shard-size 2GB": (
            [
                exe,
                "convert",
                str(src),
                "-o",
                str(out / "model.safetensors"),
                "--max-shard-size",
                "2GB",
            ],
            out,
        ),
        "convert -o .pth": ([exe, "convert", str(src), "-o", str(out / "model.pth")], out),
        "cast --dtype fp16": (
            [
                exe,
                "cast",
                str(src),
                "-t",
                "fp16",
                "-o",
                str(out / "fp16" if hf else out / "fp16.safetensors"),
            ],
            out,
        ),
        "strip-module --prefix model.": (
            [
                exe,
                "strip-module",
                str(src),
                "--prefix",
                "model.",
                "-o",
                str(out / "stripped" if hf else out / "stripped.safetensors"),
            ],
            out,
        ),
    }
    return cmds


WRITES = (
    "convert -o one .safetensors",
    "convert --max-shard-size 2GB",
    "convert -o .pth",
    "cast --dtype fp16",
    "strip-module --prefix model.",
)
READS = ("inspect --json", "count --json", "diff (same folder)")


def reset(out: Path, makes_folder: bool) -> Callable[[], None]:
    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        if makes_folder:
            out.mkdir(parents=True)
        os.sync()

    return run


def markdown_table(results: list[Result]) -> str:
    def vs_floor(r: Result) -> float | None:
        if r.command not in WRITES + READS:
            return None
        floor = (
            COPY if r.command in WRITES else READ_TWICE if r.command.startswith("diff") else READ
        )
        return versus(results, floor)(r)

    return results_table(results, "checkpoint", {"vs its floor": vs_floor})


def check_targets(results: list[Result], label: str) -> Checks:
    """Memory and time targets on one checkpoint."""
    checks = Checks()
    floor = find(results, COPY, label)
    for cmd in READS + WRITES:
        r = find(results, cmd, label)
        checks.under_mb(r, TARGET_RSS_MB)
        if cmd in WRITES:
            checks.within(
                f"{cmd} within {TARGET_VS_COPY}x of cp -r + sync on {label}",
                r,
                floor,
                TARGET_VS_COPY,
            )
    return checks


def flat_checks(results: list[Result], big: str, small: str) -> Checks:
    """Peak memory does not grow with model size."""
    checks = Checks()
    for cmd in READS + WRITES:
        checks.flat(
            find(results, cmd, small),
            find(results, cmd, big),
            TARGET_FLAT_RATIO,
            TARGET_FLAT_SLACK_MB,
        )
    return checks


def run_benchmark(args: argparse.Namespace, workdir: Path) -> None:
    exe = ckpt_executable(TOOL)
    need = (args.size_gb * 1.25 + args.dcp_gb) * 2.2e9
    check_free_space(TOOL, workdir, need)
    wide = "wide" if args.size_gb >= 6 else "narrow"  # both folders: the same layer shapes
    big = build(
        f"HF {args.size_gb:g} GB", workdir / "hf_big", HF_CODE, str(args.size_gb), "0", wide
    )
    small = build(
        f"HF {args.size_gb / 4:g} GB",
        workdir / "hf_small",
        HF_CODE,
        str(args.size_gb / 4),
        "1",
        wide,
    )
    dcp = build(
        f"DCP {args.dcp_gb:g} GB (2 ranks)", workdir / "dcp", DCP_CODE, str(args.dcp_gb), "29517"
    )
    results = []
    for ckpt in (big, small, dcp):
        print(f"measuring {ckpt.label} (1 warm + {args.runs} timed runs each)", flush=True)
        out = workdir / "out"
        hf = ckpt is not dcp
        for name, (argv, target) in commands(exe, ckpt.path, out, hf).items():
            before = reset(out, makes_folder=name != COPY) if target is not None else None
            results.append(measure(TOOL, name, argv, ckpt, args.runs, before_each=before))
        shutil.rmtree(workdir / "out", ignore_errors=True)
    checks = [
        *check_targets(results, big.label),
        *check_targets(results, small.label),
        *check_targets(results, dcp.label),
        *flat_checks(results, big.label, small.label),
    ]
    print()
    print(markdown_table(results))
    print()
    print_checks(checks)
    if args.json_out is not None:
        write_json(args.json_out, args, [big, small, dcp], results, checks)
        print(f"\nwrote {args.json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 even when a target fails (only setup errors exit non-zero)."""
    return run_in_workdir("bench_big_", parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
