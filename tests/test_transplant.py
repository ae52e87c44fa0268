"""`ckpt transplant` end to end, and its pure matching plan.

Real models (torchvision resnet18/34, timm resnet18, the seed models, the committed fixtures),
real files in temporary folders, the CLI in-process with parsed --json. Every output is checked
the way a user would: torch.load(weights_only=True), load_state_dict(strict=True) into the
target, and a bitwise comparison of every copied tensor with the source's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from conftest import FIXTURES, run_cli, run_json
from safetensors.torch import load_file
from timm.models import adapt_input_conv as timm_adapt_input_conv
from torch import nn

from ckpt_tool.checkpoint import load
from ckpt_tool.errors import SurgeryError
from ckpt_tool.seed_models import ConvNet, SigmoidNet, mlp
from ckpt_tool.surgery.transplant import Meta, group_rows, plan
from ckpt_tool.tensors import TensorReader
from ckpt_tool.transplanting import adapt_input_conv

REPORT_KEYS = {
    "command", "input", "output", "dry_run", "written", "weights_key", "arch", "match", "maps",
    "init", "seed", "keep_dtype", "prefix_removed", "keys", "unused", "modules",
    "unused_modules", "totals", "coverage", "notes",
}  # fmt: skip
WRITTEN_KEYS = {"format", "bytes", "verified"}  # added by a real write
CONVNET_FILE = """
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=1):
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_chans, 16, 5, 1, 2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2, 2)
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(16, 32, 5, 1, 2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, 2)
        )
        self.fc = nn.Linear(7 * 7 * 32, num_classes)
"""


# --- helpers ------------------------------------------------------------------------------------


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def load_out(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    out = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(out, OrderedDict)
    return out


def check_output(
    report: dict[str, Any],
    model: nn.Module,
    source: dict[str, torch.Tensor],
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """Loads strictly into the target; every transferred tensor has the source's exact bits."""
    assert set(report) == REPORT_KEYS | WRITTEN_KEYS and report["written"] and report["verified"]
    out = load_out(Path(report["output"]))
    assert list(out) == list(model.state_dict())
    model.load_state_dict(out, strict=True)
    for row in report["keys"]:
        if row["status"] in ("copied", "renamed"):
            assert row["source_key"].startswith(prefix)
            assert same_bits(out[row["key"]], source[row["source_key"]]), row["key"]
    return out


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {r["key"]: r["status"] for r in report["keys"]}


