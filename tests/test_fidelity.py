"""Fidelity: what ckpt reads and writes is exactly what the owning library saved and loads.

Real files made by the libraries themselves, in tmp folders: eager post-training static
quantization (qint8, per-channel and per-tensor, Linear packed params inside a tuple),
TorchScript (script, trace, lite interpreter), torch.export archives, tensors held anywhere
(dataclass, GAN dict, list of state_dicts), Trainer side files with no tensors, numpy next to
weights, tied weights and cuDNN-style flat storages. Every output is loaded back with torch's /
safetensors' own loaders and compared bit for bit; exit 0 always means nothing was lost.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from conftest import run_cli, run_json
from safetensors.torch import load_file
from torch import nn

# --- helpers ------------------------------------------------------------------------------------


def raw(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor's values as bytes, in logical order."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b))


def same_qtensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Quantized tensors: same dtype, scheme, integer values and quantization parameters."""
    if not (a.is_quantized and b.is_quantized):
        return False
    if a.dtype != b.dtype or a.shape != b.shape or a.qscheme() != b.qscheme():
        return False
    if not same_bits(a.int_repr(), b.int_repr()):
        return False
    if a.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return (
            a.q_per_channel_axis() == b.q_per_channel_axis()
            and same_bits(a.q_per_channel_scales(), b.q_per_channel_scales())
            and same_bits(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
        )
    return a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()


def same_value(a: Any, b: Any) -> bool:
    """Deep bitwise equality of state_dict values (tensors, quantized tensors, tuples, dtypes)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.is_quantized or b.is_quantized:
            return same_qtensor(a, b)
        return same_bits(a, b)
    if isinstance(a, (tuple, list)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same keys, same order, every value bitwise equal."""
    assert list(got) == list(want)
    for key, value in want.items():
        assert same_value(got[key], value), key


def error_text(result: Any) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def tensor_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in report["tensors"]}


# --- modules (module level, so TorchScript can read their source) -------------------------------


