"""`ckpt cast` end to end (issue #6).

Every output is read back the way a user would (torch.load(weights_only=True)) and compared
bitwise with `t.to(dtype)` of what torch loads from the input. Integer and bool tensors keep
their dtype, --keep / --keep-norm hold tensors, overflow and underflow are counted per tensor,
--strict refuses (exit 3, nothing written), and the container of a training checkpoint survives.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, run_cli, run_json
from torch import nn

import ckpt_tool.surgery.cast as cast_mod

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
REPORT_KEYS = {
    "dtype",
    "cast",
    "kept",
    "bytes_before",
    "bytes_after",
    "total_before",
    "total_after",
    "overflow_total",
    "underflow_total",
    "overflowing",
    "modules",
    "tensors",
}
ROW_KEYS = {"key", "from", "to", "reason", "overflow", "underflow", "rel_error", "max_abs_error"}


# --- helpers ------------------------------------------------------------------------------------


def raw(t: torch.Tensor) -> torch.Tensor:
    """A tensor's values as bytes, in logical order (0-d, bool, fp16 ... all work)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def load(path: Path) -> Any:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def listing(folder: Path) -> set[str]:
    return set(os.listdir(folder))


def one_error_line(result: Any) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in report["tensors"]}


def expected_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision resnet34 (random init) after a train-mode forward: BN stats are non-trivial."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet34(weights=None)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    path = tmp_path_factory.mktemp("resnet") / "resnet34.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet34_fp16(resnet34_file: Path) -> tuple[Path, dict[str, Any]]:
    out = resnet34_file.with_name("resnet34.fp16.pth")
    code, report = run_json(["cast", resnet34_file, "--dtype", "fp16", "-o", out])
    assert code == 0, report
    return out, report


# --- resnet34 fp16 (acceptance) -----------------------------------------------------------------