def seeded_state(factory: Any, seed: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return factory(**kwargs).state_dict()


# --- fixtures: built once per module ------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """resnet18, resnet34 (also DataParallel-wrapped) and timm resnet18 checkpoints."""
    import timm

    folder = tmp_path_factory.mktemp("zoo")
    files: dict[str, Any] = {}
    for name, factory, seed in (
        ("r18", torchvision.models.resnet18, 1),
        ("r34", torchvision.models.resnet34, 2),
        ("timm18", lambda: timm.create_model("resnet18", pretrained=False), 3),
    ):
        torch.manual_seed(seed)
        model = factory()
        sd = model.state_dict()
        files[name] = sd
        torch.save(sd, folder / f"{name}.pth")
        if name == "r34":
            dp = nn.DataParallel(model).state_dict()
            torch.save(dp, folder / "r34_dp.pth")
            files["r34_dp"] = dp
    files["folder"] = folder
    return files


# --- torchvision / timm -------------------------------------------------------------------------


def test_resnet18_into_resnet34_copies_every_shared_block(zoo: dict[str, Any]) -> None:
    src = zoo["folder"] / "r18.pth"
    code, r = run_json(["transplant", src, "--into", "resnet34"])
    assert code == 0
    assert r["output"] == str(zoo["folder"] / "r18.resnet34.pth")  # SRC.<arch>.pth
    s = statuses(r)
    r18 = zoo["r18"]
    assert all(s[k] == "copied" for k in r18)  # every resnet18 key exists in resnet34
    extra = {"layer1.2", "layer2.2", "layer2.3", "layer4.2", *(f"layer3.{i}" for i in range(2, 6))}
    missing = {k for k, v in s.items() if v == "missing"}
    assert missing == {k for k in s if ".".join(k.split(".")[:2]) in extra}
    assert r["unused"] == [] and r["prefix_removed"] is None
    t = r["totals"]
    assert (t["copied_keys"], t["target_keys"]) == (len(r18), 218)
    r18_params = sum(
        v.numel() for k, v in r18.items() if v.is_floating_point() and "running" not in k
    )
    assert t["copied_params"] == r18_params == 11_689_512
    assert t["target_params"] == 21_797_672
    assert t["coverage_pct"] == pytest.approx(100 * 11_689_512 / 21_797_672, abs=0.01)  # 53.63
    modules = {g["module"]: g for g in r["modules"]}
    assert modules["layer1.0–1"]["status"] == "copied" and len(modules["layer1.0–1"]["blocks"]) == 2
    assert modules["layer3.2–5"]["status"] == "missing"
    assert modules["layer3.2–5"]["blocks"] == [f"layer3.{i}" for i in range(2, 6)]
    model = torchvision.models.resnet34()
    out = check_output(r, model, r18)
    # the missing blocks keep resnet34's own initialisation under --seed 0
    default = seeded_state(torchvision.models.resnet34, 0)
    assert all(same_bits(out[k], default[k]) for k in missing)
    assert any("timm/resnet34" in n for n in r["notes"])


def test_resnet34_num_classes_reinitialises_only_the_classifier(zoo: dict[str, Any]) -> None:
    src = zoo["folder"] / "r34.pth"
    out_path = zoo["folder"] / "r34_4.pth"
    code, r = run_json(
        ["transplant", src, "--into", "resnet34", "--num-classes", "4", "-o", out_path]
    )
    assert code == 0
    s = statuses(r)
    assert {k for k, v in s.items() if v != "copied"} == {"fc.weight", "fc.bias"}
    fc = {row["key"]: row for row in r["keys"] if row["key"].startswith("fc.")}
    assert fc["fc.weight"]["status"] == "reinitialised"
    assert (fc["fc.weight"]["source_shape"], fc["fc.weight"]["shape"]) == ([1000, 512], [4, 512])
    assert fc["fc.bias"]["init"] == "architecture default (seed 0)"
    assert r["arch"]["kwargs"] == {"num_classes": 4}
    check_output(r, torchvision.models.resnet34(num_classes=4), zoo["r34"])
    assert r["totals"]["coverage_pct"] == pytest.approx(99.99, abs=0.01)


def test_dataparallel_prefix_is_removed_automatically(zoo: dict[str, Any]) -> None:
    src = zoo["folder"] / "r34_dp.pth"
    out_path = zoo["folder"] / "r34_dp.safetensors"
    code, r = run_json(["transplant", src, "--into", "resnet34", "-o", out_path])
    assert code == 0 and r["format"] == "safetensors"
    assert r["prefix_removed"] == "module."
    assert "removed the wrapper prefix 'module.' from every source key" in r["notes"]
    assert set(statuses(r).values()) == {"copied"} and r["totals"]["coverage_pct"] == 100.0
    check_output(r, torchvision.models.resnet34(), zoo["r34_dp"], prefix="module.")


def test_in_chans_1_adapts_the_first_conv_by_summing(zoo: dict[str, Any]) -> None:
    src = zoo["folder"] / "r18.pth"
    out_path = zoo["folder"] / "r18_gray.pth"
    code, r = run_json(["transplant", src, "--into", "resnet18", "--in-chans", "1", "-o", out_path])
    assert code == 0
    conv = r["keys"][0]
    assert conv["key"] == "conv1.weight" and conv["status"] == "adapted"
    assert (conv["source_shape"], conv["shape"]) == ([64, 3, 7, 7], [64, 1, 7, 7])
    assert conv["detail"] == "summed over 3 input channels"
    assert r["totals"]["coverage_pct"] == 100.0
    assert any("rebuilt its first convolution conv1" in n for n in r["notes"])
    model = torchvision.models.resnet18()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    out = check_output(r, model, zoo["r18"])
    assert same_bits(out["conv1.weight"], zoo["r18"]["conv1.weight"].sum(dim=1, keepdim=True))


def test_timm_resnet18_into_torchvision_resnet18_copies_fully(zoo: dict[str, Any]) -> None:
    src = zoo["folder"] / "timm18.pth"
    code, r = run_json(["transplant", src, "--into", "torchvision/resnet18", "--dry-run"])
    assert code == 0 and not r["written"]
    assert not Path(r["output"]).exists()
    assert set(statuses(r).values()) == {"copied"} and r["unused"] == []
    assert r["notes"] == []  # an explicit torchvision/ name: no zoo note
    code, r = run_json(["transplant", src, "--into", "torchvision/resnet18"])
    assert code == 0 and r["totals"]["coverage_pct"] == 100.0
    check_output(r, torchvision.models.resnet18(), zoo["timm18"])


@pytest.mark.parametrize("in_chans", [1, 2, 4, 5, 7])
def test_adapt_input_conv_matches_timm(in_chans: int) -> None:
    weight = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(in_chans))
    ours = adapt_input_conv(weight, in_chans)
    theirs = timm_adapt_input_conv(in_chans, weight.clone())
    assert ours.shape == (8, in_chans, 3, 3)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
    half = adapt_input_conv(weight.half(), in_chans)
    assert half.dtype == torch.float16


