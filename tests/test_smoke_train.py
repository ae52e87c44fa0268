"""`ckpt smoke-train`: real models through the card workflow, sabotaged files, DDP, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from conftest import FIXTURES, run_cli, run_json

from ckpt_tool.render import sampled_steps, sparkline
from ckpt_tool.train import check_gradients, check_loss, check_ranks, parse_lr_for

ALL = ["loads_strictly", "forward_ok", "loss_decreases", "gradients_flow"]


def checks(report: dict[str, Any]) -> dict[str, bool | None]:
    return {c["name"]: c["ok"] for c in report["checks"]}


def ok(args: list[Any]) -> dict[str, Any]:
    code, data = run_json(args)
    assert data is not None, args
    assert code == 0, data["checks"]
    assert data["ok"] and all(checks(data)[n] for n in ALL)
    return dict(data)


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DataParallel ConvNet -> strip-module -> transplant 5 classes -> freeze layer1.* ->
    cast fp16 --keep-norm -> safetensors."""
    d = tmp_path_factory.mktemp("card")
    src = d / "dp.pth"
    shutil.copy(FIXTURES / "convnet_dataparallel.pth", src)
    steps = [
        ["strip-module", src, "-o", d / "a.pth"],
        ["transplant", d / "a.pth", "--into", "convnet", "--num-classes", "5", "-o", d / "b.pth"],
        ["freeze", "layer1.*", d / "b.pth", "--bn-eval", "-o", d / "c.pth"],
        ["cast", d / "c.pth", "--dtype", "fp16", "--keep-norm", "-o", d / "d.pth"],
        ["convert", d / "d.pth", "-o", d / "x.safetensors"],
    ]
    for args in steps:
        result = run_cli(args)
        assert result.exit_code == 0, (args, result.stderr)
    return d / "x.safetensors"


def test_card_workflow_convnet_passes(card: Path) -> None:
    r = ok(["smoke-train", card, "--arch", "convnet", "--num-classes", "5"])
    assert r["input_shape"] == [1, 28, 28]
    assert r["freeze"] == {"recorded": True, "frozen": 4, "bn_eval": ["layer1.1"]}
    assert r["trainable"] == 6 and r["frozen"] == 4
    assert len(r["losses"]) == 20 and r["losses"][-1] < r["losses"][0]
    assert "cast to the model's dtype" in checks_detail(r, "loads_strictly")
    assert "3 eval BatchNorm buffers unchanged" in checks_detail(r, "gradients_flow")


def checks_detail(report: dict[str, Any], name: str) -> str:
    return str(next(c["detail"] for c in report["checks"] if c["name"] == name))


def test_card_workflow_under_bf16_autocast(card: Path) -> None:
    r = ok(["smoke-train", card, "--arch", "convnet", "--num-classes", "5", "--amp", "bf16",
            "--steps", "8"])  # fmt: skip
    assert r["config"]["amp"] == "bf16"


def test_human_output_has_table_curve_and_checks(card: Path) -> None:
    args = ["smoke-train", card, "--arch", "convnet", "--num-classes", "5", "--steps", "5"]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    for text in ("step", "loss", "loads_strictly", "gradients_flow", "smoke-train passed"):
        assert text in result.stdout
    assert any(ch in result.stdout for ch in "▁▂▃▄▅▆▇█")


def test_resnet18_into_resnet34_head_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    r34 = tmp_path / "r34.pth"
    frozen = tmp_path / "r34_head.pth"
    for args in (
        ["transplant", src, "--into", "resnet34", "--num-classes", "4", "-o", r34],
        ["freeze", "--only", "fc.*", r34, "-o", frozen],
    ):
        result = run_cli(args)
        assert result.exit_code == 0, result.stderr
    r = ok(["smoke-train", frozen, "--arch", "resnet34", "--num-classes", "4",
            "--input-shape", "3,32,32", "--steps", "10"])  # fmt: skip
    assert r["trainable"] == 2 and r["frozen"] > 100
    assert r["batch"] == [8, 3, 32, 32]


