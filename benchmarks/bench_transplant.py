"""Time `ckpt transplant` resnet18 -> resnet34 against its floor: importing torch and
torchvision, and a hand-written script doing the same work (build resnet34, copy every
resnet18 weight whose key and shape match, load_state_dict, torch.save, fsync). Each command
runs in a fresh subprocess, `--runs` times; median wall time and peak RSS (os.wait4).

    python benchmarks/bench_transplant.py [--runs 3] [--num-classes 1000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import run_once

TARGET = 1.1

HAND = """
import os, sys, torch, torchvision
src, dst, classes = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = torchvision.models.resnet34(num_classes=classes)
own = model.state_dict()
pre = torch.load(src, weights_only=True)
copied = {k: v for k, v in pre.items() if k in own and own[k].shape == v.shape}
own.update(copied)
model.load_state_dict(own)
torch.save(model.state_dict(), dst)
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
print(len(copied), "of", len(own))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=1000)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_transplant_"))
    try:
        src, out = work / "resnet18.pth", work / "out.pth"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import torch, torchvision; torch.manual_seed(0); "
                f"torch.save(torchvision.models.resnet18().state_dict(), {str(src)!r})",
            ],
            check=True,
        )
        ckpt_bin = str(Path(sys.executable).parent / "ckpt")
        commands = {
            "import torch, torchvision (floor)": [
                sys.executable,
                "-c",
                "import torch, torchvision",
            ],
            "hand-written script": [
                sys.executable, "-c", HAND, str(src), str(out), str(a.num_classes)
            ],
            "ckpt transplant": [
                ckpt_bin, "transplant", str(src), "--into", "resnet34",
                "--num-classes", str(a.num_classes), "-o", str(out), "--force",
            ],
        }  # fmt: skip
        print(f"resnet18 -> resnet34 ({a.num_classes} classes), median of {a.runs} runs")
        print("| command | median wall s | peak RSS MB |\n|---|---:|---:|")
        medians = {}
        for name, argv in commands.items():
            walls, rss = [], []
            for _ in range(a.runs):
                out.unlink(missing_ok=True)
                w, r = run_once("bench_transplant", argv)
                walls.append(w)
                rss.append(r)
            walls.sort()
            medians[name] = walls[len(walls) // 2]
            print(f"| {name} | {medians[name]:.2f} | {max(rss) * 1024 / 1e6:.0f} |", flush=True)
        ratio = medians["ckpt transplant"] / medians["hand-written script"]
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(
            f"{verdict}: ckpt transplant within {TARGET}x of the hand-written script ({ratio:.2f}x)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
