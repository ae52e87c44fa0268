"""Readers: `ckpt_tool.load` metadata and `TensorReader` bytes agree with torch's own loaders.

References come from torch.load(weights_only=True), safetensors, torch.distributed.checkpoint and
(for the numpy pickles, which we made ourselves) pickle.load. Tensor comparisons are bitwise.
"""

from __future__ import annotations

import argparse
import json
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES
from torch import nn

import ckpt_tool
from ckpt_tool.errors import UnreadableCheckpoint, WeightsNotFound
from ckpt_tool.inspection import shared_groups, view_groups
from ckpt_tool.seed_models import ConvNet
from ckpt_tool.surgery.prefixes import detect_prefix
from ckpt_tool.tensors import TensorReader

# --- helpers ----------------------------------------------------------------------------------


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements as bytes in logical (row-major) order."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def assert_same_tensor(got: torch.Tensor, want: torch.Tensor, key: str) -> None:
    assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
    assert tuple(got.shape) == tuple(want.shape), (key, got.shape, want.shape)
    assert raw_bytes(got) == raw_bytes(want), f"{key}: bytes differ"


def assert_matches(
    ckpt: ckpt_tool.Checkpoint,
    ref: dict[str, torch.Tensor],
    check_order: bool = True,
    check_bytes: bool = True,
) -> None:
    """Keys (order), shapes, dtypes of the Checkpoint equal ref; every read is bit-identical."""
    if check_order:
        assert list(ckpt.tensors) == list(ref)
    else:
        assert sorted(ckpt.tensors) == sorted(ref)
    for key, want in ref.items():
        entry = ckpt.tensors[key]
        assert entry.key == key
        assert tuple(entry.record.shape) == tuple(want.shape), key
        assert entry.record.dtype == dtype_name(want), key
        assert entry.numel == want.numel(), key
        assert entry.nbytes == want.numel() * want.element_size(), key
    if check_bytes:
        with TensorReader(ckpt) as reader:
            for key, want in ref.items():
                assert_same_tensor(reader.read(ckpt.tensors[key]), want, key)


def tload(path: Path | str, **kw: Any) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, **kw)


def read_all(ckpt: ckpt_tool.Checkpoint) -> dict[str, torch.Tensor]:
    with TensorReader(ckpt) as reader:
        return {k: reader.read(e) for k, e in ckpt.tensors.items()}


# --- references for every committed fixture -----------------------------------------------------


def _ref_torch(name: str) -> dict[str, torch.Tensor]:
    return dict(tload(FIXTURES / name))


def _ref_training(name: str, key: str = "state_dict") -> dict[str, torch.Tensor]:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return dict(tload(FIXTURES / name)[key])


def _ref_safetensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(FIXTURES / name)))


def _ref_sharded(folder: str) -> dict[str, torch.Tensor]:
    """Shards merged, in the index's weight_map order (the order HF's index defines)."""
    from safetensors.torch import load_file

    index = json.loads((FIXTURES / folder / "model.safetensors.index.json").read_text())
    merged: dict[str, torch.Tensor] = {}
    for shard in dict.fromkeys(index["weight_map"].values()):
        merged.update(load_file(str(FIXTURES / folder / shard)))
    assert sorted(merged) == sorted(index["weight_map"])
    return {k: merged[k] for k in index["weight_map"]}


