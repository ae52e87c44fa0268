"""`inspect --stats` in chunks: every dtype the chunked path decodes, tensors split over many
chunks, NaN/Inf, and the figures against torch's own float64 reductions of the whole tensor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import ckpt_tool
from ckpt_tool import stats as stats_mod

FP8 = ("float8_e4m3fn", "float8_e5m2")


def _expected(t: torch.Tensor) -> dict[str, Any]:
    x = t.abs().double() if t.is_complex() else t.double()
    finite = x[torch.isfinite(x)]
    out: dict[str, Any] = {
        "nan": int(torch.isnan(x).sum()),
        "inf": int(torch.isinf(x).sum()),
    }
    if finite.numel():
        out |= {
            "min": float(finite.min()),
            "max": float(finite.max()),
            "mean": float(finite.mean()),
            "std": float(finite.std()) if finite.numel() > 1 else 0.0,
        }
    return out


def _assert_close(got: dict[str, Any], want: dict[str, Any], key: str) -> None:
    assert (got["nan"], got["inf"]) == (want["nan"], want["inf"]), key
    for field in ("min", "max"):
        if field in want and key.startswith("c"):  # |z|: float64 here, complex64 in torch
            assert got[field] == pytest.approx(want[field], rel=1e-6), (key, field)
        elif field in want:
            assert got[field] == want[field], (key, field)  # exact: no arithmetic involved
    rel = 1e-6 if key.startswith("c") else 1e-12
    for field in ("mean", "std"):
        if field in want:
            assert got[field] == pytest.approx(want[field], rel=rel, abs=1e-15), (key, field)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3000, 7, generator=g) * 3 + 0.5
    special = base.clone()
    special[5, 1], special[100, 2], special[2999, 6] = float("nan"), float("inf"), -float("inf")
    out = {
        "f32": base,
        "f32_special": special,
        "f64": base.double() * 1e6,
        "f16": base.half(),
        "bf16": special.bfloat16(),
        "i64": torch.randint(-(2**40), 2**40, (5000,), generator=g),
        "i8": torch.randint(-128, 127, (4096,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (999,), generator=g, dtype=torch.uint8),
        "flags": torch.rand(777, generator=g) > 0.3,
        "c64": torch.randn(1000, generator=g, dtype=torch.complex64),
        "scalar": torch.tensor(2.5),
        "one": torch.tensor([7.0]),
        "all_nan": torch.full((10,), float("nan")),
        "empty": torch.empty(0, 3),
    }
    for name in FP8:
        dtype = getattr(torch, name)
        out[name] = (base * 10).clamp(-400, 400).to(dtype)
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("stats") / "all.pth"
    sd = _tensors()
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("chunk", [1 << 20, 1000, 37])
def test_chunked_stats_equal_whole_tensor_reductions(
    saved: tuple[Path, dict[str, torch.Tensor]], chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same figures whether a tensor is one chunk or hundreds (37 elements each)."""
    monkeypatch.setattr(stats_mod, "CHUNK_ELEMENTS", chunk)
    path, sd = saved
    report = ckpt_tool.inspect(path, stats=True)
    got = {t["key"]: t["stats"] for t in report.data["tensors"]}
    assert list(got) == list(sd)
    for key, t in sd.items():
        _assert_close(got[key], _expected(t), key)
    assert got["empty"] == {"min": None, "max": None, "mean": None, "std": None, "nan": 0, "inf": 0}
    assert got["all_nan"]["nan"] == 10 and got["all_nan"]["min"] is None


def test_fp8_tables_decode_like_torch() -> None:
    every = torch.arange(256, dtype=torch.uint8)
    for name in FP8:
        want = every.view(getattr(torch, name)).float().numpy()
        got = stats_mod.fp8_table(name)
        assert got.tobytes() == want.tobytes() or (
            # NaN payloads may differ; everything else bit for bit
            ((got == want) | (got != got) & (want != want)).all()
        ), name


def test_safetensors_and_views_and_quantized(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    st = tmp_path / "w.safetensors"
    tensors = {"a": torch.randn(500, 3, generator=g).bfloat16(), "b": torch.randn(40, generator=g)}
    save_file(tensors, st)
    got = {t["key"]: t["stats"] for t in ckpt_tool.inspect(st, stats=True).data["tensors"]}
    for key, t in tensors.items():
        _assert_close(got[key], _expected(t), key)
    # a strided view and a quantized tensor go through torch, whole
    w = torch.randn(8, 6, generator=g)
    q = torch.quantize_per_tensor(torch.randn(20, generator=g), 0.05, 3, torch.qint8)
    sd = {"view": w.t(), "q": q}
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    got = {t["key"]: t["stats"] for t in ckpt_tool.inspect(path, stats=True).data["tensors"]}
    _assert_close(got["view"], _expected(w.t()), "view")
    _assert_close(got["q"], _expected(q.dequantize()), "q")


def test_stats_of_plain_tensors_do_not_import_torch(
    saved: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, _ = saved
    code = (
        "import sys, ckpt_tool; r = ckpt_tool.inspect(sys.argv[1], stats=True); "
        "print(len(r.data['tensors']), 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [str(len(_tensors())), "False"]


def test_truncated_file_is_one_clear_error(tmp_path: Path) -> None:
    """Storages checked at load; a file that shrinks between load and stats still fails by
    name, not with a traceback."""
    path = tmp_path / "big.pth"
    torch.save({"w": torch.zeros(1 << 18)}, path)
    ckpt = ckpt_tool.load(path)
    with open(path, "r+b") as f:
        f.truncate(4096)
    from ckpt_tool.errors import CkptError

    with pytest.raises(CkptError, match="w"):
        stats_mod.tensor_stats(ckpt, list(ckpt.tensors.values()))
