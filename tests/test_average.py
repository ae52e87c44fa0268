"""`ckpt average`: float64 weight averaging, integer buffers from the last file, mismatches."""

from __future__ import annotations

import shutil
from pathlib import Path

import hostile_files as H
import pytest
import torch
from conftest import FIXTURES, run_cli, run_json

FROZEN = FIXTURES / "convnet_frozen.pth"


def _bits(t: torch.Tensor) -> bytes:
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def test_average_of_copies_is_bit_exact(tmp_path: Path) -> None:
    paths = []
    for name in ("e1.pth", "e2.pth", "e3.pth"):
        shutil.copy(FROZEN, tmp_path / name)
        paths.append(tmp_path / name)
    code, r = run_json(["average", *paths])
    assert code == 0, r
    out = tmp_path / "e1.avg.pth"
    assert r["output"] == str(out) and r["verified"]
    assert sorted(r["from_last"]) == [
        "layer1.1.num_batches_tracked",
        "layer2.1.num_batches_tracked",
    ]
    assert any("last file" in n for n in r["notes"])
    src = torch.load(FROZEN, weights_only=True)
    got = torch.load(out, weights_only=True)
    assert list(got) == list(src)
    for k, v in src.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert _bits(got[k]) == _bits(v), k
    assert got["layer1.1.num_batches_tracked"].dtype == torch.int64
    # the same, checked by diff
    assert run_json(["diff", FROZEN, out])[0] == 0


def test_coef_weighting_and_integer_buffers(tmp_path: Path) -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([0.5], dtype=torch.float16),
         "n": torch.tensor(5)}  # fmt: skip
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([1.5], dtype=torch.float16),
         "n": torch.tensor(9)}  # fmt: skip
    pa, pb = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(a, pa)
    torch.save(b, pb)
    out = tmp_path / "avg.pth"
    code, r = run_json(["average", pa, pb, "--coef", "1,3", "-o", out])
    assert code == 0 and r["normalised_coef"] == [0.25, 0.75]
    got = torch.load(out, weights_only=True)
    assert got["w"].tolist() == [2.5, 5.0]  # (1*1 + 3*3)/4, (1*2 + 3*6)/4
    assert got["h"].dtype == torch.float16 and got["h"].tolist() == [1.25]
    assert got["n"].dtype == torch.int64 and int(got["n"]) == 9  # last file, not averaged
    # equal weights by default, to safetensors
    st = tmp_path / "avg.safetensors"
    code, r = run_json(["average", pa, pb, "-o", st])
    assert code == 0 and r["format"] == "safetensors"
    from safetensors.torch import load_file

    assert load_file(str(st))["w"].tolist() == [2.0, 4.0]
    # bad --coef: usage error
    assert run_json(["average", pa, pb, "--coef", "1", "-o", tmp_path / "x.pth"])[0] == 2
    assert run_json(["average", pa, pb, "--coef", "a,b", "-o", tmp_path / "x.pth"])[0] == 2


def test_mismatched_set_names_offending_keys(tmp_path: Path) -> None:
    sd = torch.load(FROZEN, weights_only=True)
    sd["fc.bias"] = torch.zeros(3)
    del sd["layer2.0.bias"]
    other = tmp_path / "other.pth"
    torch.save(sd, other)
    out = tmp_path / "avg.pth"
    result = run_cli(["average", FROZEN, other, "-o", out])
    assert result.exit_code == 1 and result.stdout == ""
    assert "layer2.0.bias" in result.stderr and "fc.bias" in result.stderr
    assert not out.exists()
    result = run_cli(["average", FIXTURES / "mlp.pth", FROZEN, "-o", out])
    assert result.exit_code == 1 and "fc1.weight" in result.stderr


def test_dangerous_input_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = H.zip_posix_system(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(["average", FROZEN, evil, "-o", tmp_path / "avg.pth"])
    assert result.exit_code == 3 and "ckpt scan" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not H.canary_path(tmp_path).exists()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    shutil.copy(FROZEN, tmp_path / "a.pth")
    shutil.copy(FROZEN, tmp_path / "b.pth")
    code, r = run_json(["average", tmp_path / "a.pth", tmp_path / "b.pth", "--dry-run"])
    assert code == 0 and r["dry_run"] and not r["written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]


def test_wrapper_prefix_removed_when_files_disagree(tmp_path: Path) -> None:
    """A DataParallel save (`module.` on every key) averages with a bare one: the prefix is
    removed, said in a note; files that all carry it keep it."""
    src = torch.load(FROZEN, weights_only=True)
    other = {k: (v * 3 if v.is_floating_point() else v) for k, v in src.items()}
    wrapped, bare = tmp_path / "dp.pth", tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in src.items()}, wrapped)
    torch.save(other, bare)
    out = tmp_path / "avg.pth"
    code, r = run_json(["average", wrapped, bare, "-o", out])
    assert code == 0, r
    assert any("dp.pth: removed the wrapper prefix 'module.'" in n for n in r["notes"])
    got = torch.load(out, weights_only=True)
    assert list(got) == list(src)
    for k, v in src.items():
        expected = (v.double() * 2).to(v.dtype) if v.is_floating_point() else other[k]
        assert torch.equal(got[k], expected), k
    both = tmp_path / "dp2.pth"
    torch.save({f"module.{k}": v for k, v in other.items()}, both)
    code, r = run_json(["average", wrapped, both, "-o", tmp_path / "avg2.pth"])
    assert code == 0, r
    assert not any("wrapper prefix" in n for n in r["notes"])
    assert all(k.startswith("module.") for k in torch.load(tmp_path / "avg2.pth"))
