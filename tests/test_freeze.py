"""`ckpt freeze` and `ckpt_tool.apply_freeze`: plans as data, then real files end to end.

Outputs are checked as a user would: torch.load(weights_only=True), load_state_dict(strict=True),
`ckpt count`, and requires_grad / train() on the live model after apply_freeze.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from conftest import FIXTURES, REPO, run_cli, run_json
from torch import nn

import ckpt_tool
from ckpt_tool.checkpoint import load
from ckpt_tool.errors import SurgeryError, UsageError, WeightsNotFound
from ckpt_tool.seed_models import ConvNet, mlp
from ckpt_tool.surgery.freeze import PatternError, batchnorm_layers, plan_freeze

LAYER1_PARAMS = 221_952  # torchvision resnet34 layer1


@pytest.fixture(scope="module")
def resnet34(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("r34") / "resnet34.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34().state_dict(), path)
    return path


def freeze_json(*args: Any) -> dict[str, Any]:
    code, data = run_json(["freeze", *args])
    assert code == 0, data
    return data  # type: ignore[no-any-return]


def count_json(path: Path) -> dict[str, Any]:
    code, data = run_json(["count", path])
    assert code == 0
    return data  # type: ignore[no-any-return]


def live_counts(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters()) - trainable


# --- plans as data ---------------------------------------------------------------------------


PARAMS = {"module.conv.weight": True, "module.bn.weight": True, "module.bn.bias": True}
PARAMS |= {"module.fc.weight": True, "module.fc.bias": True}
BUFFERS = ["module.bn.running_mean", "module.bn.running_var", "module.bn.num_batches_tracked"]


def plan(patterns: list[str], **kw: Any) -> Any:
    return plan_freeze(PARAMS, BUFFERS, patterns, where="m.pth", **kw)


def test_glob_ignores_wrapper_prefix_and_skips_buffers() -> None:
    p = plan(["bn.*"])
    assert [k for k, v in p.after.items() if not v] == ["module.bn.weight", "module.bn.bias"]
    assert p.matched == {"bn.*": {"parameters": 2, "buffers": 3}}
    assert p.bn_unmarked == []  # no bn_layers given


def test_regex_is_fullmatch_and_several_patterns_union() -> None:
    p = plan([r"fc\.weight", r"conv\..*"], regex=True)
    assert sorted(k for k, v in p.after.items() if not v) == [
        "module.conv.weight",
        "module.fc.weight",
    ]
    with pytest.raises(PatternError, match=r"whole name.*'\.\*fc\.\*'"):
        plan(["fc"], regex=True)


def test_only_and_unfreeze() -> None:
    p = plan(["fc.*"], mode="only")
    assert [k for k, v in p.after.items() if v] == ["module.fc.weight", "module.fc.bias"]
    back = plan_freeze(p.after, BUFFERS, ["*"], where="m.pth", mode="unfreeze")
    assert all(back.after.values()) and len(back.changed) == 3


@pytest.mark.parametrize(
    ("patterns", "kw", "error", "match"),
    [
        ([""], {}, UsageError, "pattern is empty"),
        (["   "], {}, UsageError, "pattern is empty"),
        (["bn.["], {"regex": True}, UsageError, "not a valid regular expression"),
        (["lyer.*"], {}, PatternError, "m.pth: pattern 'lyer.*' matches no key"),
        (["bn"], {}, PatternError, r"did you mean 'bn\.\*'"),
        (["bn.running_*"], {}, PatternError, "matched only buffers"),
        (["fc.*"], {"mode": "unfreeze", "keep_bn_eval": True}, UsageError, "--bn-eval"),
        ([], {}, UsageError, "at least one PATTERN"),
    ],
)
def test_bad_patterns(patterns: list[str], kw: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plan(patterns, **kw)


def test_no_parameters_is_an_error() -> None:
    with pytest.raises(WeightsNotFound, match=r"x\.pth: holds no parameters"):
        plan_freeze({}, BUFFERS, ["*"], where="x.pth")


def test_batchnorm_found_by_keys_or_class() -> None:
    keys = [*PARAMS, *BUFFERS, "ln.weight", "ln.bias"]
    assert list(batchnorm_layers(keys)) == ["module.bn"]
    assert list(batchnorm_layers(["gn.weight"], {"gn": "torch.nn.SyncBatchNorm"})) == ["gn"]


def test_bn_eval_marked_then_dropped_when_unfrozen() -> None:
    bn = batchnorm_layers([*PARAMS, *BUFFERS])
    p = plan(["bn.*"], bn_layers=bn, keep_bn_eval=True)
    assert p.bn_eval_after == ["module.bn"]
    without = plan(["bn.*"], bn_layers=bn)
    assert without.bn_unmarked == ["module.bn"] and "--bn-eval" in without.notes[-1]
    back = plan_freeze(
        p.after,
        BUFFERS,
        ["bn.weight"],
        where="m",
        mode="unfreeze",
        bn_layers=bn,
        bn_eval=p.bn_eval_after,
    )
    assert back.bn_eval_after == [] and "no longer kept in eval" in back.notes[0]


# --- end to end: torchvision resnet34 ---------------------------------------------------------


def test_resnet34_layer1_frozen_loads_everywhere(resnet34: Path, tmp_path: Path) -> None:
    out = tmp_path / "resnet34.frozen.pth"
    report = freeze_json("layer1.*", resnet34, "-o", out)
    assert report["written"] and report["kinds_inferred"]
    assert report["totals"]["after"]["frozen"] == LAYER1_PARAMS
    layer1 = next(m for m in report["modules"] if m["module"] == "layer1")
    assert layer1["before"] == {"trainable": LAYER1_PARAMS, "frozen": 0}
    assert layer1["after"] == {"trainable": 0, "frozen": LAYER1_PARAMS}
    assert len(report["bn_eval"]["unmarked"]) == 6 and "--bn-eval" in " ".join(report["notes"])
    counted = count_json(out)
    assert counted["frozen"] == LAYER1_PARAMS and counted["freeze"]["recorded"]
    frozen_modules = {m["module"]: m["frozen"] for m in counted["modules"] if m["frozen"]}
    assert frozen_modules == {"layer1": LAYER1_PARAMS}
    sd = torch.load(out, weights_only=True)
    frozen = {k for k, v in sd.items() if isinstance(v, nn.Parameter) and not v.requires_grad}
    assert frozen == {
        k for k in sd if k.startswith("layer1.") and "running" not in k and "num_batches" not in k
    }
    assert not isinstance(sd["bn1.running_mean"], nn.Parameter)
    model = torchvision.models.resnet34()
    model.load_state_dict(sd, strict=True)
    original = torch.load(resnet34, weights_only=True)
    assert all(torch.equal(sd[k].detach(), original[k]) for k in original)
    ckpt_tool.apply_freeze(model, out)
    assert live_counts(model) == (counted["trainable"], LAYER1_PARAMS)


def test_freeze_survives_safetensors_and_back(resnet34: Path, tmp_path: Path) -> None:
    frozen = tmp_path / "f.pth"
    freeze_json("layer1.*", resnet34, "-o", frozen, "--bn-eval")
    want = count_json(frozen)
    st, back = tmp_path / "f.safetensors", tmp_path / "back.pth"
    for src, dst in ((frozen, st), (st, back)):
        result = run_cli(["extract", src, "-o", dst])
        assert result.exit_code == 0, result.stderr
    for path in (st, back):
        got = count_json(path)
        assert (got["trainable"], got["frozen"]) == (want["trainable"], want["frozen"])
        assert got["modules"] == want["modules"]
    assert load(st).bn_eval == want["freeze"]["bn_eval"]


def test_only_head_of_4_class_resnet34(tmp_path: Path) -> None:
    path = tmp_path / "r4.pth"
    torch.save(torchvision.models.resnet34(num_classes=4).state_dict(), path)
    report = freeze_json("--only", "fc.*", path)
    assert report["output"] == str(tmp_path / "r4.frozen.pth")
    assert report["totals"]["after"]["trainable"] == 2_052
    counted = count_json(tmp_path / "r4.frozen.pth")
    assert counted["trainable"] == 2_052 and counted["frozen"] == counted["params"] - 2_052


# --- bad input ----------------------------------------------------------------------------------


def _buffers_only(tmp_path: Path) -> Path:
    path = tmp_path / "stats.pth"
    torch.save({"bn.running_mean": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(1)}, path)
    return path


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["", "{mlp}"], "pattern is empty", 2),  # the command line is wrong: usage, exit 2
        (["--regex", "fc1.[", "{mlp}"], "not a valid regular expression", 2),
        (["fc3.*", "{mlp}"], "pattern 'fc3.*' matches no key; names look like: 'fc2.*', 'fc1.*'",
         1),
        (["--only", "nothing*", "{mlp}"], "--only pattern 'nothing*' matches no key", 1),
        (["*", "{stats}"], "stats.pth: holds no parameters to freeze", 1),
    ],
)  # fmt: skip
def test_bad_input_one_line(tmp_path: Path, args: list[str], message: str, code: int) -> None:
    torch.save(mlp().state_dict(), tmp_path / "mlp.pth")
    paths = {"mlp": tmp_path / "mlp.pth", "stats": _buffers_only(tmp_path)}
    before = sorted(tmp_path.iterdir())
    result = run_cli(["freeze", *[a.format(**paths) for a in args]])
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{mlp}"], "no PATTERN before"),
        (["{mlp}", "fc1.*"], "the checkpoint comes last"),
        (["fc1.*", "{mlp}", "--only", "fc2.*"], "not both"),
        (["--only", "fc2.*", "--unfreeze", "{mlp}"], "drop --unfreeze"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    torch.save(mlp().state_dict(), tmp_path / "mlp.pth")
    result = run_cli(["freeze", *[a.format(mlp=tmp_path / "mlp.pth") for a in args]])
    assert result.exit_code == 2 and message in result.stderr, result.stderr


# --- layouts ------------------------------------------------------------------------------------


def test_dataparallel_bn_eval_and_strict_load(tmp_path: Path) -> None:
    out = tmp_path / "dp.pth"
    report = freeze_json("layer1.*", FIXTURES / "convnet_dataparallel.pth", "--bn-eval", "-o", out)
    assert report["bn_eval"]["after"] == ["module.layer1.1"]
    assert report["matched"]["layer1.*"] == {"parameters": 4, "buffers": 3}
    sd = torch.load(out, weights_only=True)
    assert sd._metadata["module.layer1.1"]["ckpt_bn_eval"] is True
    assert sd._metadata["module.layer1.1"]["version"] == 2  # what was there survives
    wrapped = nn.DataParallel(ConvNet())
    wrapped.load_state_dict(sd, strict=True)
    assert load(out).bn_eval == ["module.layer1.1"]
    model = ConvNet()  # prefixes are ignored on both sides
    applied = ckpt_tool.apply_freeze(model, out)
    assert applied.bn_eval == ["layer1.1"] and len(applied.frozen) == 4
    model.train()
    assert not model.layer1[1].training and model.layer1[0].training and model.fc.training
    clone = copy.deepcopy(model)
    clone.train()
    clone.layer1[1].training = True  # set behind train()'s back: the pre-hook restores eval
    stats = clone.layer1[1].running_mean.clone()
    clone(torch.randn(2, 1, 28, 28))
    assert not clone.layer1[1].training and torch.equal(clone.layer1[1].running_mean, stats)
    ckpt_tool.apply_freeze(model, out)  # idempotent: one hook, one wrapper
    assert len(model.layer1[1]._forward_pre_hooks) == 1


def test_whole_pickled_model_becomes_state_dict(tmp_path: Path) -> None:
    out = tmp_path / "whole.pth"
    report = freeze_json("fc.*", FIXTURES / "convnet_whole.pth", "-o", out)
    assert any("written as a state_dict" in n for n in report["notes"])
    assert not report["kinds_inferred"]
    sd = torch.load(out, weights_only=True)
    model = ConvNet()
    model.load_state_dict(sd, strict=True)
    assert [k for k, v in sd.items() if isinstance(v, nn.Parameter) and not v.requires_grad] == [
        "fc.weight",
        "fc.bias",
    ]


def test_training_checkpoint_keeps_the_rest(tmp_path: Path) -> None:
    import argparse

    out = tmp_path / "t.pth.tar"
    report = freeze_json("fc.0.*", FIXTURES / "timm_train.pth.tar", "-o", out)
    assert report["weights_key"] == "state_dict"
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(out, weights_only=True)
        orig = torch.load(FIXTURES / "timm_train.pth.tar", weights_only=True)
    assert list(data) == list(orig) and data["epoch"] == orig["epoch"]
    assert not data["state_dict"]["fc.0.weight"].requires_grad
    assert data["state_dict"]["fc.1.weight"].requires_grad
    assert not isinstance(data["state_dict_ema"]["fc.0.weight"], nn.Parameter)
    assert torch.equal(
        data["optimizer"]["state"][0]["momentum_buffer"],
        orig["optimizer"]["state"][0]["momentum_buffer"],
    )


def test_unfreeze_recorded_state_default_name_and_dry_run(tmp_path: Path) -> None:
    src = tmp_path / "convnet_frozen.pth"
    src.write_bytes((FIXTURES / "convnet_frozen.pth").read_bytes())
    dry = freeze_json("--unfreeze", "layer1.*", src, "--dry-run")
    assert dry["output"] == str(tmp_path / "convnet_frozen.unfrozen.pth") and not dry["written"]
    assert not (tmp_path / "convnet_frozen.unfrozen.pth").exists()
    assert dry["recorded_before"] and not dry["kinds_inferred"]
    assert dry["totals"]["before"]["frozen"] == 448 and dry["totals"]["after"]["frozen"] == 0
    human = run_cli(["freeze", "--unfreeze", "layer1.*", src])
    assert human.exit_code == 0 and "448 → 0" in human.stdout and "wrote" in human.stdout
    assert count_json(tmp_path / "convnet_frozen.unfrozen.pth")["frozen"] == 0


def test_safetensors_input_and_output(tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    freeze_json("layer2.*", FIXTURES / "convnet.safetensors", "--bn-eval", "-o", out)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert sorted(json.loads(meta["ckpt.frozen"])) == [
        "layer2.0.bias",
        "layer2.0.weight",
        "layer2.1.bias",
        "layer2.1.weight",
    ]
    assert json.loads(meta["ckpt.bn_eval"]) == ["layer2.1"]
    model = ConvNet()
    assert len(ckpt_tool.apply_freeze(model, out).frozen) == 4
    assert live_counts(model) == (29_034 - 12_896, 12_896)


# --- the library helper -------------------------------------------------------------------------


def test_apply_freeze_plain_state_dict_changes_nothing() -> None:
    model = ConvNet()
    model.fc.weight.requires_grad_(False)
    applied = ckpt_tool.apply_freeze(model, FIXTURES / "convnet.safetensors")
    assert not applied.recorded and applied.frozen == [] and not model.fc.weight.requires_grad


def test_apply_freeze_wrong_model_is_an_error() -> None:
    with pytest.raises(SurgeryError, match=r"convnet_frozen\.pth: none of its 10 parameters"):
        ckpt_tool.apply_freeze(mlp(), str(FIXTURES / "convnet_frozen.pth"))


def test_import_ckpt_tool_stays_free_of_torch() -> None:
    code = "import sys, ckpt_tool; assert 'torch' not in sys.modules; ckpt_tool.apply_freeze"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
