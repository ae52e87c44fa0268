"""`ckpt count`: its numbers equal the live model's after loading and applying the freeze state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from conftest import FIXTURES, run_cli, run_json
from torch import nn

import ckpt_tool
from ckpt_tool.seed_models import SEED_MODELS, ConvNet

CASES = {
    "mlp": (lambda: SEED_MODELS["mlp"](), "fc1.*"),
    "convnet": (ConvNet, "layer1.*"),
    "seed_resnet34": (lambda: SEED_MODELS["seed_resnet34"](), "layer1.*"),
    "sigmoid_net": (lambda: SEED_MODELS["sigmoid_net"](), "fc.0.*"),
    "torchvision_resnet34": (torchvision.models.resnet34, "layer1.*"),
    "timm_mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_050"), "blocks.0.*"),
}


def count_json(*args: Any) -> dict[str, Any]:
    code, data = run_json(["count", *args])
    assert code == 0, data
    return data  # type: ignore[no-any-return]


def live(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    buffers = sum(b.numel() for b in model.state_dict().values()) - sum(p.numel() for p in params)
    return {
        "params": sum(p.numel() for p in params),
        "trainable": trainable,
        "frozen": sum(p.numel() for p in params) - trainable,
        "buffer_elements": buffers,
    }


def counted(report: dict[str, Any]) -> dict[str, int]:
    keys = ("params", "trainable", "frozen")
    return {**{k: report[k] for k in keys}, "buffer_elements": report["buffers"]["elements"]}


@pytest.mark.parametrize("name", list(CASES))
def test_count_equals_live_model_after_apply_freeze(name: str, tmp_path: Path) -> None:
    build, pattern = CASES[name]
    torch.manual_seed(0)
    model = build()
    path, frozen = tmp_path / "model.pth", tmp_path / "model.frozen.pth"
    torch.save(model.state_dict(), path)
    plain = count_json(path)
    assert plain["freeze"]["assumed"] and plain["frozen"] == 0
    assert counted(plain) == live(model)
    assert run_cli(["freeze", pattern, path]).exit_code == 0
    report = count_json(frozen)
    assert report["freeze"]["recorded"] and report["frozen"] > 0
    fresh = build()
    fresh.load_state_dict(torch.load(frozen, weights_only=True), strict=True)
    ckpt_tool.apply_freeze(fresh, frozen)
    assert counted(report) == live(fresh)
    assert sum(m["params"] for m in report["modules"]) == report["params"]
    assert report["tensor_bytes"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )


def test_plain_state_dict_is_an_assumption(tmp_path: Path) -> None:
    data = count_json(FIXTURES / "mlp.pth")
    assert data["freeze"] == {
        "recorded": False,
        "assumed": True,
        "kinds_inferred": True,
        "bn_eval": [],
    }
    assert data["trainable"] == data["params"] == 203_530
    assert "assumed trainable" in data["notes"][0]
    human = run_cli(["count", FIXTURES / "mlp.pth"])
    assert human.exit_code == 0 and "assumed" in human.stdout and "█" in human.stdout


def test_recorded_state_whole_model_and_dtypes() -> None:
    frozen = count_json(FIXTURES / "convnet_frozen.pth")
    assert (frozen["params"], frozen["frozen"]) == (29_034, 448)
    assert [m["module"] for m in frozen["modules"]] == ["layer1", "layer2", "fc"]
    assert frozen["modules"][0] | {"share": 0} == {
        "module": "layer1",
        "params": 448,
        "trainable": 0,
        "frozen": 448,
        "buffer_elements": 33,
        "share": 0,
    }
    whole = count_json(FIXTURES / "convnet_whole.pth")
    assert whole["freeze"]["recorded"] and whole["trainable"] == 29_034
    fp16 = count_json(FIXTURES / "convnet_fp16.pth")
    assert fp16["bytes_by_dtype"] == {"float16": 2 * (29_034 + 96), "int64": 16}
    assert fp16["buffers"] == {"tensors": 6, "elements": 98, "bytes": 96 * 2 + 16}


def test_depth_and_wrapper_prefix() -> None:
    data = count_json(FIXTURES / "convnet_dataparallel.pth", "--depth", "2")
    assert [m["module"] for m in data["modules"]] == [
        "layer1.0",
        "layer1.1",
        "layer2.0",
        "layer2.1",
        "fc",
    ]


def test_tied_weights_counted_once(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    torch.save(model.state_dict(), tmp_path / "tied.pth")
    data = count_json(tmp_path / "tied.pth")
    assert data["params"] == 40 == sum(p.numel() for p in model.parameters())
    assert data["shared_keys"] == ["1.weight"]


def test_arch_alone_and_with_a_file() -> None:
    r4 = count_json("--arch", "resnet34", "--num-classes", "4")
    assert (r4["params"], r4["trainable"]) == (21_286_724, 21_286_724)
    assert r4["modules"][-1]["module"] == "fc" and r4["modules"][-1]["params"] == 2_052
    both = count_json("--arch", "convnet", FIXTURES / "convnet_frozen.pth")
    assert (both["params"], both["frozen"]) == (29_034, 448)
    assert both["applied"] == {"missing": [], "unexpected": []}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "give a checkpoint, --arch ARCH, or both"),
        (["--num-classes", "4", "{mlp}"], 2, "need --arch"),
        (["{missing}"], 1, "no such file"),
        (["--arch", "mlp", "{frozen}"], 1, "none of its 10 parameters"),
    ],
)
def test_count_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    paths = {
        "mlp": FIXTURES / "mlp.pth",
        "missing": tmp_path / "nope.pth",
        "frozen": FIXTURES / "convnet_frozen.pth",
    }
    result = run_cli(["count", *[a.format(**paths) for a in args]])
    assert result.exit_code == code and message in result.stderr, result.stderr
    assert result.stdout == ""
