"""README.md's examples, rerun: every input made from seeds, every `$ ` line of a console block
run in order in one folder, and its output compared with the block, numbers and all.

    python docs/readme_examples.py            # check: exit 1 and a diff when README drifted
    python docs/readme_examples.py --update   # rewrite README.md's blocks with what ran
    python docs/readme_examples.py --keep DIR # leave the inputs and outputs in DIR

A line `...` in a block stands for any number of output lines (long outputs are shown in part);
`[exit N]` closes the output of a command that exits N. Commands run through bash with
`ckpt` on PATH, stdout and stderr merged as a terminal shows them, at 120 columns.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FIXTURES = REPO / "fixtures"
WIDTH = 120
_EXIT = re.compile(r"^\[exit (\d+)\]$")

# The inputs README's examples use besides copies of fixtures/, made from fixed seeds.
MAKE_INPUTS = r"""
import os, sys, torch
sys.path.insert(0, sys.argv[2])
from ckpt_tool.seed_models import ConvNet

folder = sys.argv[1]
os.chdir(folder)
torch.manual_seed(0)
base = ConvNet().state_dict()
torch.save(base, "base.pth")
g = torch.Generator().manual_seed(1)
tuned = {k: v.clone() for k, v in base.items()}
for k, v in tuned.items():  # fine-tuning moved layer2 and the head; layer1 was frozen
    if k.startswith(("layer2.", "fc.")) and v.is_floating_point():
        v += 0.01 * torch.randn(v.shape, generator=g)
torch.save(tuned, "finetuned.pth")
for epoch in (8, 9, 10):
    torch.manual_seed(epoch)
    torch.save(ConvNet().state_dict(), f"epoch{epoch}.pth")


class Payload:  # what a hostile file reaches; pickled by name, never called here
    def __reduce__(self):
        return (os.system, ("echo this would run on torch.load",))


torch.save({**base, "evil": Payload()}, "evil.pth")

# a detector-style checkpoint (backbone + head) and a training checkpoint to slim down
torch.save({("head." if k.startswith("fc.") else "backbone.") + k: v for k, v in base.items()},
           "detector.pth")
model = ConvNet()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.StepLR(opt, 10)
model(torch.randn(2, 1, 28, 28)).sum().backward()
opt.step()
sched.step()
torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": 3}, "train.ckpt")

# a tiny Llama folder (from a config: no download) and a PEFT LoRA adapter for it
import peft, timm, transformers
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
llama = transformers.LlamaForCausalLM(cfg)


def seeded(module, seed):  # values of our own, whatever the library's initialisation does
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))


seeded(llama, 2)
llama.save_pretrained("tiny-llama")
with open("tiny-llama/tokenizer_config.json", "w") as f:
    f.write('{"model_max_length": 64}\n')
lora_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
lora = peft.get_peft_model(llama, lora_cfg)
gen = torch.Generator().manual_seed(3)
with torch.no_grad():
    for name, p in lora.named_parameters():
        if "lora_" in name:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
lora.save_pretrained("tiny-lora")

# a two-block ViT trained at 224 pixels
vit = timm.create_model("vit_tiny_patch16_224", depth=2)
seeded(vit, 4)
torch.save(vit.state_dict(), "vit224.pth")
"""


@dataclass
class Example:
    """One `$ ` line of a console block and the output README shows for it."""

    command: str
    expected: list[str]
    exit_code: int
    start: int  # README line index of the command
    end: int  # index just past its output


def examples(lines: list[str]) -> list[Example]:
    """Every command in README's ```console blocks, in order."""
    out: list[Example] = []
    in_block = False
    current: Example | None = None
    for i, line in enumerate(lines):
        if line.startswith("```"):
            if in_block and current is not None:
                _close(current, i)
                out.append(current)
                current = None
            in_block = line.strip() == "```console"
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            if current is not None:
                _close(current, i)
                out.append(current)
            current = Example(line[2:], [], 0, i, i)
        elif current is not None:
            current.expected.append(line)
    return out


