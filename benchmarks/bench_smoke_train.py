"""Time `ckpt smoke-train` against its floor: importing torch+torchvision, and a plain
hand-written training loop doing the same steps (same run, fresh subprocess each)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import run_once

LOOP = """
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
    """Build a resnet34 checkpoint, then time the three commands `--runs` times each."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="image size (square)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_smoke_"))
    ckpt = work / "resnet34.pth"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, torchvision; torch.manual_seed(0); "
            f"torch.save(torchvision.models.resnet34().state_dict(), {str(ckpt)!r})",
        ],
        check=True,
    )
    ckpt_bin = str(Path(sys.executable).parent / "ckpt")
    commands = {
        "import torch, torchvision": [sys.executable, "-c", "import torch, torchvision"],
        "hand-written loop": [
            sys.executable,
            "-c",
            LOOP.format(path=str(ckpt), batch=a.batch, size=a.size, steps=a.steps),
        ],
        "ckpt smoke-train": [
            ckpt_bin,
            "smoke-train",
            str(ckpt),
            "--arch",
            "resnet34",
            "--input-shape",
            f"3,{a.size},{a.size}",
            "--steps",
            str(a.steps),
            "--batch-size",
            str(a.batch),
        ],
    }
    print(
        f"resnet34, batch {a.batch}, 3x{a.size}x{a.size}, {a.steps} steps, median of {a.runs} runs"
    )
    print("| command | median wall s | peak RSS MB |\n|---|---:|---:|")
    for name, argv in commands.items():
        walls, rss = [], []
        for _ in range(a.runs):
            w, r = run_once("bench_smoke_train", argv)
            walls.append(w)
            rss.append(r)
        walls.sort()
        print(
            f"| {name} | {walls[len(walls) // 2]:.2f} | {max(rss) * 1024 / 1e6:.0f} |", flush=True
        )
    ckpt.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
