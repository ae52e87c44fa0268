"""Time `ckpt transplant` resnet18 -> resnet34 against its floor: importing torch and
torchvision, and a hand-written script doing the same work (build resnet34, copy every
resnet18 weight whose key and shape match, load_state_dict, torch.save, fsync). Each command
runs in a fresh subprocess: 1 warm-up run, then `--runs` timed runs; median wall time and
peak RSS (os.wait4). Exits 0 even when the target fails.

    python benchmarks/bench_transplant.py [--runs 3] [--num-classes 1000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Checkpoint, against_hand_written, ckpt_executable, reset_output

TOOL = "bench_transplant"
TARGET = 1.1
FLOOR = "import torch, torchvision (floor)"
HAND = "hand-written script"
TRANSPLANT = "ckpt transplant"

HAND_CODE = """
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
        build = (
            "import torch, torchvision; torch.manual_seed(0); "
            f"torch.save(torchvision.models.resnet18().state_dict(), {str(src)!r})"
        )
        subprocess.run([sys.executable, "-c", build], check=True)
        commands = {
            FLOOR: [sys.executable, "-c", "import torch, torchvision"],
            HAND: [sys.executable, "-c", HAND_CODE, str(src), str(out), str(a.num_classes)],
            TRANSPLANT: [
                ckpt_executable(TOOL), "transplant", str(src), "--into", "resnet34",
                "--num-classes", str(a.num_classes), "-o", str(out), "--force",
            ],
        }  # fmt: skip
        ckpt = Checkpoint(f"resnet18 -> resnet34 ({a.num_classes} classes)", src, 0)
        against_hand_written(
            TOOL, commands, ckpt, a.runs, TRANSPLANT, HAND, TARGET, before_each=reset_output(out)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