def _close(ex: Example, end: int) -> None:
    while ex.expected and not ex.expected[-1].strip():
        ex.expected.pop()
    if ex.expected and _EXIT.match(ex.expected[-1]):
        ex.exit_code = int(_EXIT.match(ex.expected[-1]).group(1))  # type: ignore[union-attr]
        ex.expected.pop()
    ex.end = end


def make_inputs(folder: Path) -> None:
    """Copies of fixtures/ plus the seeded files MAKE_INPUTS writes."""
    for p in FIXTURES.iterdir():
        if p.name in ("make_fixtures.py", "README.md"):
            continue
        dest = folder / p.name
        shutil.copytree(p, dest) if p.is_dir() else shutil.copy2(p, dest)
    subprocess.run([sys.executable, "-c", MAKE_INPUTS, str(folder), str(REPO)], check=True)


def run(command: str, folder: Path) -> tuple[list[str], int]:
    """A README command, as a user's terminal would run it (stdout and stderr interleaved)."""
    env = {
        **os.environ,
        "COLUMNS": str(WIDTH),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("CKPT_DEBUG", None)
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    lines = [line.rstrip() for line in proc.stdout.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines, proc.returncode


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line for line, where `...` stands for any number of lines."""
    parts: list[list[str]] = [[]]
    for line in expected:
        if line.strip() == "...":
            parts.append([])
        else:
            parts[-1].append(line.rstrip())
    if len(parts) == 1:
        return parts[0] == actual
    head, *middle, tail = parts
    if actual[: len(head)] != head or (tail and actual[len(actual) - len(tail) :] != tail):
        return False
    rest = actual[len(head) : len(actual) - len(tail)]
    for part in middle:
        for i in range(len(rest) - len(part) + 1):
            if rest[i : i + len(part)] == part:
                rest = rest[i + len(part) :]
                break
        else:
            if part:
                return False
    return True


def updated(expected: list[str], actual: list[str]) -> list[str]:
    """New README lines for an output: all of it, or the same head and tail around `...`."""
    if not any(line.strip() == "..." for line in expected):
        return actual
    cut = [i for i, line in enumerate(expected) if line.strip() == "..."]
    head, tail = cut[0], len(expected) - cut[-1] - 1
    return actual[:head] + ["..."] + (actual[len(actual) - tail :] if tail else [])


def check(folder: Path, update: bool = False) -> list[str]:
    """Run every example in folder; returns one report per mismatch (README rewritten if
    update)."""
    lines = README.read_text().splitlines()
    problems: list[str] = []
    replace: list[tuple[Example, list[str]]] = []
    for ex in examples(lines):
        actual, code = run(ex.command, folder)
        ok = matches(ex.expected, actual) and code == ex.exit_code
        if not ok:
            diff = "\n".join(
                difflib.unified_diff(ex.expected, actual, "README", "actual", lineterm="")
            )
            problems.append(f"$ {ex.command}\n(exit {code}, README says {ex.exit_code})\n{diff}")
            new = updated(ex.expected, actual) + ([f"[exit {code}]"] if code else [])
            replace.append((ex, new))
    if update and replace:
        for ex, new in sorted(replace, key=lambda r: -r[0].start):
            block_end = ex.end
            while block_end > ex.start + 1 and not lines[block_end - 1].strip():
                block_end -= 1
            gap = lines[block_end : ex.end]
            lines[ex.start + 1 : ex.end] = new + gap
        README.write_text("\n".join(lines) + "\n")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--update", action="store_true", help="rewrite README.md with what ran")
    ap.add_argument("--keep", type=Path, help="work in this (new or empty) folder and keep it")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ckpt-readme-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        make_inputs(folder)
        problems = check(folder, update=args.update)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    for p in problems:
        print(p, end="\n\n")
    what = "updated in README.md" if args.update else "differ from README.md"
    print(f"{len(problems)} example(s) {what}" if problems else "every README example matches")
    return 1 if problems and not args.update else 0


if __name__ == "__main__":
    sys.exit(main())
