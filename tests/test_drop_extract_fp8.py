"""`ckpt drop`, `ckpt extract --keep/--strip-prefix` and the fp8 casts, end to end.

Checkpoints are built here from seeded models (a backbone/head net trained one AdamW step, a
torchvision resnet18 trunk under `backbone.`, a tiny language model with an embedding) and
every output is read back the way a user would: torch.load(weights_only=True) or
safetensors.torch.load_file, load_state_dict(strict=True), and bitwise comparisons.

fp8 reference: the tool saturates, then uses torch's own conversion, so every cast tensor must
be bit for bit `t.clamp(-max, max).to(float8)` with max = torch.finfo(float8).max; NaN stays
NaN, ±inf saturates to ±max and is counted as saturated, like every value beyond the range.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli, run_json
from torch import nn

FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
FP8_NAMES = {torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}
CAST_REPORT_KEYS = {
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
    "saturated_total",
    "saturating",
    "scales",
    "modules",
    "unused_keep_patterns",
    "tensors",
}
ROW_KEYS = {"key", "from", "to", "reason", "overflow", "saturated", "underflow", "rel_error"}


# --- helpers ------------------------------------------------------------------------------------


def raw(t: torch.Tensor) -> torch.Tensor:
    """A tensor's values as bytes, in logical order (0-d, int64, fp8 ... all work)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bits(got: Any, want: torch.Tensor, name: str = "") -> None:
    assert isinstance(got, torch.Tensor), name
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(raw(got), raw(want)), f"{name}: bytes differ"