def _ref_dcp(folder: str, tmp: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / "dcp_as_torch.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(FIXTURES / folder, out)
    return dict(tload(out))


def _ref_numpy(name: str) -> dict[str, torch.Tensor]:
    import numpy as np

    with open(FIXTURES / name, "rb") as f:
        obj = pickle.load(f)  # our own committed fixture: trusted
    return {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in obj.items()
        if isinstance(v, np.ndarray)
    }


def _ref_whole() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ConvNet().state_dict()


REFERENCES = {
    "mlp.pth": lambda tmp: _ref_torch("mlp.pth"),
    "convnet_whole.pth": lambda tmp: _ref_whole(),
    "convnet_dataparallel.pth": lambda tmp: _ref_torch("convnet_dataparallel.pth"),
    "sigmoidnet_compiled.pth": lambda tmp: _ref_torch("sigmoidnet_compiled.pth"),
    "sigmoidnet_dp_compiled.pth": lambda tmp: _ref_torch("sigmoidnet_dp_compiled.pth"),
    "lightning.ckpt": lambda tmp: _ref_training("lightning.ckpt"),
    "timm_train.pth.tar": lambda tmp: _ref_training("timm_train.pth.tar"),
    "convnet.safetensors": lambda tmp: _ref_safetensors("convnet.safetensors"),
    "convnet_sharded": lambda tmp: _ref_sharded("convnet_sharded"),
    "convnet_fp16.pth": lambda tmp: _ref_torch("convnet_fp16.pth"),
    "convnet_frozen.pth": lambda tmp: _ref_torch("convnet_frozen.pth"),
    "sigmoidnet_legacy.pth": lambda tmp: _ref_torch("sigmoidnet_legacy.pth"),
    "numpy_arrays.pkl": lambda tmp: _ref_numpy("numpy_arrays.pkl"),
    "numpy_arrays_p4.pkl": lambda tmp: _ref_numpy("numpy_arrays_p4.pkl"),
    "sigmoidnet_dcp": lambda tmp: _ref_dcp("sigmoidnet_dcp", tmp),
    "hf_model": lambda tmp: _ref_safetensors("hf_model/model.safetensors"),
}


def test_every_committed_fixture_is_covered() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir()} - {
        "README.md",
        "make_fixtures.py",
        "__pycache__",
    }
    assert on_disk == set(REFERENCES)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_fixture_matches_torch(name: str, tmp_path: Path) -> None:
    ref = REFERENCES[name](tmp_path)
    ckpt = ckpt_tool.load(FIXTURES / name)
    if name == "convnet_whole.pth":
        # Not loadable by torch (class in __main__); the seeded ConvNet has the same keys,
        # shapes, dtypes and parameter values; BN running stats moved by one forward.
        assert_matches(ckpt, ref, check_bytes=False)
        params = {k: v for k, v in ref.items() if "running" not in k and "num_batches" not in k}
        got = read_all(ckpt)
        for k, v in params.items():
            assert_same_tensor(got[k], v, k)
        for k in ("layer1.1.num_batches_tracked", "layer2.1.num_batches_tracked"):
            assert got[k].dtype == torch.int64 and int(got[k]) == 1
        return
    assert_matches(ckpt, ref)


def test_fixture_formats_and_layouts() -> None:
    expected = {
        "mlp.pth": ("torch-zip", "state_dict"),
        "convnet_whole.pth": ("torch-zip", "module"),
        "lightning.ckpt": ("torch-zip", "training"),
        "timm_train.pth.tar": ("torch-zip", "training"),
        "convnet.safetensors": ("safetensors", "state_dict"),
        "convnet_sharded": ("safetensors-sharded", "state_dict"),
        "sigmoidnet_legacy.pth": ("torch-legacy", "state_dict"),
        "numpy_arrays.pkl": ("pickle", "state_dict"),
        "numpy_arrays_p4.pkl": ("pickle", "state_dict"),
        "sigmoidnet_dcp": ("dcp", "state_dict"),
    }
    for name, (fmt, layout) in expected.items():
        ckpt = ckpt_tool.load(FIXTURES / name)
        assert (ckpt.format, ckpt.layout) == (fmt, layout), name
    assert ckpt_tool.load(FIXTURES / "hf_model").format.startswith("hf-folder")
    # the index file itself is accepted as well as its folder
    via_index = ckpt_tool.load(FIXTURES / "convnet_sharded" / "model.safetensors.index.json")
    assert list(via_index.tensors) == list(ckpt_tool.load(FIXTURES / "convnet_sharded").tensors)


def test_numpy_extras_keep_non_arrays() -> None:
    ckpt = ckpt_tool.load(FIXTURES / "numpy_arrays.pkl")
    assert list(ckpt.tensors) == ["w", "b"]
    assert "step" in ckpt.extras


# --- training checkpoints ----------------------------------------------------------------------