# --- seed models and fixtures -------------------------------------------------------------------


def test_seed_convnet_into_convnet_with_5_classes(tmp_path: Path) -> None:
    src = FIXTURES / "convnet.safetensors"
    out_path = tmp_path / "convnet5.safetensors"
    code, r = run_json(
        ["transplant", src, "--into", "convnet", "--arch-arg", "num_classes=5", "-o", out_path]
    )
    assert code == 0
    s = statuses(r)
    assert {k for k, v in s.items() if v != "copied"} == {"fc.weight", "fc.bias"}
    assert {s["fc.weight"], s["fc.bias"]} == {"reinitialised"}
    check_output(r, ConvNet(num_classes=5), load_file(src))


def test_mlp_other_width_fails_min_coverage_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "mlp.pth"
    src.write_bytes((FIXTURES / "mlp.pth").read_bytes())
    args = ["transplant", src, "--into", "mlp", "--arch-arg", "hidden=128", "--min-coverage", "50"]
    result = run_cli(args)
    assert result.exit_code == 3
    assert "under --min-coverage 50; nothing written" in result.stderr
    assert "shape mismatch" in result.stdout  # the report still shows why
    code, r = run_json(args)
    assert code == 3 and r["written"] is False and set(r) == REPORT_KEYS | {"error", "exit_code"}
    assert r["exit_code"] == 3 and "--min-coverage 50" in r["error"]
    assert r["coverage"] == {"pct": r["totals"]["coverage_pct"], "min": 50.0, "ok": False}
    assert statuses(r) == {
        "fc1.weight": "shape_mismatch", "fc1.bias": "shape_mismatch",
        "fc2.weight": "shape_mismatch", "fc2.bias": "copied",  # [10] fits either way
    }  # fmt: skip
    mismatch = r["keys"][0]
    assert (mismatch["source_shape"], mismatch["shape"]) == ([256, 784], [128, 784])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.pth"]


def test_copying_nothing_fails_by_default(tmp_path: Path) -> None:
    """The default --min-coverage (1 %) makes a transplant that copies nothing exit 3 with
    nothing written; --min-coverage 0 turns the check off and only warns."""
    src = tmp_path / "mlp.pth"
    torch.save(mlp().state_dict(), src)
    out = tmp_path / "o.pth"
    result = run_cli(["transplant", src, "--into", "mlp", "--arch-arg", "hidden=64", "-o", out])
    assert result.exit_code == 3 and not out.exists()
    assert "only 0.0% of mlp's parameters were copied" in result.stderr
    assert "--min-coverage 1" in result.stderr
    code, r = run_json(["transplant", src, "--into", "mlp", "--arch-arg", "hidden=64", "-o", out])
    assert code == 3 and r["coverage"]["min"] == 1.0 and r["coverage"]["ok"] is False
    result = run_cli(
        ["transplant", src, "--into", "mlp", "--arch-arg", "hidden=64", "--dry-run",
         "--min-coverage", "0"]
    )  # fmt: skip
    assert result.exit_code == 0
    assert "warning: only 0.0% of mlp's parameters were copied" in result.stderr


def test_whole_pickled_model_into_file_class(tmp_path: Path) -> None:
    arch = tmp_path / "my_models.py"
    arch.write_text(CONVNET_FILE)
    src = FIXTURES / "convnet_whole.pth"
    out_path = tmp_path / "whole.pth"
    code, r = run_json(["transplant", src, "--into", f"{arch}:ConvNet", "-o", out_path])
    assert code == 0 and r["arch"]["source"] == "file"
    assert set(statuses(r).values()) == {"copied"} and r["totals"]["coverage_pct"] == 100.0
    ckpt = load(src)
    with TensorReader(ckpt) as reader:
        source = {k: reader.read(e) for k, e in ckpt.tensors.items()}
    out = check_output(r, ConvNet(), source)
    assert out["layer1.1.num_batches_tracked"].item() == 1  # buffers travel too


