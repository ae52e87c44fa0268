"""`ckpt diff`: keys, shapes, dtypes and values of two checkpoints, prefixes and formats mixed."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, run_cli, run_json
from safetensors.torch import save_file

FROZEN = FIXTURES / "convnet_frozen.pth"


def _sd(path: Path) -> OrderedDict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(sd, dict)
    return OrderedDict(sd)


def _finetuned(tmp_path: Path) -> Path:
    """convnet_frozen with everything but layer1 trained a little."""
    sd = _sd(FROZEN)
    g = torch.Generator().manual_seed(0)
    for k, t in sd.items():
        if not k.startswith("layer1.") and t.is_floating_point():
            with torch.no_grad():
                t.add_(torch.randn(t.shape, generator=g) * 0.01)
    out = tmp_path / "finetuned.pth"
    torch.save(sd, out)
    return out


def _by_key(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in report["tensors"]}


def test_diff_against_itself_is_identical() -> None:
    code, r = run_json(["diff", FROZEN, FROZEN])
    assert code == 0 and r["identical"]
    assert r["summary"]["bit_identical"] == r["summary"]["common"] == 16
    assert all(t["max_abs_diff"] == 0 and t["rel_change"] == 0 for t in r["tensors"])
    assert r["exit_code"] == 0


def test_finetuned_copy_shows_frozen_and_trained_layers(tmp_path: Path) -> None:
    tuned = _finetuned(tmp_path)
    code, r = run_json(["diff", FROZEN, tuned])
    assert code == 3 and not r["identical"]
    tensors = _by_key(r)
    for k, t in tensors.items():
        if k.startswith("layer1.") or k.endswith("num_batches_tracked"):
            assert t["bit_identical"], k
        else:
            assert not t["bit_identical"] and t["max_abs_diff"] > 0, k
            # a zero tensor (BatchNorm bias, running_mean) that changed: ||a|| = 0, so inf
            assert t["rel_change"] == "inf" or t["rel_change"] > 0, k
    mods = {m["module"]: m for m in r["modules"]}
    assert mods["layer1"]["changed"] == 0 and mods["layer1"]["rel_change"] == 0
    assert mods["layer2"]["rel_change"] > 0 and mods["fc"]["rel_change"] > 0
    # rel change computed in float64 matches ||a-b|| / ||a||
    a, b = (_sd(p)["fc.weight"].detach().double() for p in (FROZEN, tuned))
    expect = float((a - b).norm() / a.norm())
    assert tensors["fc.weight"]["rel_change"] == pytest.approx(expect, rel=1e-9)
    assert tensors["fc.weight"]["max_abs_diff"] == pytest.approx(float((a - b).abs().max()))
    # deeper module paths, and the human view names the layers
    _, deep = run_json(["diff", FROZEN, tuned, "--depth", "2"])
    assert {m["module"] for m in deep["modules"]} >= {"layer1.0", "layer2.0", "fc"}
    text = run_cli(["diff", FROZEN, tuned])
    assert text.exit_code == 3 and "layer2" in text.stdout and "identical" in text.stdout


def test_different_architectures_list_key_differences() -> None:
    code, r = run_json(["diff", FIXTURES / "mlp.pth", FIXTURES / "convnet.safetensors"])
    assert code == 3
    assert set(r["only_a"]) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert "layer1.0.weight" in r["only_b"] and len(r["only_b"]) == 16


def test_dataparallel_prefix_is_removed() -> None:
    code, r = run_json(
        ["diff", FIXTURES / "convnet_dataparallel.pth", FIXTURES / "convnet.safetensors"]
    )
    assert code == 0 and r["identical"], r
    assert r["a"]["prefix_removed"] == "module." and r["b"]["prefix_removed"] == ""
    assert any("module." in n for n in r["notes"])


def test_mixed_formats_same_weights_identical(tmp_path: Path) -> None:
    sd = _sd(FROZEN)
    st = tmp_path / "same.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    code, r = run_json(["diff", FROZEN, st])
    assert code == 0 and r["summary"]["bit_identical"] == 16


def test_shape_and_dtype_changes_fail(tmp_path: Path) -> None:
    sd = _sd(FROZEN)
    sd["fc.bias"] = torch.zeros(3)
    sd["fc.weight"] = sd["fc.weight"].half()
    other = tmp_path / "other.pth"
    torch.save(sd, other)
    code, r = run_json(["diff", FROZEN, other])
    assert code == 3
    assert [x["key"] for x in r["shape_changed"]] == ["fc.bias"]
    assert r["dtype_changed"] == [{"key": "fc.weight", "a": "float32", "b": "float16"}]


def test_tolerances(tmp_path: Path) -> None:
    a = {"w": torch.tensor([1.0, 2.0, 4.0]), "z": torch.tensor([0.0])}
    b = {"w": torch.tensor([1.0, 2.0, 4.001]), "z": torch.tensor([-0.0])}
    pa, pb = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(a, pa)
    torch.save(b, pb)
    code, r = run_json(["diff", pa, pb])  # defaults 0: any byte change counts, -0.0 included
    assert code == 3 and set(r["changed"]) == {"w", "z"}
    assert _by_key(r)["w"]["max_abs_diff"] == pytest.approx(0.001, rel=1e-3)
    assert run_json(["diff", pa, pb, "--atol", "1e-4"])[0] == 3
    code, r = run_json(["diff", pa, pb, "--atol", "2e-3"])
    assert code == 0 and r["identical"]
    assert run_json(["diff", pa, pb, "--rtol", "1e-3"])[0] == 0  # 0.001 <= 1e-3 * 4
    assert run_json(["diff", pa, pb, "--rtol", "1e-4"])[0] == 3
    assert run_json(["diff", pa, pb, "--atol", "-1"])[0] == 2


def test_weights_selection_per_side(tmp_path: Path) -> None:
    sd = _sd(FROZEN)
    train = tmp_path / "train.pth"
    torch.save({"state_dict": sd, "state_dict_ema": sd, "epoch": 3}, train)
    code, r = run_json(["diff", FROZEN, train, "--weights-b", "state_dict_ema"])
    assert code == 0 and r["b"]["weights_key"] == "state_dict_ema"
    code, r = run_json(["diff", train, train, "--weights", "state_dict_ema"])
    assert code == 0 and r["a"]["weights_key"] == r["b"]["weights_key"] == "state_dict_ema"
