"""Time `ckpt smoke-train` against its floor: importing torch+torchvision, and a plain
hand-written training loop doing the same steps. Each command runs in a fresh subprocess:
1 warm-up run, then `--runs` timed runs; median wall time and peak RSS (os.wait4). Exits 0
even when the target fails.

    python benchmarks/bench_smoke_train.py [--runs 3] [--size 64] [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Checkpoint, against_hand_written, ckpt_executable

TOOL = "bench_smoke_train"
TARGET = 1.1
FLOOR = "import torch, torchvision"
LOOP = "hand-written loop"
SMOKE = "ckpt smoke-train"

LOOP_CODE = """
import torch, torchvision
torch.manual_seed(0)
m = torchvision.models.resnet34(num_classes=1000)
m.load_state_dict(torch.load({path!r}, weights_only=True))
x = torch.randn({batch}, 3, {size}, {size}); y = torch.randint(0, 1000, ({batch},))
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
for _ in range({steps}):
    opt.zero_grad(); loss = torch.nn.functional.cross_entropy(m(x), y); loss.backward(); opt.step()
"""


def main() -> None:
    """Build a resnet34 checkpoint, then time the three commands."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="image size (square)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_smoke_"))
    try:
        path = work / "resnet34.pth"
        build = (
            "import torch, torchvision; torch.manual_seed(0); "
            f"torch.save(torchvision.models.resnet34().state_dict(), {str(path)!r})"
        )
        subprocess.run([sys.executable, "-c", build], check=True)
        loop = LOOP_CODE.format(path=str(path), batch=a.batch, size=a.size, steps=a.steps)
        commands = {
            FLOOR: [sys.executable, "-c", "import torch, torchvision"],
            LOOP: [sys.executable, "-c", loop],
            SMOKE: [
                ckpt_executable(TOOL), "smoke-train", str(path), "--arch", "resnet34",
                "--input-shape", f"3,{a.size},{a.size}", "--steps", str(a.steps),
                "--batch-size", str(a.batch),
            ],
        }  # fmt: skip
        ckpt = Checkpoint(
            f"resnet34, batch {a.batch}, 3x{a.size}x{a.size}, {a.steps} steps", path, 0
        )
        against_hand_written(TOOL, commands, ckpt, a.runs, SMOKE, LOOP, TARGET)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