def test_lightning_checkpoint() -> None:
    ckpt = ckpt_tool.load(FIXTURES / "lightning.ckpt")
    assert ckpt.layout == "training"
    assert ckpt.framework == "lightning"
    assert ckpt.weights_key == "state_dict"
    assert len(ckpt.tensors) == 10
    assert all(k.startswith("model.") for k in ckpt.tensors)
    for extra in (
        "optimizer_states",
        "lr_schedulers",
        "epoch",
        "global_step",
        "hyper_parameters",
        "pytorch-lightning_version",
    ):
        assert extra in ckpt.extras, extra
    assert "state_dict" not in ckpt.extras
    # optimizer state tensors are not weights
    assert not any("exp_avg" in k for k in ckpt.tensors)


def test_timm_candidates_and_default() -> None:
    ckpt = ckpt_tool.load(FIXTURES / "timm_train.pth.tar")
    assert ckpt.weight_sets == ["state_dict", "state_dict_ema"]
    assert ckpt.weights_key == "state_dict"
    assert ckpt.framework == "timm"
    assert "optimizer" in ckpt.extras and "args" in ckpt.extras
    assert "state_dict_ema" in ckpt.extras


def test_timm_ema_weights() -> None:
    ref = _ref_training("timm_train.pth.tar", "state_dict_ema")
    plain = _ref_training("timm_train.pth.tar", "state_dict")
    ckpt = ckpt_tool.load(FIXTURES / "timm_train.pth.tar", weights="state_dict_ema")
    assert ckpt.weights_key == "state_dict_ema"
    assert_matches(ckpt, ref)
    # and they really are the EMA set, not the default one
    got = read_all(ckpt)
    assert raw_bytes(got["fc.0.weight"]) != raw_bytes(plain["fc.0.weight"])


def test_unknown_weights_key_names_candidates() -> None:
    with pytest.raises(WeightsNotFound) as info:
        ckpt_tool.load(FIXTURES / "timm_train.pth.tar", weights="state_dict_emma")
    msg = str(info.value)
    assert "state_dict_emma" in msg
    assert "state_dict" in msg and "state_dict_ema" in msg


# --- freeze state, whole models -----------------------------------------------------------------

LAYER1_PARAMS = ["layer1.0.weight", "layer1.0.bias", "layer1.1.weight", "layer1.1.bias"]


def test_frozen_flags() -> None:
    ckpt = ckpt_tool.load(FIXTURES / "convnet_frozen.pth")
    ref = tload(FIXTURES / "convnet_frozen.pth")
    assert ckpt.frozen == LAYER1_PARAMS
    for key, entry in ckpt.tensors.items():
        want = ref[key]
        assert entry.record.is_parameter == isinstance(want, nn.Parameter), key
        assert entry.kind == ("parameter" if isinstance(want, nn.Parameter) else "buffer"), key
        if entry.record.is_parameter:
            assert entry.record.requires_grad == want.requires_grad, key
            assert entry.record.requires_grad == (key not in LAYER1_PARAMS), key


def test_plain_state_dict_records_no_freeze_state() -> None:
    ckpt = ckpt_tool.load(FIXTURES / "mlp.pth")
    assert ckpt.frozen == []
    assert not ckpt.frozen_recorded


def test_whole_model_layout() -> None:
    ckpt = ckpt_tool.load(FIXTURES / "convnet_whole.pth")
    assert ckpt.layout == "module"
    assert ckpt.modules[""] == "__main__.ConvNet"
    assert ckpt.modules["layer1.0"] == "torch.nn.modules.conv.Conv2d"
    assert ckpt.modules["layer1.1"] == "torch.nn.modules.batchnorm.BatchNorm2d"
    assert ckpt.modules["fc"] == "torch.nn.modules.linear.Linear"
    kinds = {k: e.kind for k, e in ckpt.tensors.items()}
    assert kinds["layer1.1.running_mean"] == "buffer"
    assert kinds["layer1.1.num_batches_tracked"] == "buffer"
    assert kinds["layer1.0.weight"] == "parameter"
    assert sum(e.numel for e in ckpt.tensors.values() if e.kind == "parameter") == 29034
    with pytest.raises(WeightsNotFound):
        ckpt_tool.load(FIXTURES / "convnet_whole.pth", weights="state_dict")