class QNet(nn.Module):
    """The eager-mode quantization recipe: QuantStub, Conv2d, ReLU, Linear, DeQuantStub."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.flatten(1)))


class SmallNet(nn.Module):
    """Conv2d, BatchNorm2d, Linear and a registered buffer of the root module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.register_buffer("scale", torch.tensor([2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.fc(x) * self.scale


class DPWrapped(nn.Module):
    """SmallNet under a `module` attribute: its keys start with `module.` as DataParallel's do."""

    def __init__(self) -> None:
        super().__init__()
        self.module = SmallNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class ExportNet(nn.Module):
    """A parameter, a buffer and a non-trainable Parameter, plus a submodule's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.lin = nn.Linear(4, 4)
        self.register_buffer("buf", torch.randn(4))
        self.frozen = nn.Parameter(torch.randn(4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x @ self.w) + self.buf + self.frozen


class TiedLM(nn.Module):
    """An embedding and an output layer sharing one Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


@dataclass
class Holder:
    w: torch.Tensor
    b: torch.Tensor
    note: str


# --- 1. quantized state_dicts -------------------------------------------------------------------


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" if "fbgemm" in engines else "qnnpack"


@pytest.fixture(scope="module")
def qengine() -> Iterator[str]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = _engine()
    yield torch.backends.quantized.engine
    torch.backends.quantized.engine = old


def quantized_model(qconfig: Any) -> QNet:
    """Post-training static quantization: prepare, calibrate on seeded data, convert."""
    torch.manual_seed(0)
    model = QNet().eval()
    model.qconfig = qconfig
    tq.prepare(model, inplace=True)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(2, 3, 8, 8))
    tq.convert(model, inplace=True)
    return model


@pytest.fixture(scope="module", params=["per_channel", "per_tensor"])
def qfile(request: Any, qengine: str, tmp_path_factory: Any) -> Path:
    """per_channel: get_default_qconfig(engine); per_tensor: the per-tensor default qconfig."""
    qconfig = (
        tq.get_default_qconfig(qengine) if request.param == "per_channel" else tq.default_qconfig
    )
    model = quantized_model(qconfig)
    path = tmp_path_factory.mktemp(f"q_{request.param}") / "quantized.pth"
    torch.save(model.state_dict(), path)
    return path


def qload(path: Path) -> dict[str, Any]:
    return dict(torch.load(path, weights_only=True))


QWEIGHTS = ("conv.weight", "fc._packed_params._packed_params.0")


def quantized_tensors(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The qint8 tensors by ckpt's path names (tuple members as `key.N`)."""
    return {
        "conv.weight": sd["conv.weight"],
        "fc._packed_params._packed_params.0": sd["fc._packed_params._packed_params"][0],
    }


def test_quantized_fixture_is_real(qfile: Path) -> None:
    sd = qload(qfile)
    assert sd["conv.weight"].dtype == torch.qint8
    assert isinstance(sd["fc._packed_params._packed_params"], tuple)
    assert sd["fc._packed_params.dtype"] == torch.qint8


def test_quantized_scan_safe(qfile: Path) -> None:
    code, report = run_json(["scan", qfile])
    assert code == 0, report
    assert report["files"][0]["verdict"] == "safe"
    assert report["summary"]["safe"] == 1


def test_quantized_inspect_lists_qint8(qfile: Path) -> None:
    sd = qload(qfile)
    code, report = run_json(["inspect", qfile])
    assert code == 0, report
    assert report["verdict"] == "safe"
    rows = tensor_rows(report)
    assert "fc._packed_params._packed_params.0" in rows
    assert "fc._packed_params._packed_params.1" in rows
    for key, t in quantized_tensors(sd).items():
        row = rows[key]
        assert row["dtype"] == "qint8", row
        assert row["shape"] == list(t.shape)
        assert row["numel"] == t.numel()
        assert row["kind"] == "parameter"
        quant = row["quant"]
        if t.qscheme() == torch.per_channel_affine:
            assert quant["scheme"] == "per_channel_affine"
            assert quant["axis"] == t.q_per_channel_axis()
        else:
            assert quant["scheme"] == "per_tensor_affine"
            assert quant["scale"] == t.q_scale()
            assert quant["zero_point"] == t.q_zero_point()
    # the plain tensors carry no quant entry; the non-tensor dtype entry is an extra
    assert "quant" not in rows["conv.bias"]
    assert "fc._packed_params.dtype" in report["extras"]


def test_quantized_count_agrees_with_inspect(qfile: Path) -> None:
    sd = qload(qfile)
    code_i, inspected = run_json(["inspect", qfile])
    code_c, counted = run_json(["count", qfile])
    assert code_i == code_c == 0
    packed_w, packed_b = sd["fc._packed_params._packed_params"]
    want = sd["conv.weight"].numel() + sd["conv.bias"].numel() + packed_w.numel()
    want += packed_b.numel()
    assert inspected["num_params"] == counted["params"] == want


def test_quantized_rename_pth_bit_for_bit(qfile: Path, tmp_path: Path) -> None:
    sd = qload(qfile)
    out = tmp_path / "out.pth"
    code, report = run_json(["rename", qfile, "--map", r"^conv\.=backbone.", "-o", out])
    assert code == 0, report
    got = qload(out)
    want = {(("backbone." + k[5:]) if k.startswith("conv.") else k): v for k, v in sd.items()}
    assert_same_state(got, want)
    assert got["backbone.weight"].is_quantized
    # the module versions the quantized modules need to load it follow the rename
    meta = torch.load(qfile, weights_only=True)._metadata
    renamed = {("backbone" if k == "conv" else k): v for k, v in meta.items()}
    assert dict(torch.load(out, weights_only=True)._metadata) == renamed


def test_quantized_renamed_pth_loads_into_the_model(qfile: Path, tmp_path: Path) -> None:
    """Rename there and back: the quantized model loads it strictly and computes the same."""
    mid, back = tmp_path / "mid.pth", tmp_path / "back.pth"
    assert run_json(["rename", qfile, "--map", r"^conv\.=backbone.", "-o", mid])[0] == 0
    assert run_json(["rename", mid, "--map", r"^backbone\.=conv.", "-o", back])[0] == 0
    # torch.load as is: the quantized modules read their version from the state_dict's _metadata
    reference = quantized_model(tq.default_qconfig)
    reference.load_state_dict(torch.load(qfile, weights_only=True))
    model = quantized_model(tq.default_qconfig)
    model.load_state_dict(torch.load(back, weights_only=True))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert same_bits(model(x), reference(x))


@pytest.mark.parametrize("command", ["extract", "convert"])
def test_quantized_pth_outputs_keep_quantized(qfile: Path, command: str, tmp_path: Path) -> None:
    out = tmp_path / "out.pth"
    code, report = run_json([command, qfile, "-o", out])
    assert code == 0, report
    assert_same_state(qload(out), qload(qfile))
    want_meta = torch.load(qfile, weights_only=True)._metadata
    assert torch.load(out, weights_only=True)._metadata == want_meta


def test_quantized_to_safetensors_needs_dequantize(qfile: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    result = run_cli(["convert", qfile, "-o", out])
    assert result.exit_code == 1
    assert "--dequantize" in error_text(result)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_quantized_dequantize_still_refuses_extras(qfile: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    result = run_cli(["convert", qfile, "-o", out, "--dequantize"])
    assert result.exit_code == 1
    assert "fc._packed_params.dtype" in error_text(result)
    assert list(tmp_path.iterdir()) == []


def test_quantized_dequantize_matches_torch(qfile: Path, tmp_path: Path) -> None:
    sd = qload(qfile)
    out = tmp_path / "x.safetensors"
    code, report = run_json(["convert", qfile, "-o", out, "--dequantize", "--drop-extras"])
    assert code == 0, report
    assert sorted(d["key"] for d in report["dequantized"]) == sorted(QWEIGHTS)
    assert all(d["to"] == "float32" for d in report["dequantized"])
    got = load_file(out)
    qts = quantized_tensors(sd)
    want: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            want[k] = v
        elif isinstance(v, tuple):
            want.update({f"{k}.{i}": t for i, t in enumerate(v)})
    assert sorted(got) == sorted(want)
    for key, t in want.items():
        expected = qts[key].dequantize() if key in qts else t
        assert same_bits(got[key], expected), key


def test_dequantize_with_pth_output_is_usage_error(qfile: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.pth"
    result = run_cli(["convert", qfile, "-o", out, "--dequantize"])
    assert result.exit_code == 2
    assert not out.exists()


# --- 2. TorchScript -----------------------------------------------------------------------------


def _small_net() -> SmallNet:
    torch.manual_seed(0)
    model = SmallNet()
    with torch.no_grad():  # buffers with real values, not zeros and ones
        model.bn.running_mean.copy_(torch.randn(4))
        model.bn.running_var.copy_(torch.rand(4) + 0.5)
        model.bn.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def ts_files(tmp_path_factory: Any) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torchscript")
    model = _small_net()
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, torch.randn(1, 3, 8, 8))
    files = {
        "script": folder / "scripted.pt",
        "trace": folder / "traced.pt",
        "lite": folder / "scripted.ptl",
        "dp": folder / "dp_scripted.pt",
    }
    torch.jit.save(scripted, files["script"])
    torch.jit.save(traced, files["trace"])
    scripted._save_for_lite_interpreter(str(files["lite"]))
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(DPWrapped().eval()), files["dp"])
    return files


TS_KINDS = ["script", "trace", "lite"]


def ts_reference(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.jit.load(str(path)).state_dict())


def test_torchscript_fixture_is_real(ts_files: dict[str, Path]) -> None:
    with zipfile.ZipFile(ts_files["script"]) as z:
        code = [i for i in z.infolist() if "/code/" in i.filename]
    assert code and all(i.compress_type == zipfile.ZIP_DEFLATED for i in code)
    assert all(k.startswith("module.") for k in ts_reference(ts_files["dp"]))


@pytest.mark.parametrize("kind", TS_KINDS)
def test_torchscript_scan_needs_code(ts_files: dict[str, Path], kind: str) -> None:
    code, report = run_json(["scan", ts_files[kind]])
    assert code == 0, report
    entry = report["files"][0]
    assert entry["verdict"] == "needs code"
    assert any(f["why"] == "torchscript" for f in entry["findings"]), entry["findings"]
    assert report["summary"]["dangerous"] == 0


@pytest.mark.parametrize("kind", TS_KINDS)
def test_torchscript_inspect_keys_and_kinds(ts_files: dict[str, Path], kind: str) -> None:
    ref = ts_reference(ts_files[kind])
    code, report = run_json(["inspect", ts_files[kind]])
    assert code == 0, report
    assert report["format"] == "torchscript"
    assert [t["key"] for t in report["tensors"]] == list(ref)
    rows = tensor_rows(report)
    for key, t in ref.items():
        assert rows[key]["shape"] == list(t.shape), key
        assert rows[key]["dtype"] == str(t.dtype).removeprefix("torch."), key
    buffers = {"scale", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert {k for k, r in rows.items() if r["kind"] == "buffer"} == buffers
    assert {k for k, r in rows.items() if r["kind"] == "parameter"} == set(ref) - buffers
    params = sum(t.numel() for k, t in ref.items() if k not in buffers)
    assert report["num_params"] == params


@pytest.mark.parametrize("kind", TS_KINDS)
def test_torchscript_extract_pth(ts_files: dict[str, Path], kind: str, tmp_path: Path) -> None:
    out = tmp_path / "w.pth"
    code, report = run_json(["extract", ts_files[kind], "-o", out])
    assert code == 0, report
    assert_same_state(dict(torch.load(out, weights_only=True)), ts_reference(ts_files[kind]))


@pytest.mark.parametrize("kind", TS_KINDS)
def test_torchscript_convert_safetensors(
    ts_files: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    out = tmp_path / "w.safetensors"
    code, report = run_json(["convert", ts_files[kind], "-o", out])
    assert code == 0, report
    assert_same_state(load_file(out), ts_reference(ts_files[kind]))


EDITS = {
    "strip-module": ["strip-module"],
    "rename": ["rename", "--map", r"^fc\.=head."],
    "cast": ["cast", "--dtype", "fp16"],
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_torchscript_edits_refused(ts_files: dict[str, Path], edit: str, tmp_path: Path) -> None:
    """On a TorchScript file whose keys the edit would change: exit 1, pointing at extract."""
    source = ts_files["dp"] if edit == "strip-module" else ts_files["script"]
    out = tmp_path / "out.pth"
    result = run_cli([EDITS[edit][0], source, *EDITS[edit][1:], "-o", out])
    assert result.exit_code == 1
    assert "extract" in error_text(result)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_strip_module_refusal_names_extract(
    ts_files: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(["strip-module", ts_files["script"], "-o", tmp_path / "out.pth"])
    assert result.exit_code == 1
    assert "extract" in error_text(result)


@pytest.mark.parametrize("kind", TS_KINDS)
def test_torchscript_count_and_diff(ts_files: dict[str, Path], kind: str) -> None:
    path = ts_files[kind]
    code, counted = run_json(["count", path])
    assert code == 0, counted
    _, inspected = run_json(["inspect", path])
    assert counted["params"] == inspected["num_params"]
    assert counted["buffers"]["tensors"] == 4
    code, diff = run_json(["diff", path, path])
    assert code == 0, diff
    assert diff["identical"] is True
    assert diff["summary"]["bit_identical"] == len(ts_reference(path))


# --- 3. torch.export ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pt2(tmp_path_factory: Any) -> Path:
    torch.manual_seed(0)
    model = ExportNet().eval()
    path = tmp_path_factory.mktemp("export") / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3),)), path)
    return path


def test_export_inspect(pt2: Path) -> None:
    ep = torch.export.load(pt2)
    code, report = run_json(["inspect", pt2])
    assert code == 0, report
    assert report["format"] == "torch-export"
    assert [t["key"] for t in report["tensors"]] == list(ep.state_dict)
    rows = tensor_rows(report)
    buffers = set(ep.graph_signature.buffers)
    assert buffers == {"buf"}
    for key in ep.state_dict:
        assert rows[key]["kind"] == ("buffer" if key in buffers else "parameter"), key
    assert rows["frozen"]["requires_grad"] is False
    params = set(ep.graph_signature.parameters)
    assert report["num_params"] == sum(ep.state_dict[k].numel() for k in params)


def test_export_extract_bitwise(pt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.pth"
    code, report = run_json(["extract", pt2, "-o", out])
    assert code == 0, report
    want = dict(torch.export.load(pt2).state_dict)
    got = dict(torch.load(out, weights_only=True))
    assert sorted(got) == sorted(want)
    for key, t in want.items():
        assert same_bits(got[key], t), key


# --- 4. tensors anywhere ------------------------------------------------------------------------


def test_dataclass_holder(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    obj = Holder(w=torch.randn(2, 3, generator=g), b=torch.randn(3, generator=g), note="hi")
    path = tmp_path / "holder.pth"
    torch.save(obj, path)
    code, report = run_json(["inspect", path])
    assert code == 0, report
    assert report["layout"] == "object"
    rows = tensor_rows(report)
    assert list(rows) == ["w", "b"]
    assert rows["w"]["shape"] == [2, 3] and rows["b"]["shape"] == [3]
    out = tmp_path / "w.pth"
    assert run_json(["extract", path, "-o", out])[0] == 0
    got = torch.load(out, weights_only=True)
    assert list(got) == ["w", "b"]
    assert same_bits(got["w"], obj.w) and same_bits(got["b"], obj.b)


def _sd(seed: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"l.weight": torch.randn(n, 2, generator=g), "l.bias": torch.randn(n, generator=g)}


def test_gan_weight_sets(tmp_path: Path) -> None:
    sd_g, sd_d = _sd(0, 2), _sd(1, 3)
    path = tmp_path / "gan.pth"
    torch.save({"G": sd_g, "D": sd_d}, path)
    code, report = run_json(["inspect", path])
    assert code == 0, report
    keys = [t["key"] for t in report["tensors"]]
    assert keys == [f"G.{k}" for k in sd_g] + [f"D.{k}" for k in sd_d]
    assert set(report["weights"]["candidates"]) == {"G", "D"}
    out = tmp_path / "g.pth"
    code, report = run_json(["extract", path, "--weights", "G", "-o", out])
    assert code == 0, report
    got = dict(torch.load(out, weights_only=True))
    assert list(got) == list(sd_g)
    for key, t in sd_g.items():
        assert same_bits(got[key], t), key


def test_list_of_state_dicts(tmp_path: Path) -> None:
    sd0, sd1 = {"x": torch.arange(3.0)}, {"x": torch.arange(4.0)}
    path = tmp_path / "list.pth"
    torch.save([sd0, sd1], path)
    code, report = run_json(["inspect", path])
    assert code == 0, report
    rows = tensor_rows(report)
    assert list(rows) == ["0.x", "1.x"]
    assert rows["0.x"]["shape"] == [3] and rows["1.x"]["shape"] == [4]


# --- 5. exit 0 means nothing lost ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tensorless(tmp_path_factory: Any) -> dict[str, Path]:
    import transformers

    folder = tmp_path_factory.mktemp("trainer")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    files = {"scheduler": folder / "scheduler.pt", "training_args": folder / "training_args.bin"}
    torch.save(scheduler.state_dict(), files["scheduler"])
    args = transformers.TrainingArguments(output_dir=str(folder / "o"), report_to=[])
    torch.save(args, files["training_args"])
    return files


@pytest.mark.parametrize("command", ["cast", "convert"])
@pytest.mark.parametrize("name", ["scheduler", "training_args"])
def test_no_tensors_refused(
    tensorless: dict[str, Path], name: str, command: str, tmp_path: Path
) -> None:
    out = tmp_path / "x.pth"
    extra = ["--dtype", "fp16"] if command == "cast" else []
    result = run_cli([command, tensorless[name], *extra, "-o", out])
    assert result.exit_code == 1
    assert "no tensors" in error_text(result)
    assert list(tmp_path.iterdir()) == []


def _training_dict(path: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    data = {"model": nn.Linear(3, 2).state_dict(), "np_mean": np.arange(3.0), "epoch": 3}
    torch.save(data, path)
    return data


def test_cast_keeps_numpy_and_extras(tmp_path: Path) -> None:
    src, out = tmp_path / "train.pth", tmp_path / "out.pth"
    data = _training_dict(src)
    code, report = run_json(["cast", src, "--dtype", "fp16", "-o", out])
    assert code == 0, report
    got = torch.load(out, weights_only=False)  # our own file, with a numpy array in it
    assert isinstance(got["np_mean"], np.ndarray)
    assert got["np_mean"].dtype == data["np_mean"].dtype
    assert np.array_equal(got["np_mean"], data["np_mean"])
    assert got["epoch"] == 3
    assert list(got["model"]) == list(data["model"])
    for key, t in data["model"].items():
        assert same_bits(got["model"][key], t.to(torch.float16)), key


def test_cast_to_same_dtype_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "train.pth", tmp_path / "out.pth"
    _training_dict(src)
    result = run_cli(["cast", src, "--dtype", "fp32", "-o", out])
    assert result.exit_code == 1
    assert "no tensor would change" in error_text(result)
    assert not out.exists()


def test_rename_matching_nothing_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "train.pth", tmp_path / "out.pth"
    _training_dict(src)
    result = run_cli(["rename", src, "--map", "nomatch=x", "-o", out])
    assert result.exit_code == 1
    assert "renames no key" in error_text(result)
    assert not out.exists()


def test_dry_run_onto_existing_output(tmp_path: Path) -> None:
    src, out = tmp_path / "dp.pth", tmp_path / "existing.pth"
    torch.save({f"module.{k}": v for k, v in _sd(0, 2).items()}, src)
    out.write_bytes(b"keep me")
    code, report = run_json(["strip-module", src, "-o", out, "--dry-run"])
    assert code == 0, report
    assert report["written"] is False
    assert any("--force" in n for n in report["notes"]), report["notes"]
    assert out.read_bytes() == b"keep me"


# --- 6. tied weights and flat storages ----------------------------------------------------------


def test_tied_weight_counted_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    path = tmp_path / "tied.pth"
    torch.save(model.state_dict(), path)
    code, inspected = run_json(["inspect", path])
    assert code == 0, inspected
    code, counted = run_json(["count", path])
    assert code == 0, counted
    numel = model.embed.weight.numel()
    assert inspected["num_params"] == counted["params"] == numel
    assert [sorted(g) for g in inspected["shared"]] == [["embed.weight", "head.weight"]]
    assert inspected["views"] == []


def test_flat_storage_views_not_shared(tmp_path: Path) -> None:
    base = torch.arange(24.0)
    sd = {"a": base[:6].view(2, 3), "b": base[6:18].view(3, 4), "c": base[18:]}
    path = tmp_path / "flat.pth"
    torch.save(sd, path)
    code, report = run_json(["inspect", path])
    assert code == 0, report
    assert report["shared"] == []
    assert [sorted(g) for g in report["views"]] == [["a", "b", "c"]]
    code, counted = run_json(["count", path])
    assert code == 0, counted
    assert report["num_params"] == counted["params"] == 24


# --- portable outputs ----------------------------------------------------------------------------


def _cuda_tagged(path: Path) -> None:
    """A state_dict whose storages say cuda:0 (as a GPU run saves them), made on a CPU box."""
    from torch.serialization import register_package

    register_package(
        -1_000_000, lambda s: "cuda:0" if s.device.type == "cpu" else None, lambda s, loc: None
    )
    torch.manual_seed(0)
    torch.save({"w": torch.randn(3, 4), "b": torch.zeros(3)}, path)
    torch.serialization._package_registry[:] = [
        p for p in torch.serialization._package_registry if p[0] != -1_000_000
    ]


def test_outputs_are_cpu_tensors_unless_keep_device(tmp_path: Path) -> None:
    src = tmp_path / "gpu.pth"
    _cuda_tagged(src)
    with pytest.raises(RuntimeError):  # the input itself needs a GPU (or map_location)
        torch.load(src, weights_only=True)
    out = tmp_path / "cpu.pth"
    code, rep = run_json(["rename", src, "--map", "^w$=weight", "-o", out])
    assert code == 0, rep
    assert any("written as CPU tensors" in n and "cuda:0" in n for n in rep["notes"]), rep
    got = torch.load(out, weights_only=True)  # no map_location needed
    ref = torch.load(src, weights_only=True, map_location="cpu")
    assert torch.equal(got["weight"], ref["w"]) and torch.equal(got["b"], ref["b"])
    kept = tmp_path / "kept.pth"
    code, rep = run_json(["rename", src, "--map", "^w$=weight", "-o", kept, "--keep-device"])
    assert code == 0 and not any("CPU tensors" in n for n in rep["notes"])
    _, info = run_json(["inspect", kept])
    assert info["devices"] == {"cuda:0": 2}


# --- numpy's own files ---------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_and_npy_convert_exactly(tmp_path: Path, compressed: bool) -> None:
    """.npy and .npz (stored or deflated, C or Fortran order) convert to safetensors with the
    values numpy itself loads."""
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((3, 5)).astype(np.float32),
        "f": np.asfortranarray(rng.standard_normal((4, 2))),
        "i": np.arange(7, dtype=np.int64),
    }
    npz = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(npz, **arrays)
    npy = tmp_path / "f.npy"
    np.save(npy, arrays["f"])
    for src, names in ((npz, list(arrays)), (npy, ["tensor"])):
        out = tmp_path / f"{src.stem}.safetensors"
        code, rep = run_json(["convert", src, "-o", out, "--force"])
        assert code == 0, rep
        got = load_file(out)
        assert list(got) == names
        want = dict(np.load(src)) if src.suffix == ".npz" else {"tensor": np.load(src)}
        for k in names:
            assert got[k].numpy().tobytes() == np.ascontiguousarray(want[k]).tobytes(), k
        code, scan = run_json(["scan", src])
        assert code == 0 and scan["files"][0]["verdict"] == "safe"
