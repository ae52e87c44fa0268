"""Whole Hugging Face model folders out (convert / cast / merge-lora with `-o DIR`), the
sharded index as transformers writes it, and the rules for files inside an HF cache.

Models are made from configs (no download); every folder written is loaded back with
transformers' own from_pretrained and compared bitwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli, run_json
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

EXTRA_FILES = {
    "tokenizer_config.json": '{"model_max_length": 32}\n',
    "special_tokens_map.json": '{"bos_token": "<s>"}\n',
    "preprocessor_config.json": '{"size": 32}\n',
    "README.md": "# tiny\n",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _llama(folder: Path, tie: bool = False) -> Any:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    for name, text in EXTRA_FILES.items():
        (folder / name).write_text(text)
    return model


def _load(folder: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(folder)


def _same_state(a: Any, b: Any, dtype: torch.dtype | None = None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        expected = sa[k] if dtype is None else sa[k].to(dtype)
        assert sb[k].dtype == expected.dtype, k
        assert torch.equal(sb[k], expected), k


def test_convert_folder_to_folder_with_cast(tmp_path: Path) -> None:
    _llama(tmp_path / "base")
    out = tmp_path / "out"
    code, report = run_json(["convert", tmp_path / "base", "-o", out, "--dtype", "bf16"])
    assert code == 0, report
    assert report["format"] == "hf-folder" and report["written"] and report["verified"]
    assert report["config_dtype"] == "bfloat16"
    assert set(report["copied_files"]) == {"config.json", "generation_config.json", *EXTRA_FILES}
    assert sorted(p.name for p in out.iterdir()) == report["files"]
    for name, text in EXTRA_FILES.items():
        assert (out / name).read_text() == text
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert config.get("dtype", "bfloat16") == "bfloat16"
    merged = _load(out)
    assert merged.dtype == torch.bfloat16
    _same_state(_load(tmp_path / "base"), merged, torch.bfloat16)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_sharded_folder_index_as_transformers_writes_it(tmp_path: Path) -> None:
    model = _llama(tmp_path / "base")
    model.save_pretrained(tmp_path / "theirs", max_shard_size="40kB")
    out = tmp_path / "ours"
    code, report = run_json(["convert", tmp_path / "base", "-o", out, "--max-shard-size", "40kB"])
    assert code == 0, report
    assert len(report["shards"]) > 1 and report["index"] == str(
        out / "model.safetensors.index.json"
    )
    ours = json.loads((out / "model.safetensors.index.json").read_text())
    theirs = json.loads((tmp_path / "theirs" / "model.safetensors.index.json").read_text())
    assert ours["metadata"].keys() >= {"total_size", "total_parameters"}
    assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]
    assert ours["metadata"]["total_parameters"] == theirs["metadata"]["total_parameters"]
    assert list(ours["weight_map"]) == sorted(ours["weight_map"])
    assert ours["weight_map"].keys() == theirs["weight_map"].keys()
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(ours["weight_map"].values())):
        tensors.update(load_file(out / shard))
    assert (
        sum(t.numel() * t.element_size() for t in tensors.values())
        == ours["metadata"]["total_size"]
    )
    assert not (out / "model.safetensors").exists()
    _same_state(_load(tmp_path / "base"), _load(out))


def test_cast_to_folder_and_tied_embeddings(tmp_path: Path) -> None:
    _llama(tmp_path / "base", tie=True)
    out = tmp_path / "fp16"
    code, report = run_json(["cast", tmp_path / "base", "--dtype", "fp16", "-o", out])
    assert code == 0, report
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    loaded = _load(out)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    _same_state(_load(tmp_path / "base"), loaded, torch.float16)


def test_merge_lora_to_folder(tmp_path: Path) -> None:
    base = _llama(tmp_path / "base")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    adapted = peft.get_peft_model(base, lora)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    adapted.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "merged"
    code, report = run_json(["merge-lora", tmp_path / "base", tmp_path / "adapter", "-o", out])
    assert code == 0, report
    assert report["format"] == "hf-folder"
    assert (out / "tokenizer_config.json").read_text() == EXTRA_FILES["tokenizer_config.json"]
    reference = peft.PeftModel.from_pretrained(
        _load(tmp_path / "base"), tmp_path / "adapter"
    ).merge_and_unload()
    merged = _load(out)
    for k, v in reference.state_dict().items():
        assert torch.allclose(merged.state_dict()[k], v, atol=1e-6), k
    ids = torch.arange(12)[None]
    assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-5)


def test_existing_folder_refused_then_replaced(tmp_path: Path) -> None:
    _llama(tmp_path / "base")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(["convert", tmp_path / "base", "-o", out])
    assert result.exit_code == 1
    assert "--force" in result.stderr and (out / "keep.txt").read_text() == "mine"
    code, report = run_json(["convert", tmp_path / "base", "-o", out, "--dry-run"])
    assert code == 0 and not report["written"] and (out / "keep.txt").exists()
    code, report = run_json(["convert", tmp_path / "base", "-o", out, "--force"])
    assert code == 0, report
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_folder_output_needs_a_folder_input(tmp_path: Path) -> None:
    _llama(tmp_path / "base")
    result = run_cli(["convert", tmp_path / "base" / "model.safetensors", "-o", tmp_path / "x"])
    assert result.exit_code == 2
    assert "no extension" in result.stderr and "model folder" in result.stderr
    assert not (tmp_path / "x").exists()
    result = run_cli(["convert", tmp_path / "base", "-o", tmp_path / "out.safetensors", "--to-dcp"])
    assert result.exit_code == 2 and "--to-dcp writes a folder" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def _fake_cache(root: Path) -> Path:
    """The layout huggingface_hub writes: snapshot files are symlinks to content blobs."""
    repo = root / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    _llama(root / "made")
    for f in (root / "made").iterdir():
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return snap


def test_hf_cache_is_never_written_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _fake_cache(tmp_path)
    before = {p.name: p.read_bytes() for p in (snap.parent.parent / "blobs").iterdir()}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, report = run_json(["cast", snap / "model.safetensors", "--dtype", "fp16"])
    assert code == 0, report
    assert Path(report["output"]) == Path("model.fp16.safetensors")
    assert (work / "model.fp16.safetensors").is_file()
    assert any("Hugging Face cache" in n for n in report["notes"])
    assert sorted(p.name for p in snap.iterdir()) == sorted(
        p.name for p in (tmp_path / "made").iterdir()
    )
    result = run_cli(["cast", snap / "model.safetensors", "--dtype", "fp16", "--in-place"])
    assert result.exit_code == 1
    assert "Hugging Face cache" in result.stderr and "-o" in result.stderr
    assert {p.name: p.read_bytes() for p in (snap.parent.parent / "blobs").iterdir()} == before
    assert (snap / "model.safetensors").is_symlink()
    # a cached folder to a new folder: the copies are files, not links into the cache
    code, report = run_json(["convert", snap, "-o", work / "copy"])
    assert code == 0, report
    assert not any(p.is_symlink() for p in (work / "copy").iterdir())
    _same_state(_load(tmp_path / "made"), _load(work / "copy"))