def test_lightning_prefix_and_ema_weights(tmp_path: Path) -> None:
    code, r = run_json(
        [
            "transplant",
            FIXTURES / "lightning.ckpt",
            "--into",
            "sigmoid_net",
            "-o",
            tmp_path / "l.pth",
        ]
    )
    assert code == 0 and r["prefix_removed"] == "model."
    sd = torch.load(FIXTURES / "lightning.ckpt", map_location="cpu", weights_only=True)
    check_output(r, SigmoidNet(), sd["state_dict"], prefix="model.")
    code, r = run_json(
        ["transplant", FIXTURES / "timm_train.pth.tar", "--weights", "state_dict_ema", "--into",
         "sigmoid_net", "-o", tmp_path / "ema.pth"]
    )  # fmt: skip
    assert code == 0 and r["weights_key"] == "state_dict_ema"
    ckpt = load(FIXTURES / "timm_train.pth.tar", weights="state_dict_ema")
    with TensorReader(ckpt) as reader:
        ema = {k: reader.read(e) for k, e in ckpt.tensors.items()}
    check_output(r, SigmoidNet(), ema)


def test_suffix_match_and_map(tmp_path: Path) -> None:
    sd = {f"backbone.{k}": v for k, v in ConvNet().state_dict().items()}
    src = tmp_path / "bb.pth"
    torch.save(sd, src)
    # a prefix on the source side only is found and removed, and said so
    code, r = run_json(["transplant", src, "--into", "convnet"])
    assert code == 0 and r["totals"]["copied_keys"] == 16 and not r["unused"], r["totals"]
    assert any("removed 'backbone.'" in n for n in r["notes"]), r["notes"]
    check_output(r, ConvNet(), sd, prefix="backbone.")
    # --match suffix: the leftover prefix every unambiguous pair shares settles ties
    deep = {**sd, "backbone.extra.layer1.0.weight": sd["backbone.layer1.0.weight"]}
    torch.save(deep, src)
    code, r = run_json(["transplant", src, "--into", "convnet", "--match", "suffix", "--force"])
    assert code == 0, r
    rows = {row["key"]: row for row in r["keys"]}
    assert rows["layer1.0.weight"]["source_key"] == "backbone.layer1.0.weight"
    torch.save(sd, src)
    code, r = run_json(
        ["transplant", src, "--into", "convnet", "--map", r"^backbone\.=", "--force"]
    )
    assert code == 0 and set(statuses(r).values()) == {"renamed"}
    assert r["keys"][0]["rule"] == r"--map ^backbone\.="
    check_output(r, ConvNet(), sd, prefix="backbone.")


def test_init_methods_and_keep_dtype(tmp_path: Path) -> None:
    src = FIXTURES / "convnet_fp16.pth"
    code, r = run_json(
        ["transplant", src, "--into", "convnet", "--num-classes", "3", "--init", "kaiming",
         "-o", tmp_path / "a.pth"]
    )  # fmt: skip
    assert code == 0
    fc = {row["key"]: row for row in r["keys"] if row["key"].startswith("fc.")}
    assert (fc["fc.weight"]["init"], fc["fc.bias"]["init"]) == ("kaiming_normal_", "zeros")
    conv = r["keys"][0]
    assert (conv["source_dtype"], conv["dtype"]) == ("float16", "float32")
    assert conv["detail"] == "cast float16 → float32"
    out = load_out(tmp_path / "a.pth")
    fp16 = torch.load(src, map_location="cpu", weights_only=True)
    assert same_bits(out["layer1.0.weight"], fp16["layer1.0.weight"].float())
    assert torch.count_nonzero(out["fc.bias"]) == 0
    std = out["fc.weight"].std().item()
    assert std == pytest.approx(math.sqrt(2 / 1568), rel=0.1)  # kaiming_normal_, fan_in 1568
    ConvNet(num_classes=3).load_state_dict(out, strict=True)
    code, r = run_json(
        ["transplant", src, "--into", "convnet", "--keep-dtype", "-o", tmp_path / "b.pth"]
    )
    assert code == 0
    kept = load_out(tmp_path / "b.pth")
    assert all(same_bits(kept[k], fp16[k]) for k in fp16)


def test_report_table_groups_blocks(tmp_path: Path) -> None:
    src = tmp_path / "r.pth"
    torch.save(ConvNet(num_classes=4).state_dict(), src)
    result = run_cli(["transplant", src, "--into", "convnet", "--dry-run"])
    assert result.exit_code == 0
    text = result.stdout
    assert "re-initialised" not in text  # no --num-classes: a plain shape mismatch
    assert "shape mismatch: source [4, 1568] ≠ target [10, 1568]" in text
    assert "copied 14 of 16 keys" in text and "dry run: would write" in text
    assert not (tmp_path / "r.convnet.pth").exists()