# --- files built here ---------------------------------------------------------------------------


def _save(obj: Any, path: Path, **kw: Any) -> Path:
    torch.save(obj, path, **kw)
    return path


def test_cuda_tagged_storages(tmp_path: Path) -> None:
    registry = torch.serialization._package_registry
    saved = list(registry)

    def tag_cuda(storage: Any) -> str | None:
        return "cuda:0" if storage.device.type == "cpu" else None

    def no_restore(storage: Any, location: str) -> None:
        return None

    sd = OrderedDict(w=torch.randn(3, 5), b=torch.arange(4, dtype=torch.int64))
    path = tmp_path / "cuda.pth"
    torch.serialization.register_package(-1_000_000, tag_cuda, no_restore)
    try:
        torch.save(sd, path)
    finally:
        registry[:] = saved
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in pkl
    ckpt = ckpt_tool.load(path)
    assert {e.record.device for e in ckpt.tensors.values()} == {"cuda:0"}
    assert_matches(ckpt, dict(tload(path)))
    assert_matches(ckpt, sd)


def test_tied_weights_are_shared(tmp_path: Path) -> None:
    w = torch.randn(6, 4)
    other = torch.randn(2)
    path = _save(
        OrderedDict([("embed.weight", w), ("bias", other), ("head.weight", w)]),
        tmp_path / "tied.pth",
    )
    ckpt = ckpt_tool.load(path)
    assert shared_groups(ckpt) == [["embed.weight", "head.weight"]]
    assert_matches(ckpt, dict(tload(path)))