def assert_same_obj(got: Any, want: Any, path: str = "root") -> None:
    """Deep equality: containers and key order, bitwise tensors, plain values."""
    if isinstance(want, torch.Tensor):
        assert_bits(got, want, path)
    elif isinstance(want, dict):
        assert isinstance(got, dict), path
        assert list(got) == list(want), path
        for k in want:
            assert_same_obj(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_obj(a, b, f"{path}[{i}]")
    else:
        assert got == want and type(got) is type(want), path


def tload(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_in(v)]
    return []


def storage_bytes(obj: Any) -> int:
    """Bytes of the distinct storages the tensors in obj hold."""
    seen: dict[int, int] = {}
    for t in tensors_in(obj):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def refused(args: list[Any], folder: Path, match: str, code: int = 1) -> str:
    """A run that must fail: exit code, one `error:` line on stderr, nothing added or changed."""
    before = {p: sha256(folder / p) for p in listing(folder) if (folder / p).is_file()}
    result = run_cli([str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines
    assert match in lines[0], lines[0]
    assert listing(folder) == sorted(before)
    assert {p: sha256(folder / p) for p in before} == before
    return lines[0]


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in report["tensors"]}


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def bytes_by_dtype(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in sd.values():
        out[dtype_name(t)] = out.get(dtype_name(t), 0) + t.nbytes
    return out


# --- models -------------------------------------------------------------------------------------


class Net(nn.Module):
    """A backbone (with BatchNorm) and two heads."""

    def __init__(self, aux: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16)
        )
        self.head = nn.Linear(16, 4)
        self.aux_head = nn.Linear(16, 2) if aux else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        out = self.head(h).sum()
        return out + self.aux_head(h).sum() if self.aux_head is not None else out


def trained_net() -> tuple[Net, torch.optim.Optimizer, Any]:
    """Net after one real AdamW step (so the optimizer holds exp_avg/exp_avg_sq/step)."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model.train()
    model(torch.randn(4, 8)).backward()
    opt.step()
    sched.step()
    return model, opt, sched


@pytest.fixture
def net_files(tmp_path: Path) -> dict[str, Any]:
    """The same trained Net as a state_dict .pth, a .safetensors and a training checkpoint."""
    from safetensors.torch import save_file

    model, opt, sched = trained_net()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "sd.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "sd.safetensors")
    train = {
        "state_dict": sd,
        "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "callbacks": {"ModelCheckpoint": {"best_model_score": 0.25, "monitor": "val_loss"}},
        "epoch": 3,
        "global_step": 30,
    }
    torch.save(train, tmp_path / "train.ckpt")
    return {"dir": tmp_path, "sd": sd, "train": train}


# --- drop: weights by pattern -------------------------------------------------------------------


def test_drop_weight_glob_from_pth(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    src, sd = folder / "sd.pth", net_files["sd"]
    src_sha = sha256(src)
    out = folder / "slim.pth"
    code, rep = run_json(["drop", src, "aux_head.*", "-o", out])
    assert code == 0, rep
    assert rep["command"] == "drop" and rep["written"] is True and rep["verified"] is True
    assert rep["output"] == str(out) and rep["format"] == "pth"
    assert rep["dropped_keys"] == ["aux_head.weight", "aux_head.bias"]
    assert rep["dropped_entries"] == []
    assert rep["bytes_saved"] == sd["aux_head.weight"].nbytes + sd["aux_head.bias"].nbytes == 136
    assert rep["tensors"] == len(sd) - 2
    assert "2 weight keys" in rep["notes"][0] and "136 bytes" in rep["notes"][0]
    got = tload(out)
    want = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("aux_head."))
    assert_same_obj(dict(got), dict(want))
    assert int(got["backbone.1.num_batches_tracked"]) == 1
    assert got["backbone.1.num_batches_tracked"].dtype == torch.int64
    Net(aux=False).load_state_dict(got, strict=True)
    assert sha256(src) == src_sha  # the input is untouched


def test_drop_several_globs_from_safetensors(net_files: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    folder: Path = net_files["dir"]
    src, sd = folder / "sd.safetensors", net_files["sd"]
    out = folder / "slim.safetensors"
    code, rep = run_json(["drop", src, "aux_head.*", "head.bias", "-o", out])
    assert code == 0, rep
    assert rep["format"] == "safetensors" and rep["verified"] is True
    gone = {"aux_head.weight", "aux_head.bias", "head.bias"}
    assert set(rep["dropped_keys"]) == gone and len(rep["dropped_keys"]) == 3
    assert rep["dropped_entries"] == []
    assert rep["bytes_saved"] == sum(sd[k].nbytes for k in gone)
    got = load_file(out)
    assert set(got) == set(sd) - gone
    for k in got:
        assert_bits(got[k], sd[k], k)


# --- drop: training-checkpoint entries ----------------------------------------------------------


def test_drop_training_entries_keeps_everything_else(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    src, train = folder / "train.ckpt", net_files["train"]
    assert len(train["optimizer"]["state"]) == 10  # a real step: every parameter has state
    out = folder / "slim.ckpt"
    code, rep = run_json(["drop", src, "optimizer", "lr_scheduler", "callbacks", "-o", out])
    assert code == 0, rep
    assert rep["weights_key"] == "state_dict"
    assert rep["dropped_entries"] == ["optimizer", "lr_scheduler", "callbacks"]
    assert rep["dropped_keys"] == []
    # exp_avg + exp_avg_sq of 550 parameters (float32) and ten float32 `step` scalars
    assert rep["bytes_saved"] == storage_bytes(train["optimizer"]) == 2 * 550 * 4 + 10 * 4
    assert rep["tensors"] == len(train["state_dict"])
    assert "3 entries (optimizer, lr_scheduler, callbacks)" in rep["notes"][0]
    got = tload(out)
    assert list(got) == ["state_dict", "epoch", "global_step"]
    assert_same_obj(got, {k: train[k] for k in ("state_dict", "epoch", "global_step")})
    assert got["epoch"] == 3 and got["global_step"] == 30
    Net().load_state_dict(got["state_dict"], strict=True)


def test_drop_optimizer_only_keeps_scheduler_and_callbacks(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    train = net_files["train"]
    out = folder / "noopt.ckpt"
    code, rep = run_json(["drop", folder / "train.ckpt", "optimizer", "-o", out])
    assert code == 0, rep
    assert rep["dropped_entries"] == ["optimizer"]
    got = tload(out)
    assert_same_obj(got, {k: v for k, v in train.items() if k != "optimizer"})


def test_drop_entry_and_weight_glob_together(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    train = net_files["train"]
    sd = train["state_dict"]
    out = folder / "both.ckpt"
    code, rep = run_json(["drop", folder / "train.ckpt", "optimizer", "aux_head.*", "-o", out])
    assert code == 0, rep
    assert rep["dropped_entries"] == ["optimizer"]
    assert rep["dropped_keys"] == ["aux_head.weight", "aux_head.bias"]
    aux = [sd["aux_head.weight"], sd["aux_head.bias"]]
    assert rep["bytes_saved"] == storage_bytes(train["optimizer"]) + storage_bytes(aux)
    got = tload(out)
    want = {k: v for k, v in train.items() if k != "optimizer"}
    want["state_dict"] = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("aux_"))
    assert_same_obj(got, want)
    Net(aux=False).load_state_dict(got["state_dict"], strict=True)


# --- drop: refusals and dry run -----------------------------------------------------------------


def test_drop_pattern_matching_nothing_is_an_error(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    line = refused(["drop", folder / "sd.pth", "nope.*", "-o", folder / "o.pth"], folder, "nope")
    assert "matches nothing" in line
    # one good pattern does not excuse a bad one: still nothing written
    refused(
        ["drop", folder / "sd.pth", "aux_head.*", "nope", "-o", folder / "o.pth"],
        folder,
        "'nope' matches nothing",
    )
    refused(
        ["drop", folder / "train.ckpt", "optimizer", "scheduler", "-o", folder / "o.ckpt"],
        folder,
        "'scheduler' matches nothing",
    )
    refused(["drop", folder / "sd.safetensors", "x*", "-o", folder / "o.pth"], folder, "'x*'")


def test_drop_everything_is_refused(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    refused(["drop", folder / "sd.pth", "*", "-o", folder / "o.pth"], folder, "every weight")
    refused(
        ["drop", folder / "sd.safetensors", "backbone.*", "head.*", "aux_head.*"],
        folder,
        "every weight",
    )
    refused(["drop", folder / "train.ckpt", "*", "-o", folder / "o.ckpt"], folder, "every weight")
    # the weights entry itself is never dropped by name
    refused(["drop", folder / "train.ckpt", "state_dict"], folder, "matches nothing")


def test_drop_dry_run_writes_nothing(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    src = folder / "train.ckpt"
    before = {p: sha256(folder / p) for p in listing(folder)}
    code, rep = run_json(["drop", src, "optimizer", "callbacks", "--dry-run"])
    assert code == 0, rep
    assert rep["dry_run"] is True and rep["written"] is False
    assert rep["output"] == str(folder / "train.dropped.ckpt")
    assert rep["dropped_entries"] == ["optimizer", "callbacks"]
    assert rep["bytes_saved"] == storage_bytes(net_files["train"]["optimizer"])
    assert {p: sha256(folder / p) for p in listing(folder)} == before
    result = run_cli(["drop", str(folder / "sd.pth"), "aux_head.*", "--dry-run"])
    assert result.exit_code == 0 and "dry run" in result.stdout
    assert {p: sha256(folder / p) for p in listing(folder)} == before
    # and the real run writes the default name
    code, rep = run_json(["drop", src, "optimizer", "callbacks"])
    assert code == 0 and rep["written"] is True, rep
    assert listing(folder) == sorted([*before, "train.dropped.ckpt"])


def test_drop_existing_output_needs_force(net_files: dict[str, Any]) -> None:
    folder: Path = net_files["dir"]
    (folder / "o.pth").write_bytes(b"keep me")
    refused(["drop", folder / "sd.pth", "aux_head.*", "-o", folder / "o.pth"], folder, "--force")
    code, rep = run_json(
        ["drop", folder / "sd.pth", "aux_head.*", "-o", folder / "o.pth", "--force"]
    )
    assert code == 0, rep
    assert "aux_head.bias" not in tload(folder / "o.pth")


def test_drop_to_safetensors_names_only_what_would_be_lost(net_files: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    folder: Path = net_files["dir"]
    src = folder / "train.ckpt"
    line = refused(
        ["drop", src, "optimizer", "-o", folder / "w.safetensors"], folder, "would be lost"
    )
    assert "optimizer" not in line.split("would be lost")[0], line
    out = folder / "all.safetensors"
    code, rep = run_json(
        ["drop", src, "optimizer", "lr_scheduler", "callbacks", "epoch", "global_step", "-o", out]
    )
    assert code == 0, rep  # only the weights remain: a safetensors file holds all of it
    got = load_file(out)
    assert set(got) == set(net_files["sd"])
    for k, v in net_files["sd"].items():
        assert_bits(got[k], v, k)


# --- extract --keep / --strip-prefix ------------------------------------------------------------


def resnet_trunk() -> nn.Module:
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = resnet_trunk()
        self.head = nn.Linear(512, 5)


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Detector]:
    """A resnet18 trunk under `backbone.` plus a head; a train-mode forward sets BN stats."""
    torch.manual_seed(0)
    model = Detector()
    model.train()
    with torch.no_grad():
        model.head(model.backbone(torch.randn(2, 3, 32, 32)))
    model.eval()
    path = tmp_path_factory.mktemp("detector") / "detector.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_extract_backbone_loads_strictly(
    detector_file: tuple[Path, Detector], tmp_path: Path, ext: str
) -> None:
    from safetensors.torch import load_file

    src, model = detector_file
    want = model.backbone.state_dict()
    out = tmp_path / f"backbone{ext}"
    args = ["extract", src, "--keep", "backbone.*", "--strip-prefix", "backbone.", "-o", out]
    code, rep = run_json(args)
    assert code == 0, rep
    assert rep["written"] is True and rep["verified"] is True
    assert rep["total_keys"] == rep["tensors"] == len(want) == 120
    assert rep["left_out"] == ["head.weight", "head.bias"]
    assert rep["strip_prefix"] == "backbone." and rep["dropped"] == []
    got = tload(out) if ext == ".pth" else load_file(out)
    if ext == ".pth":
        assert list(got) == list(want)
    assert set(got) == set(want)
    for k, v in want.items():
        assert_bits(got[k], v, k)
    assert int(got["bn1.num_batches_tracked"]) == 1
    trunk = resnet_trunk()
    trunk.load_state_dict(got, strict=True)
    trunk.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trunk(x), model.backbone(x))


def test_extract_keep_without_strip_keeps_the_names(
    detector_file: tuple[Path, Detector], tmp_path: Path
) -> None:
    src, model = detector_file
    out = tmp_path / "head.pth"
    code, rep = run_json(["extract", src, "--keep", "head.*", "-o", out])
    assert code == 0, rep
    assert rep["strip_prefix"] is None and len(rep["left_out"]) == 120
    got = tload(out)
    assert list(got) == ["head.weight", "head.bias"]
    assert_bits(got["head.weight"], model.head.weight.detach(), "head.weight")
    assert_bits(got["head.bias"], model.head.bias.detach(), "head.bias")


def test_extract_backbone_from_training_checkpoint(net_files: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    folder: Path = net_files["dir"]
    model, _, _ = trained_net()
    out = folder / "bb.safetensors"
    args = ["extract", folder / "train.ckpt", "--keep", "backbone.*", "--strip-prefix"]
    code, rep = run_json([*args, "backbone.", "-o", out])
    assert code == 0, rep
    assert rep["layout"] == "training" and rep["weights_key"] == "state_dict"
    assert rep["dropped"] == ["optimizer", "lr_scheduler", "callbacks", "epoch", "global_step"]
    got = load_file(out)
    for k, v in model.backbone.state_dict().items():
        assert_bits(got[k], v, k)
    fresh = Net().backbone
    fresh.load_state_dict(got, strict=True)


def test_extract_keep_matching_nothing_is_an_error(
    detector_file: tuple[Path, Detector], tmp_path: Path
) -> None:
    src, _ = detector_file
    line = refused(["extract", src, "--keep", "neck.*", "-o", tmp_path / "o.pth"], tmp_path, "")
    assert "'neck.*' matches no key" in line
    # every --keep must match, even when another one does
    refused(
        ["extract", src, "--keep", "backbone.*", "--keep", "neck.*", "-o", tmp_path / "o.pth"],
        tmp_path,
        "'neck.*' matches no key",
    )


def test_extract_strip_prefix_that_is_not_a_prefix_is_an_error(
    detector_file: tuple[Path, Detector], tmp_path: Path
) -> None:
    src, _ = detector_file
    out = tmp_path / "o.pth"
    refused(
        ["extract", src, "--keep", "backbone.*", "--strip-prefix", "head.", "-o", out],
        tmp_path,
        "no key starts with head.",
    )
    # a prefix only some of the kept keys carry
    line = refused(
        ["extract", src, "--keep", "*", "--strip-prefix", "backbone.", "-o", out],
        tmp_path,
        "120 of 122 keys start with backbone.",
    )
    assert "'head.weight'" in line


def test_extract_strip_prefix_error_suggests_only_real_options(
    detector_file: tuple[Path, Detector], tmp_path: Path
) -> None:
    src, _ = detector_file
    out = tmp_path / "o.pth"
    line = refused(
        ["extract", src, "--keep", "*", "--strip-prefix", "backbone.", "-o", out],
        tmp_path,
        "backbone.",
    )
    assert "--partial" not in line  # strip-module's option; extract narrows with --keep
    assert "--keep 'backbone.*'" in line


def test_extract_strip_prefix_without_dot_gives_loadable_keys(
    detector_file: tuple[Path, Detector], tmp_path: Path
) -> None:
    src, _ = detector_file
    out = tmp_path / "o.pth"
    result = run_cli(
        ["extract", str(src), "--keep", "backbone.*", "--strip-prefix", "backbone", "-o", str(out)]
    )
    if result.exit_code == 0:  # either read as 'backbone.' ...
        got = tload(out)
        assert not any(k.startswith(".") for k in got), list(got)[:3]
        resnet_trunk().load_state_dict(got, strict=True)
    else:  # ... or refused, writing nothing
        assert result.exit_code == 1 and not out.exists()


# --- fp8 ----------------------------------------------------------------------------------------


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.proj = nn.Linear(16, 24)
        self.norm = nn.LayerNorm(24)
        self.out = nn.Linear(24, 8)


MATRICES = ["proj.weight", "out.weight"]
KEPT_1D = ["proj.bias", "norm.weight", "norm.bias", "out.bias"]


def tiny_lm_sd(planted: bool = True, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """TinyLM's state_dict; `planted` puts values beyond both fp8 ranges, ±inf, NaN and tiny
    values into proj.weight."""
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.1, 0.1)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if planted:
        w = sd["proj.weight"]
        w[0, :8] = torch.tensor([1000.0, -70000.0, 448.0, 464.0, -480.0, 2.0**-10, -(2.0**-12), 0])
        w[1, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    return {k: v.to(dtype) for k, v in sd.items()}


def fp8_reference(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mx = torch.finfo(dtype).max
    return t.clamp(-mx, mx).to(dtype)


@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_cast_is_torch_saturating_cast(
    tmp_path: Path, name: str, src_dtype: torch.dtype
) -> None:
    target = FP8[name]
    mx = torch.finfo(target).max
    src = tmp_path / "lm.pth"
    sd = tiny_lm_sd(dtype=src_dtype)
    torch.save(sd, src)
    out = tmp_path / "lm.fp8.pth"
    result = run_cli(["cast", str(src), "--dtype", name, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    rep = json.loads(result.stdout)
    assert "saturated" in result.stderr and "proj.weight" in result.stderr  # a warning
    got = tload(out)
    assert list(got) == list(sd)
    for k in MATRICES:
        assert_bits(got[k], fp8_reference(sd[k], target), k)
    for k in ["embed.weight", *KEPT_1D]:
        assert_bits(got[k], sd[k], k)
    g = got["proj.weight"].float()
    # NaN stays NaN; ±inf and everything beyond the range saturate to ±max
    assert torch.isnan(g[1, 0]) and int(torch.isnan(g).sum()) == 1
    assert g[1, 1] == mx and g[1, 2] == -mx and g[0, 1] == -mx
    assert g[0, 0] == (mx if target == torch.float8_e4m3fn else 1024.0)  # 1000 fits e5m2
    assert not torch.isinf(g).any()
    cr = rep["cast_report"]
    assert set(cr) >= CAST_REPORT_KEYS
    assert cr["dtype"] == FP8_NAMES[target]
    assert (cr["cast"], cr["kept"]) == (2, 5)
    r = rows(cr)
    assert set(r) == set(sd) and all(set(row) >= ROW_KEYS for row in r.values())
    for k in MATRICES:
        beyond = int((sd[k].abs() > mx).sum())  # ±inf included, NaN not
        assert r[k]["saturated"] == beyond, k
        want = fp8_reference(sd[k], target).float()
        assert r[k]["underflow"] == int(((want == 0) & (sd[k] != 0)).sum()), k
        assert r[k]["overflow"] == 0
        assert (r[k]["from"], r[k]["to"]) == (dtype_name(sd[k]), FP8_NAMES[target])
    # e4m3fn: 1000, -70000, 464, -480, ±inf (448 is its max); e5m2: -70000 and ±inf
    assert r["proj.weight"]["saturated"] == (6 if target == torch.float8_e4m3fn else 3)
    assert r["out.weight"]["saturated"] == 0
    assert cr["saturated_total"] == r["proj.weight"]["saturated"]
    assert cr["saturating"] == ["proj.weight"]
    assert cr["overflow_total"] == 0 and cr["overflowing"] == []
    assert cr["scales"] == {}
    assert r["embed.weight"]["to"] == dtype_name(sd["embed.weight"])
    assert "embedding kept" in r["embed.weight"]["reason"]
    for k in KEPT_1D:
        assert "1-D tensor kept" in r[k]["reason"] and r[k]["to"] == r[k]["from"], k
    assert cr["bytes_before"] == bytes_by_dtype(sd)
    assert cr["bytes_after"] == bytes_by_dtype(got)
    assert cr["total_after"] == sum(t.nbytes for t in got.values()) < cr["total_before"]


def test_fp8_random_values_match_torch_bitwise(tmp_path: Path) -> None:
    """Many values across the whole range, both formats, against torch's own conversion."""
    torch.manual_seed(3)
    w = torch.randn(128, 128) * torch.logspace(-12, 18, 128, base=2.0)[:, None]
    src = tmp_path / "w.pth"
    torch.save({"w": w}, src)
    for name, target in FP8.items():
        out = tmp_path / f"{name}.pth"
        code, rep = run_json(["cast", src, "--dtype", name, "-o", out])
        assert code == 0, rep
        assert_bits(tload(out)["w"], fp8_reference(w, target), name)
        mx = torch.finfo(target).max
        assert rows(rep["cast_report"])["w"]["saturated"] == int((w.abs() > mx).sum()) > 0


def test_fp8_strict_refuses_out_of_range(tmp_path: Path) -> None:
    src = tmp_path / "lm.pth"
    torch.save(tiny_lm_sd(), src)
    for name in FP8:
        out = tmp_path / "o.pth"
        line = refused(
            ["cast", src, "--dtype", name, "--strict", "-o", out], tmp_path, "proj.weight", code=3
        )
        assert "--strict" in line and "nothing written" in line
        refused(
            ["convert", src, "-o", tmp_path / "o.safetensors", "--dtype", name, "--strict"],
            tmp_path,
            "proj.weight",
            code=3,
        )
    # --keep holds the offending tensor: then --strict passes
    out = tmp_path / "kept.pth"
    code, rep = run_json(["cast", src, "--dtype", "fp8", "--strict", "--keep", "proj.*", "-o", out])
    assert code == 0, rep
    # and an in-range checkpoint passes --strict
    clean = tmp_path / "clean.pth"
    torch.save(tiny_lm_sd(planted=False), clean)
    code, rep = run_json(
        ["cast", clean, "--dtype", "fp8_e5m2", "--strict", "-o", tmp_path / "c.pth"]
    )
    assert code == 0 and rep["cast_report"]["saturated_total"] == 0, rep


def test_fp8_keep_pattern_keeps_a_tensor(tmp_path: Path) -> None:
    src = tmp_path / "lm.pth"
    sd = tiny_lm_sd()
    torch.save(sd, src)
    out = tmp_path / "o.pth"
    code, rep = run_json(["cast", src, "--dtype", "fp8_e4m3fn", "--keep", "proj.*", "-o", out])
    assert code == 0, rep
    got = tload(out)
    assert_bits(got["proj.weight"], sd["proj.weight"], "proj.weight")
    assert_bits(got["out.weight"], fp8_reference(sd["out.weight"], torch.float8_e4m3fn), "out")
    cr = rep["cast_report"]
    r = rows(cr)
    assert r["proj.weight"]["reason"] == "kept by --keep proj.*"
    assert r["proj.weight"]["to"] == "float32" and r["proj.weight"]["saturated"] == 0
    assert cr["cast"] == 1 and cr["saturated_total"] == 0 and cr["unused_keep_patterns"] == []


def test_fp8_only_vectors_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "v.pth"
    torch.save({"bias": torch.randn(4), "norm.weight": torch.ones(3)}, src)
    refused(["cast", src, "--dtype", "fp8", "-o", tmp_path / "o.pth"], tmp_path, "1-D tensor kept")


@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_fp8_scale_tensors(tmp_path: Path, name: str, ext: str) -> None:
    from safetensors.torch import load_file

    target = FP8[name]
    mx = torch.finfo(target).max
    src = tmp_path / "lm.pth"
    sd = tiny_lm_sd()
    torch.save(sd, src)
    out = tmp_path / f"o{ext}"
    code, rep = run_json(["cast", src, "--dtype", name, "--fp8-scale", "-o", out])
    assert code == 0, rep
    got = tload(out) if ext == ".pth" else load_file(out)
    order = []
    for k in sd:
        order += [k, f"{k}_scale"] if k in MATRICES else [k]
    if ext == ".pth":
        assert list(got) == order  # each scale right after its tensor
    assert set(got) == set(order)
    cr = rep["cast_report"]
    assert cr["scales"] == {f"{k}_scale": k for k in MATRICES}
    for k in MATRICES:
        w, w8, scale = sd[k], got[k], got[f"{k}_scale"]
        assert w8.dtype == target
        assert scale.dtype == torch.float32 and scale.shape == ()
        amax = float(w[torch.isfinite(w)].abs().max())
        assert scale.item() == pytest.approx(amax / mx, rel=1e-6), k
        # the stored fp8 is exactly torch's saturating cast of w / scale
        assert_bits(w8, fp8_reference(w / scale, target), k)
        assert_bits(w8, fp8_reference(w / scale.item(), target), k)
        # and w8 * scale approximates w (over its finite values; NaN stays NaN)
        back = w8.float() * scale
        fin = torch.isfinite(w)
        assert torch.equal(torch.isnan(back), torch.isnan(w)), k
        rel = float((back - w)[fin].norm() / w[fin].norm())
        assert rel < 0.1, (k, rel)
        assert float(back[fin].abs().max()) == pytest.approx(amax, rel=0.07), k
    for k in ["embed.weight", *KEPT_1D]:
        assert_bits(got[k], sd[k], k)
        assert f"{k}_scale" not in got
    # with scaling, only ±inf is beyond the range
    assert rows(cr)["out.weight"]["saturated"] == 0


def test_fp8_scale_needs_an_fp8_dtype(tmp_path: Path) -> None:
    src = tmp_path / "lm.pth"
    torch.save(tiny_lm_sd(), src)
    refused(["cast", src, "--dtype", "fp16", "--fp8-scale"], tmp_path, "--fp8-scale", code=2)
    refused(
        ["convert", src, "-o", tmp_path / "o.safetensors", "--fp8-scale"],
        tmp_path,
        "--fp8-scale",
        code=2,
    )


def test_fp8_safetensors_output_loads_as_fp8(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = tmp_path / "lm.pth"
    sd = tiny_lm_sd()
    torch.save(sd, src)
    out = tmp_path / "lm.safetensors"
    code, rep = run_json(["cast", src, "--dtype", "fp8_e4m3fn", "-o", out])
    assert code == 0 and rep["format"] == "safetensors", rep
    got = load_file(out)
    assert got["proj.weight"].dtype == torch.float8_e4m3fn
    for k in MATRICES:
        assert_bits(got[k], fp8_reference(sd[k], torch.float8_e4m3fn), k)
    for k in ["embed.weight", *KEPT_1D]:
        assert_bits(got[k], sd[k], k)
    with safe_open(str(out), "pt") as f:
        assert f.get_slice("out.weight").get_dtype() == "F8_E4M3"


@pytest.mark.parametrize("name", list(FP8))
def test_convert_to_fp8_safetensors(tmp_path: Path, name: str) -> None:
    from safetensors.torch import load_file

    target = FP8[name]
    src = tmp_path / "lm.pth"
    sd = tiny_lm_sd()
    torch.save(sd, src)
    out = tmp_path / "x.safetensors"
    code, rep = run_json(["convert", src, "-o", out, "--dtype", name])
    assert code == 0, rep
    assert rep["verified"] is True
    got = load_file(out)
    assert set(got) == set(sd)
    for k in MATRICES:
        assert_bits(got[k], fp8_reference(sd[k], target), k)
    for k in ["embed.weight", *KEPT_1D]:
        assert_bits(got[k], sd[k], k)
    cr = rep["cast_report"]
    mx = torch.finfo(target).max
    assert rows(cr)["proj.weight"]["saturated"] == int((sd["proj.weight"].abs() > mx).sum())
    assert cr["saturating"] == ["proj.weight"] and cr["cast"] == 2
    # and back to .pth with the scales
    out2 = tmp_path / "x.pth"
    code, rep = run_json(["convert", src, "-o", out2, "--dtype", name, "--fp8-scale"])
    assert code == 0, rep
    got2 = tload(out2)
    assert got2["proj.weight"].dtype == target and got2["proj.weight_scale"].dtype == torch.float32


def test_fp8_rel_error_not_hidden_by_saturated_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 32) * 0.1
    w[0, 0], w[0, 1] = 1000.0, float("inf")
    src = tmp_path / "w.pth"
    torch.save({"layer.weight": w}, src)
    code, rep = run_json(["cast", src, "--dtype", "fp8_e4m3fn", "-o", tmp_path / "o.pth"])
    assert code == 0, rep
    row = rows(rep["cast_report"])["layer.weight"]
    assert row["saturated"] == 2
    y = fp8_reference(w, torch.float8_e4m3fn).float()
    ok = torch.isfinite(w) & (w.abs() <= 448)
    in_range = float((y - w)[ok].norm() / w[ok].norm())
    assert in_range > 0.01
    assert row["rel_error"] >= 0.5 * in_range, (row["rel_error"], in_range)


def test_fp8_scale_strict_accepts_scaled_tensor(tmp_path: Path) -> None:
    amax = 0.2938884496688843  # a float32 value whose scaled amax rounds above 448
    t = torch.tensor([amax], dtype=torch.float32)
    assert float((t / (float(t) / 448.0)).item()) > 448.0  # the precondition of this case
    torch.manual_seed(0)
    w = (torch.rand(16, 16) * 0.2 - 0.1).float()
    w[3, 5] = amax
    src = tmp_path / "w.pth"
    torch.save({"layer.weight": w}, src)
    code, rep = run_json(
        ["cast", src, "--dtype", "fp8_e4m3fn", "--fp8-scale", "-o", tmp_path / "a.pth"]
    )
    assert code == 0, rep
    assert rep["cast_report"]["saturated_total"] == 0
    out = tmp_path / "b.pth"
    code, rep = run_json(
        ["cast", src, "--dtype", "fp8_e4m3fn", "--fp8-scale", "--strict", "-o", out]
    )
    assert code == 0, rep
    assert out.exists()


def test_fp8_keeps_tied_embedding_and_head_together(tmp_path: Path) -> None:
    torch.manual_seed(0)
    embed = nn.Embedding(32, 16)
    head = nn.Linear(16, 32, bias=False)
    head.weight = embed.weight
    sd = OrderedDict(
        [
            ("embed_tokens.weight", embed.weight.detach()),
            ("proj.weight", torch.randn(16, 16)),
            ("lm_head.weight", head.weight.detach()),
        ]
    )
    assert sd["embed_tokens.weight"].data_ptr() == sd["lm_head.weight"].data_ptr()
    src = tmp_path / "tied.pth"
    torch.save(sd, src)
    out = tmp_path / "o.pth"
    code, rep = run_json(["cast", src, "--dtype", "fp8_e4m3fn", "-o", out])
    assert code == 0, rep
    got = tload(out)
    a, b = got["embed_tokens.weight"], got["lm_head.weight"]
    assert a.dtype == b.dtype
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