def test_cuda_saved_source_gives_a_cpu_output(tmp_path: Path) -> None:
    registry = torch.serialization._package_registry
    saved = list(registry)
    torch.serialization.register_package(
        -1_000_000, lambda s: "cuda:0" if s.device.type == "cpu" else None, lambda s, loc: None
    )
    sd = ConvNet().state_dict()
    try:
        torch.save(sd, tmp_path / "gpu.pth")
    finally:
        registry[:] = saved
    assert {e.record.device for e in load(tmp_path / "gpu.pth").tensors.values()} == {"cuda:0"}
    code, r = run_json(["transplant", tmp_path / "gpu.pth", "--into", "convnet"])
    assert code == 0
    out = check_output(r, ConvNet(), sd)  # torch.load without map_location: CPU tensors
    assert {t.device.type for t in out.values()} == {"cpu"}


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "m.pth"
    torch.save(ConvNet().state_dict(), src)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    ambiguous = tmp_path / "amb.pth"  # two whole copies: neither prefix is the one
    sd = ConvNet().state_dict()
    torch.save({**{f"a.{k}": v for k, v in sd.items()}, **{f"b.{k}": v for k, v in sd.items()}},
               ambiguous)  # fmt: skip
    cases = [
        (["transplant", src, "--into", "convnett"], "close matches: convnet"),
        (["transplant", src, "--into", "convnet", "--arch-arg", "depth=3"], "no argument 'depth'"),
        (["transplant", src, "--into", "resnet18", "--arch-arg", "depth=3"], "argument 'depth'"),
        (["transplant", empty, "--into", "convnet"], "no tensors to transplant"),
        (
            ["transplant", ambiguous, "--into", "convnet", "--match", "suffix"],
            "'a.layer1.0.weight', 'b.layer1.0.weight'",
        ),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        result = run_cli(args)
        assert result.exit_code == 1, (args, result.stderr)
        assert result.stdout == "" and result.stderr.count("\n") == 1
        assert result.stderr.startswith("error: ") and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- the pure plan ------------------------------------------------------------------------------

SRC = {
    "conv1.weight": Meta((4, 3, 3, 3), "float32"),
    "layer1.0.w": Meta((4,), "float32"),
    "layer1.1.w": Meta((4,), "float32"),
    "fc.weight": Meta((10, 4), "float32"),
}


def test_plan_suffix_one_source_for_two_targets_is_ambiguous() -> None:
    target = {"x.fc.weight": Meta((10, 4), "float32"), "y.fc.weight": Meta((10, 4), "float32")}
    with pytest.raises(SurgeryError, match=r"matches both target keys 'x\.fc\.weight' and"):
        plan(SRC, target, match="suffix")


def test_plan_partial_prefix_is_noted_not_stripped() -> None:
    source = {"module.fc.weight": SRC["fc.weight"], "conv1.weight": SRC["conv1.weight"]}
    p = plan(source, {"fc.weight": SRC["fc.weight"], "conv1.weight": SRC["conv1.weight"]})
    assert p.prefix == "" and "only some source keys carry a wrapper prefix" in p.notes[0]
    assert [k.status for k in p.keys] == ["missing", "copied"]


def test_plan_keeps_a_prefix_the_target_also_uses() -> None:
    source = {f"model.{k}": m for k, m in SRC.items()}
    assert plan(source, SRC).prefix == "model."
    p = plan(source, {"model.fc.weight": SRC["fc.weight"], "head.weight": SRC["fc.weight"]})
    assert p.prefix == "" and [k.status for k in p.keys] == ["copied", "missing"]


def test_plan_in_chans_only_adapts_the_input_conv() -> None:
    target = dict(SRC, **{"conv1.weight": Meta((4, 1, 3, 3), "float32")})
    p = plan(SRC, target, in_chans=1, input_conv="conv1.weight")
    assert p.keys[0].status == "adapted"
    p = plan(SRC, target, in_chans=1, input_conv="other.weight")
    assert p.keys[0].status == "shape_mismatch"


def test_group_rows_collapses_identical_consecutive_blocks() -> None:
    p = plan(SRC, dict(SRC, **{"layer1.2.w": Meta((4,), "float32")}))
    groups = group_rows(p.keys)
    assert [(g["module"], g["status"], len(g["blocks"])) for g in groups] == [
        ("conv1", "copied", 1),
        ("layer1.0–1", "copied", 2),
        ("fc", "copied", 1),
        ("layer1.2", "missing", 1),
    ]
