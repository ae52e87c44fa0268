"""The library API: every command as a function on real files, its typed report, its errors;
outputs compared with the CLI's bytes and with what torch / safetensors / peft load."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES, run_cli
from safetensors.torch import load_file

import ckpt_tool
from ckpt_tool.errors import CheckFailed, CkptError, OutputRefused, SurgeryError, UsageError
from ckpt_tool.seed_models import ConvNet


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def dp(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    sd = ConvNet().state_dict()
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    return path, sd


@pytest.fixture
def training(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = ConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    path = tmp_path / "train.pth"
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, path)
    return path


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_command_is_exported() -> None:
    for name in (
        "inspect", "count", "scan", "diff", "strip_module", "add_module", "rename", "extract",
        "drop", "freeze", "cast", "convert", "merge_lora", "average", "transplant",
        "smoke_train",
    ):  # fmt: skip
        assert callable(getattr(ckpt_tool, name)), name
    assert (Path(ckpt_tool.__file__).parent / "py.typed").is_file()


def test_strip_module_report_and_bytes_equal_the_cli(dp: Any, tmp_path: Path) -> None:
    path, sd = dp
    report = ckpt_tool.strip_module(path, output=tmp_path / "api.pth")
    assert isinstance(report, ckpt_tool.WriteReport)
    assert (report.command, report.written, report.verified, report.format) == (
        "strip-module", True, True, "pth",
    )  # fmt: skip
    assert report.details["changed"] == len(sd)
    assert _equal(torch.load(tmp_path / "api.pth", weights_only=True), sd)
    cli = run_cli(["strip-module", path, "-o", tmp_path / "cli.pth", "--json"])
    assert cli.exit_code == 0
    assert _sha(tmp_path / "api.pth") == _sha(tmp_path / "cli.pth")
    doc = json.loads(cli.stdout)
    assert report.to_json() | {"output": doc["output"]} == doc


def test_dry_run_writes_nothing_and_errors_raise(dp: Any, tmp_path: Path) -> None:
    path, _ = dp
    report = ckpt_tool.strip_module(path, dry_run=True)
    assert report.dry_run and not report.written
    assert not Path(report.output).exists()
    ckpt_tool.strip_module(path)
    with pytest.raises(OutputRefused) as info:
        ckpt_tool.strip_module(path)  # the derived output exists now
    assert info.value.exit_code == 1 and "--force" in info.value.message
    with pytest.raises(CkptError):
        ckpt_tool.strip_module(tmp_path / "missing.pth")


def test_add_module_rename_and_freeze(dp: Any, tmp_path: Path) -> None:
    path, sd = dp
    bare = tmp_path / "bare.safetensors"
    ckpt_tool.strip_module(path, output=bare)
    added = ckpt_tool.add_module(bare, output=tmp_path / "added.safetensors")
    assert set(load_file(added.output)) == {f"module.{k}" for k in sd}
    renamed = ckpt_tool.rename(bare, [r"^fc\.=head."], output=tmp_path / "renamed.safetensors")
    assert renamed.details["changed"] == 2
    assert "head.weight" in load_file(renamed.output)
    frozen = ckpt_tool.freeze(bare, ["layer1.*"], output=tmp_path / "frozen.pth")
    out = torch.load(frozen.output, weights_only=True)
    assert not out["layer1.0.weight"].requires_grad and out["fc.weight"].requires_grad
    only = ckpt_tool.freeze(bare, ["fc.*"], mode="only", output=tmp_path / "only.pth")
    assert (
        only.details["totals"]["after"]["trainable"]
        == sd["fc.weight"].numel() + sd["fc.bias"].numel()
    )
    with pytest.raises(UsageError):
        ckpt_tool.freeze(bare, ["fc.*"], mode="sideways")


def test_extract_drop_and_count(training: Path, tmp_path: Path) -> None:
    weights = ckpt_tool.extract(training, output=tmp_path / "w.safetensors")
    assert weights.details["dropped"] == ["optimizer", "epoch"]
    loaded = load_file(weights.output)
    ref = torch.load(training, weights_only=True)["state_dict"]
    assert _equal(loaded, dict(ref))
    slim = ckpt_tool.drop(training, ["optimizer"], output=tmp_path / "slim.pth")
    assert slim.details["dropped_entries"] == ["optimizer"] and slim.details["bytes_saved"] > 0
    assert set(torch.load(slim.output, weights_only=True)) == {"state_dict", "epoch"}
    with pytest.raises(SurgeryError):
        ckpt_tool.drop(training, ["nothing_here"])
    counted = ckpt_tool.count(weights.output)
    assert counted.exit_code == 0
    assert counted.data["params"] == sum(
        v.numel() for k, v in ref.items() if "running" not in k and "num_batches" not in k
    )


def test_cast_and_convert(dp: Any, tmp_path: Path) -> None:
    path, sd = dp
    bare = tmp_path / "bare.pth"
    ckpt_tool.strip_module(path, output=bare)
    cast = ckpt_tool.cast(bare, "fp16", keep_norm=True, output=tmp_path / "half.pth")
    assert cast.cast is not None and cast.cast["dtype"] == "float16"
    out = torch.load(cast.output, weights_only=True)
    assert out["fc.weight"].dtype == torch.float16
    assert torch.equal(out["fc.weight"], sd["fc.weight"].half())
    conv = ckpt_tool.convert(bare, tmp_path / "bf16.safetensors", dtype="bf16")
    assert conv.format == "safetensors" and conv.cast is not None
    assert torch.equal(load_file(conv.output)["fc.weight"], sd["fc.weight"].bfloat16())
    shards = ckpt_tool.convert(bare, tmp_path / "sharded.safetensors", max_shard_size="40KB")
    assert len(shards.shards) > 1 and shards.files["index"] is not None
    merged: dict[str, torch.Tensor] = {}
    for shard in shards.shards:
        merged.update(load_file(shard))
    assert _equal(merged, sd)
    with pytest.raises(SurgeryError):
        ckpt_tool.cast(cast.output, "fp16", keep_norm=True)  # nothing would change


def test_convert_to_dcp_and_back(dp: Any, tmp_path: Path) -> None:
    path, sd = dp
    done = ckpt_tool.convert(path, tmp_path / "dcp_out", to_dcp=True)
    assert done.format == "dcp" and (tmp_path / "dcp_out" / ".metadata").is_file()
    back = ckpt_tool.convert(tmp_path / "dcp_out", tmp_path / "back.safetensors")
    assert _equal(load_file(back.output), {f"module.{k}": v for k, v in sd.items()})


def test_average_and_diff(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"ep{seed}.pth")
        torch.save(ConvNet().state_dict(), paths[-1])
    avg = ckpt_tool.average(paths, output=tmp_path / "avg.pth")
    a, b = (torch.load(p, weights_only=True) for p in paths)
    got = torch.load(avg.output, weights_only=True)
    expect = ((a["fc.weight"].double() + b["fc.weight"].double()) / 2).float()
    assert torch.equal(got["fc.weight"], expect)
    same = ckpt_tool.diff(paths[0], paths[0])
    assert same.exit_code == 0 and same.data["identical"]
    other = ckpt_tool.diff(paths[0], paths[1])
    assert other.exit_code == 3 and not other.data["identical"]


def test_archs_lists_the_registry() -> None:
    from ckpt_tool import api

    listed = api.archs("conv*")
    assert listed.exit_code == 0 and "convnet" in listed.data["seed"]["names"]
    assert all(n.startswith("conv") for n in listed.data["seed"]["names"])


def test_inspect_and_scan() -> None:
    report = ckpt_tool.inspect(FIXTURES / "convnet_dataparallel.pth", stats=True)
    assert report.exit_code == 0 and report.data["prefix"]
    assert all(t["stats"] is not None for t in report.data["tensors"])
    assert report.tree().name == ""
    scanned = ckpt_tool.scan(FIXTURES / "convnet_dataparallel.pth")
    assert isinstance(scanned, ckpt_tool.ScanReport) and scanned.exit_code == 0


def test_dangerous_file_is_reported_not_written(tmp_path: Path) -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> Any:
            return (print, ("never runs",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2).numpy(), "x": Boom()}))
    scanned = ckpt_tool.scan(path)
    assert scanned.exit_code == 3
    inspected = ckpt_tool.inspect(path)
    assert inspected.exit_code == 3 and inspected.dangerous
    with pytest.raises(CkptError) as info:
        ckpt_tool.cast(path, "fp16")
    assert info.value.exit_code == 3
    assert list(tmp_path.iterdir()) == [path]


def test_transplant_and_coverage_failure(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "convnet.pth"
    torch.save(ConvNet().state_dict(), src)
    report = ckpt_tool.transplant(src, "convnet", num_classes=4, output=tmp_path / "t.pth")
    assert report.details["coverage"]["ok"] and report.written
    model = ConvNet(num_classes=4)
    model.load_state_dict(torch.load(report.output, weights_only=True), strict=True)
    with pytest.raises(CheckFailed) as info:
        ckpt_tool.transplant(src, "mlp", output=tmp_path / "m.pth")
    refused = info.value.report
    assert isinstance(refused, ckpt_tool.WriteReport) and not refused.written
    assert refused.details["coverage"]["ok"] is False
    assert not (tmp_path / "m.pth").exists()


def test_smoke_train(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "convnet.pth"
    torch.save(ConvNet().state_dict(), src)
    report = ckpt_tool.smoke_train(src, "convnet", steps=4, input_shape="1,28,28")
    assert report.exit_code == 0 and report.data["ok"], report.data["failed"]
    assert len(report.data["losses"]) == 4


def test_merge_lora_matches_peft(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    base = transformers.LlamaForCausalLM(cfg)
    base.save_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")
    report = ckpt_tool.merge_lora(
        tmp_path / "base", tmp_path / "adapter", output=tmp_path / "merged.safetensors"
    )
    assert len(report.details["targets"]) == 1
    ref = peft.PeftModel.from_pretrained(
        transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).merge_and_unload()
    got = load_file(report.output)
    for k, v in ref.state_dict().items():
        if k in got:
            assert torch.equal(got[k], v), k


# --- JSON errors and usage errors --------------------------------------------------------------


def test_json_error_is_one_document(tmp_path: Path) -> None:
    result = run_cli(["cast", tmp_path / "missing.pth", "--dtype", "fp16", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc == {"error": doc["error"], "exit_code": 1} and "missing.pth" in doc["error"]
    assert result.stderr.strip() == f"error: {doc['error']}"


def test_usage_error_is_one_line(tmp_path: Path) -> None:
    for args in (["cast", "x.pth"], ["cast", "x.pth", "-t", "fp16", "--bogus"], ["nosuch"]):
        result = run_cli(args)
        assert result.exit_code == 2, args
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ckpt"), result.stderr
        assert "--help" in lines[0] and "╭" not in lines[0]
    result = run_cli(["cast", "x.pth", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["exit_code"] == 2


def test_transplant_refusal_json_keeps_the_report(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "convnet.pth"
    torch.save(ConvNet().state_dict(), src)
    result = run_cli(["transplant", src, "--into", "mlp", "--json"])
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert (
        doc["coverage"]["ok"] is False
        and doc["exit_code"] == 3
        and "--min-coverage" in doc["error"]
    )


# --- help at 80 columns, progress under a pseudo-terminal ---------------------------------------


@pytest.mark.parametrize("command", ["scan", "extract", "merge-lora", "smoke-train", "freeze"])
def test_help_paragraphs_wrap_at_80_columns(command: str) -> None:
    from typer.testing import CliRunner

    from ckpt_tool.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    text = result.stdout.split("╭")[0]  # the description, above the option panels
    lines = [line.rstrip() for line in text.splitlines()][3:]  # after the usage line
    assert all(len(line) <= 80 for line in lines)
    for line, after in itertools.pairwise(lines):
        if line.strip() and after.strip() and not after.strip().startswith("Example"):
            # a line followed by more of its paragraph is full: broken by width, not by source
            assert len(line) >= 60, (line, after)


def _run_on_pty(args: list[str], env_extra: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m ckpt_tool ARGS` with stderr on a pseudo-terminal: (code, stdout, stderr)."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    from conftest import REPO

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CKPT_NO_PROGRESS"}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckpt_tool", *args],
        stdout=subprocess.PIPE, stderr=slave, cwd=REPO, env=env,
    )  # fmt: skip
    os.close(slave)
    # stdout is drained on a thread: a --json report larger than the pipe's buffer would
    # otherwise block the child while this thread waits for the terminal to close
    out_chunks: list[bytes] = []
    drain = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()))  # type: ignore[union-attr]
    drain.start()
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    drain.join(timeout=300)
    proc.wait(timeout=300)
    os.close(master)
    return proc.returncode, b"".join(out_chunks).decode(), b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_stderr(tmp_path: Path) -> None:
    from collections import OrderedDict

    src = tmp_path / "many.pth"
    torch.save(OrderedDict((f"w{i}", torch.rand(64, 64)) for i in range(300)), src)
    code, out, err = _run_on_pty(["cast", str(src), "-t", "fp16", "-o", str(tmp_path / "a.pth")])
    assert code == 0, err
    assert "writing tensors" in err and "300" in err  # the progress line, on stderr only
    assert "\x1b[K" in err  # erased when done
    assert "writing tensors" not in out and "wrote" in out
    code, out, err = _run_on_pty(
        ["cast", str(src), "-t", "fp16", "-o", str(tmp_path / "b.pth"), "--json"]
    )
    assert code == 0 and "writing tensors" not in err  # --json: never
    assert json.loads(out)["written"] is True
    code, out, err = _run_on_pty(
        ["cast", str(src), "-t", "fp16", "-o", str(tmp_path / "c.pth")], {"CKPT_NO_PROGRESS": "1"}
    )
    assert code == 0 and "writing tensors" not in err


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    src = tmp_path / "m.pth"
    torch.save({f"w{i}": torch.rand(8) for i in range(50)}, src)
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", "cast", str(src), "-t", "fp16"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == ""


def test_library_calls_are_silent_and_hooks_see_progress(tmp_path: Path) -> None:
    from ckpt_tool import progress

    src = tmp_path / "m.pth"
    torch.save({f"w{i}": torch.rand(8) for i in range(20)}, src)
    seen: list[tuple[str, int, int]] = []
    with progress.showing(lambda what, done, total: seen.append((what, done, total))):
        ckpt_tool.inspect(src, stats=True)
    assert ("reading tensors", 20, 20) in seen
    assert [d for w, d, _ in seen if w == "reading tensors"] == list(range(21))


# --- #16's commands through the API ------------------------------------------------------------


def test_fp8_cast_with_scales(dp: Any, tmp_path: Path) -> None:
    path, sd = dp
    report = ckpt_tool.cast(path, "fp8_e4m3fn", fp8_scale=True, output=tmp_path / "fp8.safetensors")
    got = load_file(report.output)
    w = sd["fc.weight"]
    scale = got["module.fc.weight_scale"]
    assert scale.dtype == torch.float32
    expect = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(got["module.fc.weight"].view(torch.uint8), expect.view(torch.uint8))
    assert report.cast is not None and report.cast["scales"]


def test_extract_keep_and_strip_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ConvNet()
    path = tmp_path / "det.pth"
    torch.save(
        {
            "model": {
                **{f"backbone.{k}": v for k, v in net.state_dict().items()},
                "head.w": torch.ones(3),
            }
        },
        path,
    )
    report = ckpt_tool.extract(
        path, keep=["backbone.*"], strip_prefix="backbone.", output=tmp_path / "bb.safetensors"
    )
    assert report.details["left_out"] == ["head.w"]
    assert _equal(load_file(report.output), net.state_dict())


def test_model_folder_through_the_api(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    report = ckpt_tool.cast(tmp_path / "base", "bf16", output=tmp_path / "half")
    assert report.format == "hf-folder" and report.files["config_dtype"] == "bfloat16"
    assert "config.json" in report.files["files"] and "model.safetensors" in report.files["files"]
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "half")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