def test_views_and_offsets(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = OrderedDict(
        [
            ("transposed", base.t()),  # non-contiguous
            ("rows", base[2:5]),  # storage offset 20
            ("strided", base[1::2, 3:9:2]),  # offset and steps in both dims
            ("elem", base[4, 7]),  # 0-d view into the middle
        ]
    )
    path = _save(sd, tmp_path / "views.pth")
    ref = dict(tload(path))
    assert not ref["transposed"].is_contiguous()
    assert ref["rows"].storage_offset() == 20
    ckpt = ckpt_tool.load(path)
    assert ckpt.tensors["rows"].record.offset == 20
    assert_matches(ckpt, ref)
    assert_matches(ckpt, sd)
    # four different views of one storage: views, not ties
    assert shared_groups(ckpt) == []
    assert len(view_groups(ckpt)) == 1 and sorted(view_groups(ckpt)[0]) == sorted(sd)
    # reads do not alias each other
    with TensorReader(ckpt) as reader:
        a = reader.read(ckpt.tensors["rows"])
        b = reader.read(ckpt.tensors["transposed"])
        a.fill_(-1)
        assert float(b[0, 2]) == 20.0


def test_keep_vars_parameters(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    path = _save(model.state_dict(keep_vars=True), tmp_path / "keep_vars.pth")
    ref = dict(tload(path))
    ckpt = ckpt_tool.load(path)
    assert_matches(ckpt, ref)
    assert ckpt.frozen == ["0.weight"]
    assert ckpt.tensors["0.bias"].record.requires_grad is True
    assert ckpt.tensors["1.running_mean"].kind == "buffer"
    assert ckpt.tensors["1.num_batches_tracked"].kind == "buffer"
    assert ckpt.tensors["2.weight"].kind == "parameter"


def test_torchvision_resnet18(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    path = _save(sd, tmp_path / "resnet18.pth")
    ckpt = ckpt_tool.load(path)
    assert_matches(ckpt, dict(tload(path)))
    assert sum(e.numel for e in ckpt.tensors.values() if e.kind == "parameter") == 11_689_512


def test_timm_resnet18(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    path = _save(sd, tmp_path / "timm_resnet18.pth")
    assert_matches(ckpt_tool.load(path), dict(tload(path)))


DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        x = torch.randn(shape, generator=g) * 3
        return x.to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


def test_dtypes_scalars_and_empty(tmp_path: Path) -> None:
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for dt in DTYPES:
        sd[f"t.{str(dt).removeprefix('torch.')}"] = _sample(dt, (3, 5))
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    sd["special.f32"] = specials
    sd["special.bf16"] = specials.bfloat16()
    sd["special.f16"] = specials.half()
    sd["scalar"] = torch.tensor(3.5)
    sd["scalar_int"] = torch.tensor(7, dtype=torch.int64)
    sd["empty"] = torch.empty(0)
    sd["empty2d"] = torch.empty(0, 4, dtype=torch.float16)
    path = _save(sd, tmp_path / "dtypes.pth")
    ckpt = ckpt_tool.load(path)
    assert ckpt.tensors["scalar"].record.shape == ()
    assert ckpt.tensors["empty2d"].record.shape == (0, 4)
    assert_matches(ckpt, dict(tload(path)))
    assert_matches(ckpt, sd)


def test_legacy_format_file(tmp_path: Path) -> None:
    sd = OrderedDict(
        [
            ("a", torch.randn(4, 3)),
            ("b", torch.arange(5)),
            ("c", torch.randn(2, 2).half()),
            ("view", torch.randn(5, 5)[1:3].t()),
        ]
    )
    path = _save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    ckpt = ckpt_tool.load(path)
    assert ckpt.format == "torch-legacy"
    assert_matches(ckpt, dict(tload(path)))
    assert_matches(ckpt, sd)


def test_safetensors_dtypes_scalars_and_empty(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = {f"t.{str(dt).removeprefix('torch.')}": _sample(dt, (2, 3)) for dt in DTYPES}
    sd["scalar"] = torch.tensor(1.25)
    sd["empty"] = torch.empty(0, 3, dtype=torch.bfloat16)
    path = tmp_path / "dtypes.safetensors"
    save_file(sd, str(path))
    ckpt = ckpt_tool.load(path)
    ref = load_file(str(path))
    assert_matches(ckpt, dict(ref))
    assert_matches(ckpt, sd, check_order=False)


class _Buffers(nn.Module):
    """A class the reader cannot import: persistent and non-persistent buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("kept", torch.arange(3.0))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def test_whole_model_built_here(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.Linear(4, 4),
        nn.ReLU(),
        nn.Linear(4, 4),
        _Buffers(),
    )
    model[1].weight.requires_grad_(False)
    path = _save(model, tmp_path / "whole.pth")
    ckpt = ckpt_tool.load(path)
    assert ckpt.layout == "module"
    assert ckpt.modules["0"] == "torch.nn.modules.conv.Conv2d"
    ref = model.state_dict()  # what torch itself calls this model's weights
    assert "5.scratch" not in ref
    assert_matches(ckpt, dict(ref))
    assert ckpt.tensors["5.kept"].kind == "buffer"
    assert ckpt.tensors["1.running_var"].kind == "buffer"
    assert ckpt.tensors["1.weight"].record.requires_grad is False
    assert ckpt.frozen == ["1.weight"]


def test_whole_model_shared_submodule(tmp_path: Path) -> None:
    # one module registered under two names: torch's state_dict lists it under both
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), shared, nn.ReLU(), shared)
    path = _save(model, tmp_path / "shared.pth")
    ref = model.state_dict()
    assert list(ref) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    ckpt = ckpt_tool.load(path)
    assert_matches(ckpt, dict(ref))
    assert sorted(map(sorted, shared_groups(ckpt))) == [
        ["1.bias", "3.bias"],
        ["1.weight", "3.weight"],
    ]


_LOAD_IN_CHILD = """
import sys
import ckpt_tool
from ckpt_tool.errors import CkptError
try:
    ckpt = ckpt_tool.load(sys.argv[1])
except CkptError as exc:
    print("refused:", exc)
else:
    print("tensors:", len(ckpt.tensors))
"""


def test_whole_model_exponential_sharing_is_bounded(tmp_path: Path) -> None:
    # m = Sequential(m, m) forty times: a few kB on disk, 2**40 module paths. Reading it must
    # end quickly (a refusal is fine); enumerating every path would never finish.
    import subprocess
    import sys

    m: nn.Module = nn.Linear(2, 2)
    for _ in range(40):
        m = nn.Sequential(m, m)
    path = _save(m, tmp_path / "diamond.pth")
    assert path.stat().st_size < 50_000
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LOAD_IN_CHILD, str(path)],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ckpt_tool.load did not finish in 15 s on a 2**40-path shared module graph")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(("refused:", "tensors:"))


def _numpy_pickle(tmp: Path, obj: Any, protocol: int) -> Path:
    path = tmp / f"arrays_p{protocol}.pkl"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _numpy_arrays() -> dict[str, Any]:
    import numpy as np

    base = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5
    return {
        "c_order": base,
        "fortran": np.asfortranarray(base),
        "big_endian": base.astype(">f4"),
        "non_contiguous": base[:, ::2],
        "float16": base.astype(np.float16),
        "int64": np.arange(5, dtype=np.int64),
        "bool": np.array([True, False, True]),
        "zero_d": np.array(2.5),
        "empty": np.zeros((0, 2), dtype=np.float32),
    }


@pytest.mark.parametrize("kind", list(_numpy_arrays()))
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickle_layouts(tmp_path: Path, protocol: int, kind: str) -> None:
    import numpy as np

    path = _numpy_pickle(tmp_path, {"step": 3, kind: _numpy_arrays()[kind]}, protocol)
    with open(path, "rb") as f:
        back = pickle.load(f)[kind]  # we just wrote it: trusted
    # logical values, C order, native byte order (np.array keeps 0-d arrays 0-d)
    want = torch.from_numpy(np.array(back, dtype=back.dtype.newbyteorder("="), order="C"))
    ckpt = ckpt_tool.load(path)
    assert_matches(ckpt, {kind: want})
    assert "step" in ckpt.extras


def test_big_endian_torch_zip(tmp_path: Path) -> None:
    """A zip whose `byteorder` record says big: torch byte-swaps on load; so must we, or refuse."""
    import numpy as np

    sd = OrderedDict(
        [
            ("w", torch.arange(6, dtype=torch.float32).reshape(2, 3) / 3),
            ("i", torch.arange(3, dtype=torch.int64) - 1),
            ("h", torch.tensor([1.5, -2.0]).half()),
        ]
    )
    little = tmp_path / "little.pth"
    torch.save(sd, little)
    path = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                # torch.save numbers distinct storages "0", "1", ... in order of first use
                tensor = list(sd.values())[int(name.rsplit("/", 1)[1])]
                width = tensor.element_size()
                data = np.frombuffer(data, dtype=f"<u{width}").byteswap().tobytes()
            zout.writestr(name, data)
    ref = dict(tload(path))
    for key, value in sd.items():  # the crafted file is right: torch reads the same values
        assert_same_tensor(ref[key], value, key)
    try:
        ckpt = ckpt_tool.load(path)
    except UnreadableCheckpoint as exc:  # a clear refusal is acceptable; wrong bytes are not
        assert "big" in str(exc).lower()
        return
    assert_matches(ckpt, ref)


def _nested_dict_pickle(depth: int) -> bytes:
    # {"a": {"a": ... {} ...}}: EMPTY_DICT, key, <inner>, SETITEM - built without recursion
    level = b"}" + b"X" + struct.pack("<I", 1) + b"a"
    return b"\x80\x02" + level * depth + b"}" + b"s" * depth + b"."


def _nested_list_pickle(depth: int) -> bytes:
    # [[[...]]]: EMPTY_LIST, <inner>, APPEND
    return b"\x80\x02" + b"]" * (depth + 1) + b"a" * depth + b"."


def _torch_zip(tmp: Path, name: str, data_pkl: bytes) -> Path:
    path = tmp / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("depth", [5000, 100_000])
@pytest.mark.parametrize("shape", ["dict", "list"])
@pytest.mark.parametrize("container", ["pickle", "torch-zip"])
def test_deep_nesting(tmp_path: Path, depth: int, shape: str, container: str) -> None:
    data = _nested_dict_pickle(depth) if shape == "dict" else _nested_list_pickle(depth)
    if container == "pickle":
        path = tmp_path / "deep.pkl"
        path.write_bytes(data)
    else:
        path = _torch_zip(tmp_path, "deep.pth", data)
    try:
        ckpt = ckpt_tool.load(path)
    except UnreadableCheckpoint:
        return
    assert ckpt.tensors == {}
    assert ckpt.layout == "other"
    from ckpt_tool.inspection import inspect_report

    json.dumps(inspect_report(ckpt), default=str)


def test_deep_nesting_reference_is_valid() -> None:
    # the hand-built pickles are what they claim to be
    d = pickle.loads(_nested_dict_pickle(3))
    assert d == {"a": {"a": {"a": {}}}}
    assert pickle.loads(_nested_list_pickle(2)) == [[[]]]


def test_tensor_inside_deep_nesting(tmp_path: Path) -> None:
    # a real torch file holding weights under a deep chain of dicts (torch.save recurses, so
    # keep it moderate) still loads and finds no top-level weights
    obj: Any = {"w": torch.ones(2)}
    for _ in range(200):
        obj = {"x": obj}
    path = _save({"state_dict": {"w": torch.ones(3)}, "deep": obj}, tmp_path / "d.pth")
    ckpt = ckpt_tool.load(path)
    assert list(ckpt.tensors) == ["w"]
    assert "deep" in ckpt.extras


# --- prefixes ----------------------------------------------------------------------------------

BASE_KEYS = ["conv1.weight", "bn1.weight", "bn1.running_mean", "fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_detect_wrapper_prefix(prefix: str) -> None:
    report = detect_prefix([prefix + k for k in BASE_KEYS])
    assert report.prefix == prefix
    assert report.counts == {prefix: len(BASE_KEYS)}
    assert not report.partial
    assert not report.lightning
    assert report.suggestion is not None


def test_detect_no_prefix() -> None:
    report = detect_prefix(BASE_KEYS)
    assert report.prefix == ""
    assert report.counts == {}
    assert not report.partial and not report.lightning
    assert report.suggestion is None


def test_detect_lightning_prefix() -> None:
    report = detect_prefix(["model." + k for k in BASE_KEYS])
    assert report.prefix == ""
    assert report.lightning
    assert not report.partial
    assert "model." in (report.suggestion or "")


def test_detect_partial_prefix() -> None:
    keys = ["module." + k for k in BASE_KEYS[:3]] + BASE_KEYS[3:]
    report = detect_prefix(keys)
    assert report.prefix == ""
    assert report.partial
    assert report.counts == {"module.": 3}
    assert "--partial" in (report.suggestion or "")


def test_detect_mixed_wrappers_is_partial() -> None:
    keys = ["module." + k for k in BASE_KEYS[:2]] + ["_orig_mod." + k for k in BASE_KEYS[2:]]
    report = detect_prefix(keys)
    assert report.prefix == ""
    assert report.partial
    assert report.counts == {"module.": 2, "_orig_mod.": 3}


def test_detect_prefix_is_not_fooled_by_lookalikes() -> None:
    # "modules.x" / "module_list" are real module names, not the DataParallel wrapper
    report = detect_prefix(["modules.0.weight", "module_list.1.bias"])
    assert report.prefix == "" and not report.partial


def test_detect_prefix_on_fixtures() -> None:
    cases = {
        "convnet_dataparallel.pth": "module.",
        "sigmoidnet_compiled.pth": "_orig_mod.",
        "sigmoidnet_dp_compiled.pth": "module._orig_mod.",
        "mlp.pth": "",
    }
    for name, prefix in cases.items():
        assert detect_prefix(ckpt_tool.load(FIXTURES / name).tensors).prefix == prefix, name
    assert detect_prefix(ckpt_tool.load(FIXTURES / "lightning.ckpt").tensors).lightning


def test_detect_empty() -> None:
    report = detect_prefix([])
    assert report.prefix == "" and not report.partial and not report.lightning