def test_nan_weights_fail_forward(tmp_path: Path) -> None:
    sd = torch.load(FIXTURES / "mlp.pth", weights_only=True)
    sd["fc2.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    code, r = run_json(["smoke-train", path, "--arch", "mlp", "--steps", "3"])
    assert code == 3 and r is not None and not r["ok"]
    got = checks(r)
    assert got["loads_strictly"] is True and got["forward_ok"] is False
    assert got["loss_decreases"] is None and r["failed"] == ["forward_ok"]


def test_zero_learning_rate_fails_loss_and_gradients(card: Path) -> None:
    code, r = run_json(["smoke-train", card, "--arch", "convnet", "--num-classes", "5",
                        "--lr", "0", "--optimizer", "sgd", "--steps", "3"])  # fmt: skip
    assert code == 3 and r is not None
    got = checks(r)
    assert got["forward_ok"] is True
    assert got["loss_decreases"] is False and got["gradients_flow"] is False
    assert len(r["problems"]["unchanged"]) == 6 and not r["problems"]["frozen_changed"]


def test_lr_for_groups_and_step_scheduler(card: Path) -> None:
    r = ok(["smoke-train", card, "--arch", "convnet", "--num-classes", "5", "--steps", "6",
            "--lr-for", "fc.*=0.01", "--scheduler", "step", "--step-size", "2",
            "--gamma", "0.5"])  # fmt: skip
    assert r["param_groups"][0] == {"pattern": "fc.*", "lr": 0.01, "parameters": 2}
    assert r["param_groups"][1]["parameters"] == 4
    assert r["lrs"] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])


def test_nproc_2_ranks_agree() -> None:
    r = ok(["smoke-train", FIXTURES / "mlp.pth", "--arch", "mlp", "--nproc", "2", "--steps", "5"])
    assert checks(r)["ranks_agree"] is True
    assert r["config"]["nproc"] == 2


def test_gradient_check_detects_changed_frozen_and_missing_gradients() -> None:
    a, b = torch.ones(3), torch.zeros(2)
    before = {"w": a.clone(), "frozen": b.clone()}
    same = {"w": a + 1, "frozen": b.clone()}
    check, problems = check_gradients(before, same, ["w"], {"w": True}, {"w": True})
    assert check.ok and not any(problems.values())
    moved = {"w": a + 1, "frozen": torch.tensor([0.0, -0.0])}  # -0.0: bitwise, not ==
    check, problems = check_gradients(
        before, moved, ["w"], {"w": True, "frozen": True}, {"w": False}
    )
    assert not check.ok
    assert problems["frozen_changed"] == ["frozen"]
    assert problems["frozen_got_gradient"] == ["frozen"]
    assert problems["no_gradient"] == ["w"]
    bn = {"bn.running_mean": torch.zeros(2)}
    check, problems = check_gradients(
        before, same, ["w"], {"w": True}, {"w": True}, bn, {"bn.running_mean": torch.ones(2)}
    )
    assert not check.ok and problems["bn_eval_stats_changed"] == ["bn.running_mean"]


def test_small_check_functions() -> None:
    assert check_loss([2.0, 1.0]).ok and not check_loss([1.0, 1.0]).ok
    assert not check_loss([1.0, float("nan"), 0.5]).ok
    assert check_ranks([{"a": "x"}, {"a": "x"}]).ok and not check_ranks([{"a": "x"}, {"a": "y"}]).ok
    assert parse_lr_for(["fc.*=0.01"]) == [("fc.*", 0.01)]
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁" and "×" in sparkline([1.0, float("inf")])
    assert len(sampled_steps(100)) == 20 and sampled_steps(100)[-1] == 99


def test_unknown_arch_is_exit_1(card: Path) -> None:
    result = run_cli(["smoke-train", card, "--arch", "no_such_net_xyz"])
    assert result.exit_code == 1 and "unknown architecture" in result.stderr


def test_checkpoint_not_matching_arch_fails_loads_strictly(tmp_path: Path) -> None:
    code, r = run_json(["smoke-train", FIXTURES / "mlp.pth", "--arch", "convnet"])
    assert code == 3 and r is not None
    got = checks(r)
    assert got["loads_strictly"] is False and got["forward_ok"] is None
    assert "missing" in checks_detail(r, "loads_strictly")
    assert r["losses"] == []


def test_bad_options_are_usage_errors(card: Path) -> None:
    base = ["smoke-train", card, "--arch", "convnet", "--num-classes", "5"]
    assert run_cli([*base, "--input-shape", "3,a"]).exit_code == 2
    code, r = run_json([*base, "--input-shape", "3,16,16", "--steps", "2"])
    assert code == 3 and r is not None and "raised RuntimeError" in checks_detail(r, "forward_ok")
    result = run_cli([*base, "--lr-for", "nomatch.*=0.1", "--steps", "2"])
    assert result.exit_code == 2 and "matches no trainable parameter" in result.stderr
