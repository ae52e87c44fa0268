"""The write commands end to end: strip-module, add-module, rename, extract, and the writer.

Checkpoints come from REAL wrappers (nn.DataParallel, DistributedDataParallel over gloo with two
spawned processes, torch.compile wrappers that are never run) around the seed models and
torchvision's resnet18. Outputs are checked the way a user would: torch.load(weights_only=True)
/ safetensors load_file, load_state_dict(strict=True), and a bitwise comparison of every tensor.
Bad input must give exit 1, one line on stderr, an untouched input and no new file at all.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, REPO, run_cli, run_json
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ckpt_tool.seed_models import ConvNet, SigmoidNet, mlp

TMP_MARK = ".ckpt-tmp-"
REPORT_KEYS = {
    "command",
    "input",
    "output",
    "dry_run",
    "written",
    "weights_key",
    "total_keys",
    "changed",
    "unchanged",
    "groups",
    "changes",
    "unmatched_maps",
    "notes",
}
WRITTEN_KEYS = {"format", "bytes", "verified"}


# --- helpers ------------------------------------------------------------------------------------


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's values as raw bytes (works for 0-d, int64, bool, fp16 ...)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bit_identical(a: torch.Tensor, b: torch.Tensor, name: str = "") -> None:
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), name
    assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.equal(as_bytes(a), as_bytes(b)), f"{name}: bytes differ"


def assert_same_tensors(got: Any, want: Any, ordered: bool = True) -> None:
    """Same keys (in the same order) and bit-identical tensors."""
    if ordered:
        assert list(got) == list(want)
    else:
        assert set(got) == set(want)
    for k in want:
        assert_bit_identical(got[k], want[k], k)


def assert_same_obj(a: Any, b: Any, path: str = "root") -> None:
    """Deep equality for loaded checkpoints: containers, key order, bitwise tensors."""
    if isinstance(b, torch.Tensor):
        assert_bit_identical(a, b, path)
        assert type(a) is type(b), path
        assert a.requires_grad == b.requires_grad, path
    elif isinstance(b, dict):
        assert isinstance(a, dict), path
        assert list(a) == list(b), path
        for k in b:
            assert_same_obj(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_obj(x, y, f"{path}[{i}]")
    elif isinstance(b, argparse.Namespace):
        assert vars(a) == vars(b), path
    else:
        assert a == b and type(a) is type(b), path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def tload(path: Path, **kw: Any) -> Any:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True, **kw)


def copy_fixture(name: str, dest: Path) -> Path:
    out = dest / name
    out.write_bytes((FIXTURES / name).read_bytes())
    return out


def refused(args: list[Any], folder: Path, match: str, code: int = 1) -> str:
    """Run a command that must fail: exit code, one stderr line, no file added or changed."""
    before = {p: sha256(folder / p) for p in listing(folder) if (folder / p).is_file()}
    names = listing(folder)
    result = run_cli([str(a) for a in args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == "", result.stdout  # errors go to stderr only
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in result.stderr and "internal error" not in lines[0]
    assert re_search(match, lines[0]), lines[0]
    assert listing(folder) == names
    assert {p: sha256(folder / p) for p in before} == before
    return lines[0]


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def torch_consumed_metadata(sd: Any, prefixes: tuple[str, ...]) -> dict[str, Any]:
    ref = copy.copy(sd)
    ref._metadata = copy.deepcopy(sd._metadata)
    for p in prefixes:
        consume_prefix_in_state_dict_if_present(ref, p)
    return dict(ref._metadata)


# --- models and real wrappers -------------------------------------------------------------------


def build(name: str, seed: int = 0) -> nn.Module:
    """A seed model (or resnet18) with deterministic, non-trivial weights and buffers."""
    torch.manual_seed(seed)
    if name == "mlp":
        model: nn.Module = mlp()
    elif name == "convnet":
        model = ConvNet()
    elif name == "sigmoidnet":
        model = SigmoidNet()
    elif name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(weights=None)
    else:
        raise ValueError(name)
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.add_(torch.rand_like(buf))
            else:
                buf.fill_(7 + seed)  # num_batches_tracked: 0-d int64
    return model


def compiled(m: nn.Module) -> nn.Module:
    return torch.compile(m)  # the wrapper only: never run


WRAPPERS: dict[str, tuple[str, ...]] = {
    "dp": ("module.",),
    "compile": ("_orig_mod.",),
    "dp_compile": ("module.", "_orig_mod."),
    "compile_dp": ("_orig_mod.", "module."),
    "ddp": ("module.",),
    "ddp_compile": ("module.", "_orig_mod."),
    "compile_ddp": ("_orig_mod.", "module."),
}
LOCAL_WRAPS = {
    "dp": lambda m: nn.DataParallel(m),
    "compile": compiled,
    "dp_compile": lambda m: nn.DataParallel(compiled(m)),
    "compile_dp": lambda m: compiled(nn.DataParallel(m)),
}
MODELS = ["mlp", "convnet", "sigmoidnet", "resnet18"]
RESNET_WRAPPERS = ["dp", "compile_dp", "ddp", "ddp_compile"]  # keep the big model's runs few


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One DDP rank: wrap each model for real and let rank 0 save ddp_model.state_dict()."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in MODELS:
            wraps = {
                "ddp": lambda m: DDP(m),
                "ddp_compile": lambda m: DDP(compiled(m)),
                "compile_ddp": lambda m: compiled(DDP(m)),
            }
            for wname, wrap in wraps.items():
                if name == "resnet18" and wname not in RESNET_WRAPPERS:
                    continue
                ddp_model = wrap(build(name))
                if rank == 0:
                    torch.save(ddp_model.state_dict(), Path(out_dir) / f"{name}.{wname}.pth")
                dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def wrapped_checkpoint(name: str, wrapper: str, folder: Path, ddp_dir: Path) -> Path:
    path = folder / f"{name}.{wrapper}.pth"
    if wrapper.startswith(("ddp", "compile_ddp")):
        path.write_bytes((ddp_dir / path.name).read_bytes())
    else:
        torch.save(LOCAL_WRAPS[wrapper](build(name)).state_dict(), path)
    return path


CASES = [(m, w) for m in MODELS for w in WRAPPERS if m != "resnet18" or w in RESNET_WRAPPERS]


@pytest.mark.parametrize(("name", "wrapper"), CASES, ids=[f"{m}-{w}" for m, w in CASES])
def test_real_wrappers_strip_add_roundtrip(
    name: str, wrapper: str, tmp_path: Path, ddp_dir: Path
) -> None:
    src = wrapped_checkpoint(name, wrapper, tmp_path, ddp_dir)
    src_sha = sha256(src)
    wrapped_sd = tload(src)
    prefix = "".join(WRAPPERS[wrapper])
    assert all(k.startswith(prefix) for k in wrapped_sd), list(wrapped_sd)[:3]
    reference = build(name).state_dict()

    # strip-module -> loads strictly into the bare model, bit-identical, order and _metadata kept
    out = tmp_path / "stripped.pth"
    code, rep = run_json(["strip-module", src, "-o", out])
    assert code == 0, rep
    assert rep["written"] is True and rep["verified"] is True and rep["format"] == "pth"
    assert rep["total_keys"] == rep["changed"] == len(wrapped_sd) and rep["unchanged"] == 0
    assert [g["rule"] for g in rep["groups"]] and prefix in rep["groups"][0]["rule"]
    first = next(iter(reference))
    assert rep["changes"][0] == {"from": prefix + first, "to": first}
    sd = tload(out)
    assert_same_tensors(sd, reference)
    fresh = build(name, seed=1)
    fresh.load_state_dict(sd, strict=True)
    assert_same_tensors(fresh.state_dict(), reference)
    assert dict(sd._metadata) == torch_consumed_metadata(wrapped_sd, WRAPPERS[wrapper])
    assert dict(sd._metadata) == dict(reference._metadata)

    # the same to safetensors
    st_out = tmp_path / "stripped.safetensors"
    code, rep = run_json(["strip-module", src, "-o", st_out])
    assert code == 0 and rep["format"] == "safetensors" and rep["verified"] is True, rep
    from safetensors.torch import load_file

    assert_same_tensors(load_file(st_out), reference)

    # add-module -> loads strictly into nn.DataParallel(model)
    dp_out = tmp_path / "added.pth"
    code, rep = run_json(["add-module", out, "-o", dp_out])
    assert code == 0 and rep["verified"] is True, rep
    dp_sd = tload(dp_out)
    dp_model = nn.DataParallel(build(name, seed=2))
    dp_model.load_state_dict(dp_sd, strict=True)
    assert list(dp_sd) == list(dp_model.state_dict())
    assert_same_tensors(dp_model.module.state_dict(), reference)

    # add then strip gives back the same keys and bytes
    back = tmp_path / "back.pth"
    code, rep = run_json(["strip-module", dp_out, "-o", back])
    assert code == 0, rep
    assert_same_tensors(tload(back), sd)
    assert dict(tload(back)._metadata) == dict(sd._metadata)

    assert sha256(src) == src_sha
    assert not [p for p in listing(tmp_path) if TMP_MARK in p]


# --- container, dtype, freeze and aliasing preservation -----------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight  # tied
        base = torch.arange(40, dtype=torch.float32)
        self.register_buffer("lo", base[:20])  # two views of one storage,
        self.register_buffer("hi", base[20:])  # the second at an offset


def storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_tied_weights_stay_shared(tmp_path: Path) -> None:
    src = tmp_path / "tied.pth"
    torch.save(nn.DataParallel(Tied()).state_dict(), src)
    out = tmp_path / "out.pth"
    code, rep = run_json(["strip-module", src, "-o", out])
    assert code == 0 and rep["verified"] is True, rep
    sd = tload(out)
    assert list(sd) == ["lo", "hi", "emb.weight", "head.weight"]  # state_dict order kept
    assert storage_ptr(sd["emb.weight"]) == storage_ptr(sd["head.weight"])
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    assert storage_ptr(sd["lo"]) == storage_ptr(sd["hi"])
    assert sd["hi"].storage_offset() == 20
    orig = tload(src)
    assert_same_tensors(sd, {k.removeprefix("module."): v for k, v in orig.items()})
    m = Tied()
    m.load_state_dict(sd, strict=True)
    # add-module keeps them shared too
    out2 = tmp_path / "added.pth"
    assert run_json(["add-module", out, "-o", out2])[0] == 0
    sd2 = tload(out2)
    assert storage_ptr(sd2["module.emb.weight"]) == storage_ptr(sd2["module.head.weight"])
    assert storage_ptr(sd2["module.lo"]) == storage_ptr(sd2["module.hi"])


def test_requires_grad_and_parameters_survive(tmp_path: Path) -> None:
    src = copy_fixture("convnet_frozen.pth", tmp_path)
    orig = tload(src)
    out = tmp_path / "dp.pth"
    code, rep = run_json(["add-module", src, "-o", out])
    assert code == 0, rep
    got = tload(out)
    assert list(got) == ["module." + k for k in orig]
    for k, v in orig.items():
        w = got["module." + k]
        assert type(w) is type(v), k
        assert w.requires_grad == v.requires_grad, k
        assert_bit_identical(w, v, k)
    back = tmp_path / "back.pth"
    assert run_json(["strip-module", out, "-o", back])[0] == 0
    assert_same_obj(tload(back), orig)
    # rename keeps them too
    ren = tmp_path / "ren.pth"
    code, rep = run_json(["rename", src, "--map", r"^layer1\.=first.", "-o", ren])
    assert code == 0, rep
    r = tload(ren)
    assert isinstance(r["first.0.weight"], nn.Parameter)
    assert r["first.0.weight"].requires_grad is False
    assert r["fc.weight"].requires_grad is True


def test_dtypes_and_integer_buffers_survive(tmp_path: Path) -> None:
    src = copy_fixture("convnet_fp16.pth", tmp_path)
    orig = tload(src)
    out = tmp_path / "out.pth"
    assert run_json(["add-module", src, "-o", out])[0] == 0
    got = tload(out)
    assert got["module.layer1.1.num_batches_tracked"].dtype == torch.int64
    assert got["module.layer1.0.weight"].dtype == torch.float16
    for k, v in orig.items():
        assert_bit_identical(got["module." + k], v, k)


def test_lightning_strip_prefix_keeps_training_state(tmp_path: Path) -> None:
    src = copy_fixture("lightning.ckpt", tmp_path)
    orig = tload(src)
    out = tmp_path / "plain.ckpt"
    code, rep = run_json(["strip-module", src, "--prefix", "model.", "-o", out])
    assert code == 0, rep
    assert rep["weights_key"] == "state_dict" and rep["changed"] == 10
    got = tload(out)
    assert list(got) == list(orig)
    for k in orig:
        if k != "state_dict":
            assert_same_obj(got[k], orig[k], k)
    assert list(got["state_dict"]) == [k.removeprefix("model.") for k in orig["state_dict"]]
    for k, v in orig["state_dict"].items():
        assert_bit_identical(got["state_dict"][k.removeprefix("model.")], v, k)
    m = SigmoidNet()
    m.load_state_dict(got["state_dict"], strict=True)
    assert got["optimizer_states"][0]["state"]  # Adam state kept
    assert got["epoch"] == 3 and got["hyper_parameters"] == {"lr": 0.001, "num_classes": 1}


def test_lightning_without_prefix_hints_at_it(tmp_path: Path) -> None:
    src = copy_fixture("lightning.ckpt", tmp_path)
    refused(["strip-module", src, "-o", tmp_path / "x.ckpt"], tmp_path, r"--prefix model\.")


def test_lightning_to_safetensors_refused_then_extract(tmp_path: Path) -> None:
    src = copy_fixture("lightning.ckpt", tmp_path)
    refused(
        ["strip-module", src, "--prefix", "model.", "-o", tmp_path / "x.safetensors"],
        tmp_path,
        r"optimizer|training state|extract",
    )


def test_timm_training_dict_and_weights_choice(tmp_path: Path) -> None:
    src = copy_fixture("timm_train.pth.tar", tmp_path)
    orig = tload(src)
    code, rep = run_json(["add-module", src, "--weights", "state_dict_ema"])
    assert code == 0, rep
    out = Path(rep["output"])
    assert out.name == "timm_train.module.pth.tar" and out.parent == tmp_path
    got = tload(out)
    assert list(got) == list(orig)
    assert_same_obj(got["state_dict"], orig["state_dict"])  # not the chosen weight set
    assert list(got["state_dict_ema"]) == ["module." + k for k in orig["state_dict_ema"]]
    for k in ("optimizer", "args", "epoch", "metric", "arch", "version"):
        assert_same_obj(got[k], orig[k], k)


# --- rename -------------------------------------------------------------------------------------


def test_rename_in_order_and_unmatched(tmp_path: Path) -> None:
    src = copy_fixture("mlp.pth", tmp_path)
    code, rep = run_json(
        [
            "rename",
            src,
            "--map",
            r"^fc(\d)\.=layer\1.",
            "--map",
            r"^layer2\.=head.",
            "--map",
            "nomatch=x",
            "-o",
            tmp_path / "r.pth",
        ]
    )
    assert code == 0, rep
    assert rep["unmatched_maps"] == ["nomatch=x"]
    assert any("nomatch" in n for n in rep["notes"])
    got = tload(tmp_path / "r.pth")
    assert list(got) == ["layer1.weight", "layer1.bias", "head.weight", "head.bias"]
    assert_same_tensors(
        dict(zip(got, got.values(), strict=True)), dict(zip(got, tload(src).values(), strict=True))
    )
    assert {c["from"]: c["to"] for c in rep["changes"]}["fc2.bias"] == "head.bias"


def test_rename_conflict_names_both(tmp_path: Path) -> None:
    src = copy_fixture("mlp.pth", tmp_path)
    line = refused(
        ["rename", src, "--map", r"^fc\d=fc", "-o", tmp_path / "r.pth"],
        tmp_path,
        r"fc1\.weight.*fc2\.weight",
    )
    assert "fc.weight" in line


def test_rename_bad_regex_is_usage_error(tmp_path: Path) -> None:
    src = copy_fixture("mlp.pth", tmp_path)
    refused(["rename", src, "--map", "(x=y"], tmp_path, "invalid regular expression", code=2)


# --- partial prefixes and refusals of the plan --------------------------------------------------


def _partial_ckpt(folder: Path) -> Path:
    sd = OrderedDict(
        [
            ("module.a.weight", torch.ones(2)),
            ("module.b.weight", torch.zeros(2)),
            ("c.weight", torch.full((2,), 3.0)),
            ("d.weight", torch.full((3,), 4.0)),
        ]
    )
    path = folder / "partial.pth"
    torch.save(sd, path)
    return path


def test_partial_prefix_refused_then_allowed(tmp_path: Path) -> None:
    src = _partial_ckpt(tmp_path)
    line = refused(["strip-module", src], tmp_path, "--partial")
    assert "module.a.weight" in line and "c.weight" in line
    code, rep = run_json(["strip-module", src, "--partial"])
    assert code == 0, rep
    assert rep["changed"] == 2 and rep["unchanged"] == 2
    assert list(tload(rep["output"])) == ["a.weight", "b.weight", "c.weight", "d.weight"]


def test_add_module_refuses_prefixed(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    refused(["add-module", src], tmp_path, r"already start with 'module\.'")


def test_add_module_custom_prefix(tmp_path: Path) -> None:
    src = copy_fixture("mlp.pth", tmp_path)
    code, rep = run_json(["add-module", src, "--prefix", "model.", "-o", tmp_path / "l.pth"])
    assert code == 0, rep
    assert next(iter(tload(tmp_path / "l.pth"))) == "model.fc1.weight"


def test_strip_nothing_to_strip(tmp_path: Path) -> None:
    src = copy_fixture("mlp.pth", tmp_path)
    refused(["strip-module", src], tmp_path, "nothing to strip")


# --- extract ------------------------------------------------------------------------------------


def test_extract_lightning(tmp_path: Path) -> None:
    src = copy_fixture("lightning.ckpt", tmp_path)
    orig = tload(src)
    code, rep = run_json(["extract", src])
    assert code == 0, rep
    assert Path(rep["output"]) == tmp_path / "lightning.weights.ckpt"
    got = tload(rep["output"])
    assert isinstance(got, OrderedDict)
    assert_same_tensors(got, orig["state_dict"])
    assert not hasattr(orig["state_dict"], "_metadata")  # the fixture has none: none invented
    assert not any("optimizer" in str(k) for k in got)


def test_extract_training_dict_keeps_metadata_drops_the_rest(tmp_path: Path) -> None:
    model = build("convnet")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    src = tmp_path / "train.pth"
    torch.save(
        {
            "epoch": 4,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "loss": 0.5,
        },
        src,
    )
    code, rep = run_json(["extract", src, "-o", tmp_path / "w.pth"])
    assert code == 0, rep
    assert rep["weights_key"] == "model_state_dict"
    got = tload(tmp_path / "w.pth")
    assert_same_tensors(got, model.state_dict())
    assert dict(got._metadata) == dict(model.state_dict()._metadata)
    ConvNet().load_state_dict(got, strict=True)


def test_extract_timm_ema_to_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    src = copy_fixture("timm_train.pth.tar", tmp_path)
    orig = tload(src)
    out = tmp_path / "ema.safetensors"
    code, rep = run_json(["extract", src, "--weights", "state_dict_ema", "-o", out])
    assert code == 0, rep
    assert rep["weights_key"] == "state_dict_ema"
    assert_same_tensors(load_file(out), orig["state_dict_ema"])


def test_extract_whole_pickled_model(tmp_path: Path) -> None:
    src = copy_fixture("convnet_whole.pth", tmp_path)
    src_sha = sha256(src)
    out = tmp_path / "w.pth"
    code, rep = run_json(["extract", src, "-o", out])
    assert code == 0, rep
    assert rep["verified"] is True
    sd = tload(out)
    torch.manual_seed(0)
    ref = ConvNet().state_dict()
    assert list(sd) == list(ref)
    m = ConvNet()
    m.load_state_dict(sd, strict=True)
    for k, v in ref.items():
        if "running" in k or "num_batches" in k:
            continue
        assert_bit_identical(sd[k], v, k)
    assert int(sd["layer1.1.num_batches_tracked"]) == 1
    assert sd["layer1.1.num_batches_tracked"].dtype == torch.int64
    assert sha256(src) == src_sha
    # and to safetensors
    from safetensors.torch import load_file

    code, rep = run_json(["extract", src, "-o", tmp_path / "w.safetensors"])
    assert code == 0, rep
    assert_same_tensors(load_file(tmp_path / "w.safetensors"), sd)


def test_unknown_weights_key(tmp_path: Path) -> None:
    src = copy_fixture("lightning.ckpt", tmp_path)
    refused(["extract", src, "--weights", "nope"], tmp_path, "nope")
    refused(["strip-module", src, "--weights", "nope", "--prefix", "model."], tmp_path, "nope")


# --- the writer: formats, names, reports --------------------------------------------------------


@pytest.mark.parametrize("ext", [".pth", ".pt", ".bin", ".ckpt"])
def test_output_format_by_extension_torch(tmp_path: Path, ext: str) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    out = tmp_path / f"o{ext}"
    code, rep = run_json(["strip-module", src, "-o", out])
    assert code == 0 and rep["format"] == "pth" and rep["output"] == str(out), rep
    assert zipfile.is_zipfile(out)
    assert rep["bytes"] == out.stat().st_size
    ConvNet().load_state_dict(tload(out), strict=True)


def test_output_format_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    out = tmp_path / "o.safetensors"
    code, rep = run_json(["strip-module", src, "-o", out])
    assert code == 0 and rep["format"] == "safetensors", rep
    orig = tload(src)
    assert_same_tensors(load_file(out), {k[len("module.") :]: v for k, v in orig.items()})


def test_unsupported_extension_refused(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    refused(["strip-module", src, "-o", tmp_path / "o.txt"], tmp_path, "extension", code=2)


@pytest.mark.parametrize(
    ("cmd", "fixture", "extra", "name"),
    [
        ("strip-module", "convnet_dataparallel.pth", [], "convnet_dataparallel.stripped.pth"),
        ("add-module", "mlp.pth", [], "mlp.module.pth"),
        ("rename", "mlp.pth", ["--map", "fc=f"], "mlp.renamed.pth"),
        ("extract", "lightning.ckpt", [], "lightning.weights.ckpt"),
    ],
)
def test_default_output_next_to_input(
    tmp_path: Path, cmd: str, fixture: str, extra: list[str], name: str
) -> None:
    src = copy_fixture(fixture, tmp_path)
    code, rep = run_json([cmd, src, *extra])
    assert code == 0, rep
    assert rep["output"] == str(tmp_path / name)
    assert listing(tmp_path) == sorted([fixture, name])


def test_json_report_shape(tmp_path: Path) -> None:
    src = copy_fixture("sigmoidnet_dp_compiled.pth", tmp_path)
    code, rep = run_json(["strip-module", src])
    assert code == 0
    assert set(rep) >= REPORT_KEYS | WRITTEN_KEYS, set(rep) ^ (REPORT_KEYS | WRITTEN_KEYS)
    assert rep["command"] == "strip-module" and rep["input"] == str(src)
    assert rep["dry_run"] is False and rep["written"] is True and rep["weights_key"] is None
    assert rep["total_keys"] == 10 and rep["changed"] == 10 and rep["unchanged"] == 0
    g = rep["groups"][0]
    assert set(g) == {"rule", "count", "examples"} and g["count"] == 10
    assert "module._orig_mod." in g["rule"]
    assert len(rep["changes"]) == 10
    assert rep["changes"][0] == {"from": "module._orig_mod.fc.0.weight", "to": "fc.0.weight"}
    assert rep["unmatched_maps"] == [] and isinstance(rep["notes"], list)


def test_human_report_says_what_and_where(tmp_path: Path) -> None:
    src = copy_fixture("sigmoidnet_compiled.pth", tmp_path)
    result = run_cli(["strip-module", str(src)])
    assert result.exit_code == 0, result.stderr
    assert "_orig_mod." in result.stdout
    assert "sigmoidnet_compiled.stripped.pth" in result.stdout
    assert "verified" in result.stdout


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    before = listing(tmp_path)
    code, rep = run_json(["strip-module", src, "--dry-run"])
    assert code == 0, rep
    assert listing(tmp_path) == before
    assert rep["dry_run"] is True and rep["written"] is False
    assert rep["output"] == str(tmp_path / "convnet_dataparallel.stripped.pth")
    assert rep["changed"] == 16 and len(rep["changes"]) == 16
    assert set(rep) >= REPORT_KEYS
    for cmd in (
        ["add-module", copy_fixture("mlp.pth", tmp_path)],
        ["rename", tmp_path / "mlp.pth", "--map", "fc=x"],
        ["extract", src, "-o", tmp_path / "sub.safetensors"],
    ):
        before = listing(tmp_path)
        code, rep = run_json([*cmd, "--dry-run"])
        assert code == 0 and rep["written"] is False, rep
        assert listing(tmp_path) == before
    result = run_cli(["strip-module", str(src), "--dry-run"])
    assert result.exit_code == 0 and "dry run" in result.stdout


def test_dry_run_reports_over_an_existing_output(tmp_path: Path) -> None:
    """A dry run never fails on an existing output: it reports, says the real run needs
    --force, and leaves the file alone."""
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    (tmp_path / "o.pth").write_bytes(b"keep me")
    code, rep = run_json(["strip-module", src, "-o", tmp_path / "o.pth", "--dry-run"])
    assert code == 0 and rep["written"] is False, rep
    assert any("--force" in n for n in rep["notes"]), rep["notes"]
    assert (tmp_path / "o.pth").read_bytes() == b"keep me"
    # the default output name too
    derived = tmp_path / "convnet_dataparallel.stripped.pth"
    derived.write_bytes(b"old")
    assert run_json(["strip-module", src, "--dry-run"])[0] == 0
    assert derived.read_bytes() == b"old"


def test_no_verify_reports_false(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    code, rep = run_json(["strip-module", src, "--no-verify"])
    assert code == 0 and rep["verified"] is False and rep["written"] is True, rep
    ConvNet().load_state_dict(tload(rep["output"]), strict=True)


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    out = tmp_path / "o.pth"
    out.write_bytes(b"precious")
    refused(["strip-module", src, "-o", out], tmp_path, "already exists.*--force")
    assert out.read_bytes() == b"precious"
    code, rep = run_json(["strip-module", src, "-o", out, "--force"])
    assert code == 0, rep
    ConvNet().load_state_dict(tload(out), strict=True)


@pytest.mark.parametrize("how", ["plain", "symlink", "hardlink", "relative"])
def test_output_equal_to_input_refused(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    out = {
        "plain": src,
        "relative": Path("convnet_dataparallel.pth"),
        "symlink": tmp_path / "link.pth",
        "hardlink": tmp_path / "hard.pth",
    }[how]
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hardlink":
        os.link(src, out)
    elif how == "relative":
        monkeypatch.chdir(tmp_path)
    for extra in ([], ["--force"]):
        refused(["strip-module", src, "-o", out, *extra], tmp_path, "input.*--in-place")
    assert src.is_file() and not src.is_symlink()


def test_input_symlink_output_real_file_refused(tmp_path: Path) -> None:
    real = copy_fixture("convnet_dataparallel.pth", tmp_path)
    link = tmp_path / "link.pth"
    link.symlink_to(real)
    refused(["strip-module", link, "-o", real, "--force"], tmp_path, "--in-place")


def test_in_place(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    orig = tload(src)
    code, rep = run_json(["strip-module", src, "--in-place"])
    assert code == 0 and rep["verified"] is True, rep
    assert rep["output"] == str(src)
    assert listing(tmp_path) == ["convnet_dataparallel.pth"]  # no temp left, nothing else
    got = tload(src)
    assert_same_tensors(got, {k.removeprefix("module."): v for k, v in orig.items()})
    ConvNet().load_state_dict(got, strict=True)
    # in-place and -o together is a usage error
    refused(["add-module", src, "--in-place", "-o", tmp_path / "x.pth"], tmp_path, "in-place", 2)


def test_in_place_keeps_file_mode(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    src.chmod(0o600)  # a private checkpoint must not become world-readable
    code, rep = run_json(["strip-module", src, "--in-place"])
    assert code == 0, rep
    assert oct(src.stat().st_mode & 0o777) == oct(0o600)


def test_in_place_through_symlink_rewrites_the_target(tmp_path: Path) -> None:
    real = copy_fixture("convnet_dataparallel.pth", tmp_path)
    link = tmp_path / "link.pth"
    link.symlink_to(real.name)
    code, rep = run_json(["strip-module", link, "--in-place"])
    assert code == 0, rep
    assert link.is_symlink(), "the user's symlink was replaced by a regular file"
    assert next(iter(tload(real))) == "layer1.0.weight"


def test_in_place_dry_run_writes_nothing(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    sha = sha256(src)
    code, rep = run_json(["strip-module", src, "--in-place", "--dry-run"])
    assert code == 0 and rep["written"] is False, rep
    assert sha256(src) == sha and listing(tmp_path) == [src.name]


def test_frozen_state_to_safetensors_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    src = copy_fixture("convnet_frozen.pth", tmp_path)
    out = tmp_path / "f.safetensors"
    code, rep = run_json(["rename", src, "--map", r"^layer1\.=first.", "-o", out])
    assert code == 0, rep
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    frozen = json.loads(meta["ckpt.frozen"])
    assert frozen == ["first.0.weight", "first.0.bias", "first.1.weight", "first.1.bias"]


# --- bad output locations and disk errors -------------------------------------------------------


def test_output_folder_missing(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    refused(["strip-module", src, "-o", tmp_path / "nope" / "o.pth"], tmp_path, "does not exist")


def test_output_folder_not_writable_chmod(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() == 0 or os.access(ro, os.W_OK):
            pytest.skip(
                "running as root: chmod 0o500 does not stop writes (see the /proc "
                "and RLIMIT_FSIZE tests for unwritable targets)"
            )
        refused(["strip-module", src, "-o", ro / "o.pth"], tmp_path, "not writable|cannot create")
        assert listing(ro) == []
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("target", ["/proc/ckpt-test-out.pth", "/proc/self/ckpt-out.pth"])
def test_output_folder_unwritable_proc(tmp_path: Path, target: str) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    refused(["strip-module", src, "-o", target], tmp_path, "writable|cannot create|write")
    assert not Path(target).exists()


def _fsize_limit(limit: int):  # type: ignore[no-untyped-def]
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


def _run_ckpt(
    args: list[Any], preexec: Any = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CKPT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        preexec_fn=preexec,
    )


def _two_mb_checkpoint(folder: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict(
        [
            ("module.big.weight", torch.rand(512, 1024, generator=g)),
            ("module.big.bias", torch.rand(512, generator=g)),
            ("module.bn.num_batches_tracked", torch.tensor(3)),
        ]
    )
    path = folder / "two_mb.pth"
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_disk_full_rlimit_fsize(tmp_path: Path, ext: str) -> None:
    src = _two_mb_checkpoint(tmp_path)
    src_sha = sha256(src)
    before = listing(tmp_path)
    out = tmp_path / f"out{ext}"
    size = src.stat().st_size
    for limit in (4096, size // 2, size - 2048):
        proc = _run_ckpt(["strip-module", src, "-o", out], preexec=_fsize_limit(limit))
        assert proc.returncode == 1, (limit, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert re_search(r"(?i)disk full|too large", lines[0]), lines[0]
        assert listing(tmp_path) == before, limit
        assert sha256(src) == src_sha
    # without the limit it works
    proc = _run_ckpt(["strip-module", src, "-o", out, "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verified"] is True


# --- killed mid-write ---------------------------------------------------------------------------


def _temps(folder: Path) -> list[str]:
    return [p for p in listing(folder) if TMP_MARK in p]


def test_sigkill_mid_write_leaves_valid_or_nothing(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for i in range(4):
        sd[f"module.block{i}.weight"] = torch.rand(50 * 1024 * 1024 // 4, generator=g)
        sd[f"module.block{i}.bias"] = torch.rand(7, generator=g)
    sd["module.bn.num_batches_tracked"] = torch.tensor(5)
    src = tmp_path / "big.pth"
    torch.save(sd, src)
    del sd
    src_sha = sha256(src)
    expected = {k.removeprefix("module."): v for k, v in tload(src, mmap=True).items()}
    out = tmp_path / "out.pth"
    rng = random.Random(20240611)
    delays = [rng.uniform(0.05, 0.6) for _ in range(5)] + [1.5]  # the last one likely completes
    outcomes: list[str] = []
    leftovers: list[int] = []
    t0 = time.monotonic()
    for delay in delays:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckpt_tool", "strip-module", str(src), "-o", str(out)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            assert_same_tensors(tload(out, mmap=True), expected)
            outcomes.append("complete")
            out.unlink()
        else:
            outcomes.append("absent")
        leftovers.append(len(_temps(tmp_path)))
        for t in _temps(tmp_path):
            assert t.startswith(".out.pth" + TMP_MARK), t
        assert sha256(src) == src_sha
    # a stale temp from a dead process is always present for the next run to clean
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".out.pth{TMP_MARK}{dead.pid}-deadbeef").write_bytes(b"partial")
    proc = _run_ckpt(["strip-module", src, "-o", out, "--json"])
    assert proc.returncode == 0, proc.stderr
    assert _temps(tmp_path) == [], (outcomes, leftovers)
    assert_same_tensors(tload(out, mmap=True), expected)
    assert sha256(src) == src_sha
    assert time.monotonic() - t0 < 40


def test_sigint_cleans_up(tmp_path: Path) -> None:
    src = tmp_path / "big.pth"
    big = OrderedDict((f"module.w{i}", torch.rand(8 * 1024 * 1024)) for i in range(4))
    torch.save(big, src)  # ~128 MB so the write takes a moment
    codes = []
    src_sha = sha256(src)
    out = tmp_path / "out.pth"
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckpt_tool", "strip-module", str(src), "-o", str(out)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        codes.append(proc.returncode)
        assert _temps(tmp_path) == [], (delay, err)  # Ctrl-C removes its own temp file
        if out.exists():
            assert list(tload(out, mmap=True)) == [k.removeprefix("module.") for k in big]
            out.unlink()
        # never a traceback; at most the one line (a signal landing while the interpreter
        # itself starts or exits can end it before our handler speaks)
        assert "Traceback" not in err
        if proc.returncode == 130 and err.strip():
            assert err.strip().splitlines() == ["error: interrupted; nothing was written"]
        assert sha256(src) == src_sha


def test_temp_of_a_live_writer_is_not_removed(tmp_path: Path) -> None:
    src = copy_fixture("convnet_dataparallel.pth", tmp_path)
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".o.pth{TMP_MARK}{busy.pid}-cafecafe"
        live.write_bytes(b"another writer is busy")
        other = tmp_path / f".other.pth{TMP_MARK}999999999-00000000"
        other.write_bytes(b"not ours: another target")
        code, rep = run_json(["strip-module", src, "-o", tmp_path / "o.pth"])
        assert code == 0, rep
        assert live.exists() and other.exists()
    finally:
        busy.kill()
        busy.wait()