def test_resnet34_fp16_values_dtypes_and_strict_load(
    resnet34_file: Path, resnet34_fp16: tuple[Path, dict[str, Any]]
) -> None:
    import torchvision

    out, report = resnet34_fp16
    src, got = load(resnet34_file), load(out)
    assert list(got) == list(src)
    for key, t in src.items():
        if key.endswith("num_batches_tracked"):
            assert got[key].dtype == torch.int64 and int(got[key]) == int(t) == 1
        assert same_bits(got[key], expected_cast(t, torch.float16)), key
    model = torchvision.models.resnet34(weights=None)
    model.load_state_dict(got, strict=True)
    model.half().load_state_dict(got, strict=True)
    # the report
    assert report["written"] is True and report["verified"] is True
    cr = report["cast_report"]
    assert set(cr) >= REPORT_KEYS
    n_int = sum(1 for t in src.values() if not t.is_floating_point())
    assert (cr["dtype"], cr["cast"], cr["kept"]) == ("float16", len(src) - n_int, n_int)
    fp32 = sum(t.nbytes for t in src.values() if t.dtype == torch.float32)
    assert cr["bytes_before"] == {"float32": fp32, "int64": 8 * n_int}
    assert cr["bytes_after"] == {"float16": fp32 // 2, "int64": 8 * n_int}
    assert cr["total_before"] == fp32 + 8 * n_int
    assert cr["total_after"] == fp32 // 2 + 8 * n_int
    assert cr["overflow_total"] == 0 and cr["overflowing"] == []
    r = rows(cr)
    for key, t in src.items():  # random init has a few values below fp16's smallest subnormal
        assert r[key]["underflow"] == int(((t.half() == 0) & (t != 0)).sum()), key
    assert cr["underflow_total"] == sum(row["underflow"] for row in r.values())
    assert set(r) == set(src)
    assert all(set(row) >= ROW_KEYS for row in r.values())
    assert r["bn1.num_batches_tracked"]["from"] == r["bn1.num_batches_tracked"]["to"] == "int64"
    assert "not floating" in r["bn1.num_batches_tracked"]["reason"]
    assert (r["fc.weight"]["from"], r["fc.weight"]["to"]) == ("float32", "float16")
    # rel_error matches what the cast did
    w = src["layer1.0.conv1.weight"].double()
    want = ((w.half().double() - w).norm() / w.norm()).item()
    assert r["layer1.0.conv1.weight"]["rel_error"] == pytest.approx(want, rel=1e-6)
    assert 0 < r["layer1.0.conv1.weight"]["rel_error"] < 1e-3
    mods = {m["module"]: m["max_rel_error"] for m in cr["modules"]}
    assert {"layer1.0", "fc", "bn1", "conv1"} <= set(mods)
    assert mods["layer1.0"] >= r["layer1.0.conv1.weight"]["rel_error"]
    errs = [m["max_rel_error"] for m in cr["modules"]]
    assert errs == sorted(errs, reverse=True)


def test_resnet34_keep_norm_holds_batchnorm_in_fp32(resnet34_file: Path) -> None:
    out = resnet34_file.with_name("resnet34.keepnorm.pth")
    code, report = run_json(["cast", resnet34_file, "--dtype", "fp16", "--keep-norm", "-o", out])
    assert code == 0, report
    import torchvision

    model = torchvision.models.resnet34(weights=None)
    bn = {
        f"{name}.{leaf}"
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert "layer2.0.downsample.1.running_var" in bn  # found by its stats, not its name
    src, got = load(resnet34_file), load(out)
    for key, t in src.items():
        if key in bn:
            assert same_bits(got[key], t), key  # fp32 (int64 for the counter), untouched
        else:
            assert same_bits(got[key], t.half()), key
    r = rows(report["cast_report"])
    assert r["bn1.running_var"]["to"] == "float32"
    assert "norm" in r["bn1.running_var"]["reason"]
    model.load_state_dict(got, strict=True)


# --- which tensors change -----------------------------------------------------------------------


def test_integer_bool_and_index_buffers_keep_their_dtype(tmp_path: Path) -> None:
    sd = OrderedDict(
        [
            ("embeddings.position_ids", torch.arange(32).unsqueeze(0)),
            ("attn.relative_position_index", torch.randint(0, 50, (8, 8), dtype=torch.int32)),
            ("attn.mask", torch.rand(4, 4) > 0.5),
            ("quant.zero_point", torch.tensor([3, -7], dtype=torch.int8)),
            ("quant.codes", torch.randint(0, 255, (9,), dtype=torch.uint8)),
            ("bn.num_batches_tracked", torch.tensor(12)),
            ("proj.weight", torch.randn(5, 4)),
            ("proj.scale", torch.tensor(0.5, dtype=torch.float64)),
        ]
    )
    src = tmp_path / "mixed.pth"
    torch.save(sd, src)
    out = tmp_path / "mixed.bf16.pth"
    code, report = run_json(["cast", src, "--dtype", "bf16", "-o", out])
    assert code == 0, report
    got = load(out)
    assert list(got) == list(sd)
    for key, t in sd.items():
        assert same_bits(got[key], expected_cast(t, torch.bfloat16)), key
    cr = report["cast_report"]
    assert cr["cast"] == 2 and cr["kept"] == 6
    assert cr["bytes_after"]["bool"] == 16 and cr["bytes_after"]["bfloat16"] == 42


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_cast_values_equal_torch_to_bitwise_with_specials(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dtype = DTYPES[name]
    fi = torch.finfo(dtype)
    specials = torch.tensor(
        [
            0.0,
            -0.0,
            float("nan"),
            float("inf"),
            float("-inf"),
            1.0 / 3.0,
            fi.max,
            -fi.max,
            fi.max * 1.01,  # overflow (becomes inf for fp16; bf16 rounds or overflows)
            3.4e38,
            fi.tiny,
            fi.tiny / 8,  # subnormal in the target
            1e-30,  # underflow to zero in fp16
            -1e-30,
            65519.0,
            65520.0,
            1e-8,
        ],
        dtype=torch.float32,
    )
    torch.manual_seed(1)
    big = torch.randn(37, 11) * 1e3
    sd = {
        "specials": specials,
        "random": big,
        "transposed": big.t(),  # non-contiguous view of the same storage
        "sliced": big[3:9, 2:],  # offset + strided view
        "double": torch.randn(7, dtype=torch.float64) * 1e5,
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
    }
    src = tmp_path / "vals.pth"
    torch.save(sd, src)
    monkeypatch.setattr(cast_mod, "CHUNK_ELEMENTS", 5)  # many chunks per tensor
    out = tmp_path / f"vals.{name}.pth"
    code, report = run_json(["cast", src, "--dtype", name, "-o", out])
    assert code == 0, report
    got = load(out)
    r = rows(report["cast_report"])
    for key, t in load(src).items():
        want = t.to(dtype)
        assert same_bits(got[key], want), key
        finite = torch.isfinite(t)
        assert r[key]["overflow"] == int((finite & ~torch.isfinite(want)).sum()), key
        assert r[key]["underflow"] == int(((want == 0) & (t != 0)).sum()), key
    assert report["cast_report"]["overflow_total"] == sum(x["overflow"] for x in r.values())
    assert r["specials"]["overflow"] >= 1
    if name == "fp16":
        assert r["specials"]["underflow"] >= 2


def test_cast_up_from_fp16_and_fp16_to_bf16(tmp_path: Path) -> None:
    src = FIXTURES / "convnet_fp16.pth"
    sd = load(src)
    for name in ("fp32", "bf16"):
        out = tmp_path / f"c.{name}.pth"
        code, report = run_json(["cast", src, "--dtype", name, "-o", out])
        assert code == 0, report
        got = load(out)
        for key, t in sd.items():
            assert same_bits(got[key], expected_cast(t, DTYPES[name])), key
    # already in the target dtype: a copy would change nothing, so it is refused
    out = tmp_path / "c.same.pth"
    result = run_cli(["cast", src, "--dtype", "fp16", "-o", out])
    assert result.exit_code == 1 and not out.exists()
    assert "no tensor would change" in result.stderr and "already float16" in result.stderr


def test_keep_patterns_repeatable_and_unused_reported(tmp_path: Path) -> None:
    src = FIXTURES / "convnet_dataparallel.pth"  # keys start with module.
    out = tmp_path / "keep.pth"
    code, report = run_json(
        [
            "cast",
            src,
            "--dtype",
            "fp16",
            "--keep",
            "fc.*",  # matches the bare name under the module. prefix
            "--keep",
            "module.layer1.0.weight",
            "--keep",
            "nothing.matches.*",
            "-o",
            out,
        ]
    )
    assert code == 0, report
    got, sd = load(out), load(src)
    held = {"module.fc.weight", "module.fc.bias", "module.layer1.0.weight"}
    for key, t in sd.items():
        assert same_bits(got[key], t if key in held else expected_cast(t, torch.float16)), key
    r = rows(report["cast_report"])
    assert "--keep fc.*" in r["module.fc.weight"]["reason"]
    assert r["module.fc.weight"]["to"] == "float32"
    assert report["cast_report"]["unused_keep_patterns"] == ["nothing.matches.*"]


NORM_MODEL_KEYS = {
    # (key, shape, is_norm)
    "gpt.h.0.ln_1.weight": ((8,), True),
    "gpt.h.0.ln_1.bias": ((8,), True),
    "gpt.ln_f.weight": ((8,), True),
    "vit.blocks.0.norm1.weight": ((8,), True),
    "t5.final_layer_norm.weight": ((8,), True),
    "conv.gn.weight": ((8,), True),
    "conv.gn.bias": ((8,), True),
    "bert.encoder.layer.0.output.LayerNorm.weight": ((8,), True),
    "bert.encoder.layer.0.output.LayerNorm.bias": ((8,), True),
    "llama.layers.0.input_layernorm.weight": ((8,), True),
    "llama.layers.0.post_attention_layernorm.weight": ((8,), True),
    "gpt.h.0.mlp.c_fc.bias": ((8,), False),
    "vit.blocks.0.attn.proj.bias": ((8,), False),
    "vit.blocks.0.attn.proj.weight": ((8, 8), False),
    "head.weight": ((3, 8), False),
}


@pytest.mark.parametrize("key", sorted(NORM_MODEL_KEYS))
def test_keep_norm_finds_layernorm_groupnorm_by_name(key: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = {k: torch.randn(*shape) for k, (shape, _) in NORM_MODEL_KEYS.items()}
    src = tmp_path / "norms.pth"
    torch.save(sd, src)
    code, report = run_json(["cast", src, "--dtype", "bf16", "--keep-norm", "--dry-run"])
    assert code == 0, report
    row = rows(report["cast_report"])[key]
    want = "float32" if NORM_MODEL_KEYS[key][1] else "bfloat16"
    assert row["to"] == want, f"{key}: {row['reason']}"


def test_keep_norm_upcasts_fp16_norms_to_fp32(tmp_path: Path) -> None:
    src = FIXTURES / "convnet_fp16.pth"
    out = tmp_path / "kn.pth"
    code, report = run_json(["cast", src, "--dtype", "bf16", "--keep-norm", "-o", out])
    assert code == 0, report
    got = load(out)
    for key, t in load(src).items():
        if key.startswith(("layer1.1.", "layer2.1.")):  # the BatchNorm layers
            want = t.float() if t.is_floating_point() else t
        else:
            want = t.to(torch.bfloat16)
        assert same_bits(got[key], want), key
    assert rows(report["cast_report"])["layer1.1.running_var"]["reason"] == (
        "norm layer held in float32"
    )


# --- overflow / underflow -----------------------------------------------------------------------


def overflow_sd() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        [
            ("conv.weight", torch.randn(4, 3)),
            ("bn.weight", torch.ones(4)),
            ("bn.bias", torch.zeros(4)),
            ("bn.running_mean", torch.zeros(4)),
            ("bn.running_var", torch.tensor([1.0, 1e6, 7e4, 1e-9])),
            ("bn.num_batches_tracked", torch.tensor(5)),
        ]
    )


def test_overflow_and_underflow_reported_per_tensor(tmp_path: Path) -> None:
    src = tmp_path / "ov.pth"
    torch.save(overflow_sd(), src)
    out = tmp_path / "ov.fp16.pth"
    code, report = run_json(["cast", src, "--dtype", "fp16", "-o", out])
    assert code == 0, report
    cr = report["cast_report"]
    assert cr["overflow_total"] == 2 and cr["underflow_total"] == 1
    assert cr["overflowing"] == ["bn.running_var"]
    r = rows(cr)
    assert (r["bn.running_var"]["overflow"], r["bn.running_var"]["underflow"]) == (2, 1)
    assert r["conv.weight"]["overflow"] == 0
    got = load(out)["bn.running_var"]
    assert same_bits(got, overflow_sd()["bn.running_var"].half())
    assert torch.isinf(got).sum() == 2
    # the human report warns (stderr) and shows the counts
    out2 = tmp_path / "ov2.fp16.pth"
    res = run_cli(["cast", src, "--dtype", "fp16", "-o", out2])
    assert res.exit_code == 0
    assert "overflow" in res.stderr and "bn.running_var" in res.stderr
    assert "overflow 2" in res.stdout and "underflow" in res.stdout


def test_strict_overflow_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "ov.pth"
    torch.save(overflow_sd(), src)
    before = listing(tmp_path)
    res = run_cli(["cast", src, "--dtype", "fp16", "--strict", "-o", tmp_path / "s.pth"])
    assert res.exit_code == 3
    line = one_error_line(res)
    assert "bn.running_var" in line and "--strict" in line
    assert listing(tmp_path) == before  # no output, no temp file
    res = run_cli(["cast", src, "--dtype", "fp16", "--strict"])  # derived output name
    assert res.exit_code == 3 and listing(tmp_path) == before
    # holding the norm layer in fp32 makes it pass
    code, report = run_json(
        ["cast", src, "--dtype", "fp16", "--strict", "--keep-norm", "-o", tmp_path / "k.pth"]
    )
    assert code == 0 and report["cast_report"]["overflow_total"] == 0
    assert same_bits(load(tmp_path / "k.pth")["bn.running_var"], overflow_sd()["bn.running_var"])


def test_dry_run_writes_nothing_but_reports_stats(tmp_path: Path) -> None:
    src = tmp_path / "ov.pth"
    torch.save(overflow_sd(), src)
    before = listing(tmp_path)
    code, report = run_json(["cast", src, "--dtype", "fp16", "--dry-run"])
    assert code == 0, report
    assert report["dry_run"] is True and report["written"] is False
    assert report["output"].endswith("ov.fp16.pth")
    cr = report["cast_report"]
    assert cr["overflow_total"] == 2 and cr["underflow_total"] == 1
    assert cr["total_before"] == 4 * 28 + 8 and cr["total_after"] == 2 * 28 + 8
    assert rows(cr)["conv.weight"]["rel_error"] > 0
    assert listing(tmp_path) == before
    res = run_cli(["cast", src, "--dtype", "fp16", "--dry-run", "--strict"])
    assert res.exit_code == 3 and listing(tmp_path) == before


# --- containers survive -------------------------------------------------------------------------


def test_training_checkpoint_keeps_container(tmp_path: Path) -> None:
    src = FIXTURES / "lightning.ckpt"
    out = tmp_path / "l.fp16.ckpt"
    code, report = run_json(["cast", src, "--dtype", "fp16", "-o", out])
    assert code == 0, report
    a, b = load(src), load(out)
    assert list(b) == list(a)
    for key in a:
        if key != "state_dict":
            assert_same_tree(a[key], b[key])
    for key, t in a["state_dict"].items():
        assert same_bits(b["state_dict"][key], expected_cast(t, torch.float16)), key
    # optimizer state is not cast
    exp = a["optimizer_states"][0]["state"][0]["exp_avg"]
    assert b["optimizer_states"][0]["state"][0]["exp_avg"].dtype == exp.dtype == torch.float32


def test_timm_weights_option_casts_only_the_chosen_set(tmp_path: Path) -> None:
    src = FIXTURES / "timm_train.pth.tar"
    out = tmp_path / "t.pth.tar"
    code, report = run_json(
        ["cast", src, "--dtype", "bf16", "--weights", "state_dict_ema", "-o", out]
    )
    assert code == 0, report
    a, b = load(src), load(out)
    assert list(b) == list(a)
    assert b["args"] == a["args"] and isinstance(b["args"], argparse.Namespace)
    assert_same_tree(a["state_dict"], b["state_dict"])
    assert_same_tree(a["optimizer"], b["optimizer"])
    for key, t in a["state_dict_ema"].items():
        assert same_bits(b["state_dict_ema"][key], t.to(torch.bfloat16)), key


def test_freeze_state_and_parameters_survive(tmp_path: Path) -> None:
    src = FIXTURES / "convnet_frozen.pth"
    out = tmp_path / "f.pth"
    code, _ = run_json(["cast", src, "--dtype", "fp16", "-o", out])
    assert code == 0
    a, b = load(src), load(out)
    for key, t in a.items():
        assert type(b[key]) is type(t), key
        assert b[key].requires_grad == t.requires_grad, key
        assert same_bits(b[key], expected_cast(t, torch.float16)), key


def test_tied_weights_stay_tied_after_cast(tmp_path: Path) -> None:
    model = TiedLM()
    src = tmp_path / "tied.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "tied.fp16.pth"
    code, report = run_json(["cast", src, "--dtype", "fp16", "-o", out])
    assert code == 0, report
    got = load(out)
    assert same_bits(got["embed.weight"], model.embed.weight.half())
    assert got["lm_head.weight"].untyped_storage().data_ptr() == (
        got["embed.weight"].untyped_storage().data_ptr()
    ), "tied weights were written as two copies"


def test_whole_pickled_model_is_cast_to_a_state_dict(tmp_path: Path) -> None:
    out = tmp_path / "w.pth"
    code, report = run_json(["cast", FIXTURES / "convnet_whole.pth", "--dtype", "fp16", "-o", out])
    assert code == 0, report
    got = load(out)
    assert len(got) == 16 and got["layer1.1.num_batches_tracked"].dtype == torch.int64
    assert got["fc.weight"].dtype == torch.float16
    assert any("state_dict" in n for n in report["notes"])


class TiedLM(nn.Module):
    """Hugging Face style: lm_head shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(40, 8)
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 40, bias=False)
        self.lm_head.weight = self.embed.weight


def assert_same_tree(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and same_bits(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_dtype_is_a_usage_error(tmp_path: Path) -> None:
    before = listing(tmp_path)
    for bad in ("int8", "fp4", "xx"):
        res = run_cli(["cast", FIXTURES / "mlp.pth", "--dtype", bad, "-o", tmp_path / "o.pth"])
        assert res.exit_code == 2, bad
        assert "unknown dtype" in one_error_line(res)
    assert listing(tmp_path) == before


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "o.pth"
    out.write_bytes(b"precious")
    res = run_cli(["cast", FIXTURES / "mlp.pth", "--dtype", "fp16", "-o", out])
    assert res.exit_code == 1
    assert "--force" in one_error_line(res)
    assert out.read_bytes() == b"precious" and listing(tmp_path) == {"o.pth"}
    res = run_cli(["cast", FIXTURES / "mlp.pth", "--dtype", "fp16", "-o", out, "--force"])
    assert res.exit_code == 0
    assert load(out)["fc1.weight"].dtype == torch.float16


def test_unsupported_extension_and_corrupt_input(tmp_path: Path) -> None:
    res = run_cli(["cast", FIXTURES / "mlp.pth", "--dtype", "fp16", "-o", tmp_path / "o.txt"])
    assert res.exit_code == 2 and "extension" in one_error_line(res)  # a usage error
    bad = tmp_path / "bad.pth"
    bad.write_bytes((FIXTURES / "mlp.pth").read_bytes()[:5000])
    before = listing(tmp_path)
    res = run_cli(["cast", bad, "--dtype", "fp16", "-o", tmp_path / "o.pth"])
    assert res.exit_code == 1 and "bad.pth" in one_error_line(res)
    assert listing(tmp_path) == before


def test_bf16_to_fp16_and_nan_payloads_bitwise_like_torch(tmp_path: Path) -> None:
    """Every bf16 bit pattern, and float32 NaNs with payloads in every position, cast to fp16
    by the numpy path equal torch's .to(float16) bit for bit (NaNs quieted as torch does),
    and the bf16 -> fp16 cast does not import torch."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    every_bf16 = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    nan_payloads = (torch.arange(1, 1 << 23, 997, dtype=torch.int32) | 0x7F800000).view(
        torch.float32
    )
    cases = {
        "bf16": every_bf16,
        "f32": torch.cat([every_bf16.float(), nan_payloads, -nan_payloads]),
    }
    for name, t in cases.items():
        src, dst = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.fp16.safetensors"
        save_file({"w": t.clone()}, str(src))
        code = (
            "import sys, ckpt_tool; ckpt_tool.cast(sys.argv[1], 'fp16', output=sys.argv[2]); "
            "print('torch' in sys.modules)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(src), str(dst)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == "False", name
        got = load_file(str(dst))["w"]
        assert torch.equal(got.view(torch.int16), t.to(torch.float16).view(torch.int16)), name


def test_bf16_to_fp16_of_weights_in_range(tmp_path: Path) -> None:
    """bf16 weights with no value past fp16's range take the integer path (exact rebiasing,
    numpy's rounding for the values below fp16's smallest normal): every such bit pattern and
    a realistic weight cast as torch casts them, with the underflow and error torch's cast
    gives, without importing torch."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    patterns = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
    finite = patterns[(patterns.int() & 0x7FFF) < (143 << 7)].view(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(3 << 20, generator=g) * 0.02).to(torch.bfloat16)  # three chunks
    weight[::97] = 0
    src = {"patterns": finite.clone(), "weight": weight}
    path, out = tmp_path / "bf16.safetensors", tmp_path / "fp16.safetensors"
    save_file(src, str(path))
    code = (
        "import sys, json, ckpt_tool; r = ckpt_tool.cast(sys.argv[1], 'fp16', output=sys.argv[2]);"
        " print(json.dumps(r.to_json()['cast_report']['tensors'])); print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out)], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    rows_json, imported = done.stdout.strip().splitlines()
    assert imported == "False"
    got = load_file(str(out))
    report = {row["key"]: row for row in json.loads(rows_json)}
    for key, t in src.items():
        want = t.to(torch.float16)
        assert torch.equal(got[key].view(torch.int16), want.view(torch.int16)), key
        assert report[key]["underflow"] == int(((want == 0) & (t != 0)).sum()), key
        w = t.double()
        rel = ((want.double() - w).norm() / w.norm()).item()
        assert report[key]["rel_error"] == pytest.approx(rel, rel=1e-6, abs=1e-12), key
    assert report["weight"]["underflow"] > 0  # values flushed to zero: counted


def test_bf16_to_fp16_integer_path_takes_what_it_can() -> None:
    """In range (with zeros and values below fp16's normal range): taken; any value past
    fp16's range, Inf or NaN: left to the general path, y untouched."""
    import numpy as np

    def run(values: list[float]) -> bool:
        t = torch.tensor(values, dtype=torch.bfloat16).view(torch.int16).numpy()
        raw = np.frombuffer(t.tobytes(), dtype=np.uint8)
        scratch = cast_mod._Scratch.get(raw.size, t.size)
        x = cast_mod._np_values(raw, "bfloat16", scratch)
        y = np.full(t.size, 7, dtype="<f2")
        taken = cast_mod._bf16_to_f16(raw, x, y, scratch, cast_mod.CastStats())
        assert taken or (y == 7).all()
        return taken

    assert run([0.0, -0.0, 1.5, -3.0e-6, 1e-9, 60000.0])
    for bad in (70000.0, float("inf"), float("nan")):
        assert not run([1.0, bad])
