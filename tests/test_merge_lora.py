"""`ckpt merge-lora` against PEFT's own merge_and_unload: tiny Llama and GPT-2 models made from
configs (no download), adapters made with peft, merged weights and logits compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli, run_json
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _randomise_lora(model: Any, seed: int) -> None:
    """PEFT initialises B (and embedding A) to zero; give every LoRA tensor real values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _make(tmp: Path, kind: str, lora: dict[str, Any]) -> tuple[Path, Path, Any]:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        base = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32)
        base = transformers.GPT2LMHeadModel(cfg)
    base.save_pretrained(tmp / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(**lora))
    _randomise_lora(model, 1)
    model.save_pretrained(tmp / "adapter")
    return tmp / "base", tmp / "adapter", cfg


def _reference(kind: str, base: Path, adapter: Path) -> Any:
    cls = transformers.LlamaForCausalLM if kind == "llama" else transformers.GPT2LMHeadModel
    return peft.PeftModel.from_pretrained(cls.from_pretrained(base), adapter).merge_and_unload()


LLAMA = {
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["q_proj", "v_proj", "o_proj", "embed_tokens"],
    "modules_to_save": ["lm_head"],
    "rank_pattern": {"layers.1.self_attn.v_proj": 2},
    "alpha_pattern": {"o_proj": 16},
}
CASES = {
    "llama": ("llama", LLAMA),
    "llama-rslora": ("llama", {**LLAMA, "use_rslora": True}),
    "gpt2": (
        "gpt2",
        {"r": 4, "lora_alpha": 4, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_equals_peft(tmp_path: Path, case: str) -> None:
    kind, lora = CASES[case]
    base, adapter, cfg = _make(tmp_path, kind, lora)
    out = tmp_path / "merged.safetensors"
    code, report = run_json(["merge-lora", base, adapter, "-o", out])
    assert code == 0, report
    merged = _reference(kind, base, adapter)
    ref = merged.state_dict()
    got = load_file(out)
    worst = max((ref[k].float() - got[k].float()).abs().max().item() for k in got)
    print(f"{case}: max |ckpt - peft| = {worst}")  # the acceptance asks for it in the log
    assert worst <= 1e-6, worst
    assert {t["module"] for t in report["targets"]} >= {
        m for m in (n.rsplit(".", 2)[0] for n in got) if m.endswith(("q_proj", "c_attn"))
    }
    # the merged model's logits match
    cls = transformers.LlamaForCausalLM if kind == "llama" else transformers.GPT2LMHeadModel
    fresh = cls(cfg)
    missing, unexpected = fresh.load_state_dict(got, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    if kind == "gpt2":
        fresh.tie_weights()
    ids = torch.arange(12).reshape(2, 6) % 96
    with torch.no_grad():
        a, b = fresh.eval()(ids).logits, merged.eval()(ids).logits
    assert (a - b).abs().max().item() <= 1e-5


def test_report_scales_and_patterns(tmp_path: Path) -> None:
    base, adapter, _ = _make(tmp_path, "llama", LLAMA)
    code, report = run_json(["merge-lora", base, adapter, "--dry-run"])
    assert code == 0 and report["written"] is False
    rows = {t["module"]: t for t in report["targets"]}
    v1 = rows["model.layers.1.self_attn.v_proj"]
    assert v1["rank"] == 2 and v1["scale"] == 4.0  # rank_pattern r=2, alpha 8
    assert rows["model.layers.0.self_attn.o_proj"]["scale"] == 4.0  # alpha_pattern 16 / r 4
    assert rows["model.embed_tokens"]["kind"] == "embedding"
    assert all(t["rel_change"] is not None and t["rel_change"] > 0 for t in report["targets"])
    assert "lm_head.weight" in report["copied"]


def test_scale_multiplier(tmp_path: Path) -> None:
    base, adapter, _ = _make(tmp_path, "gpt2", CASES["gpt2"][1])
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    assert run_json(["merge-lora", base, adapter, "-o", full])[0] == 0
    assert run_json(["merge-lora", base, adapter, "-o", half, "--scale", "0.5"])[0] == 0
    w0 = load_file(base / "model.safetensors")
    key = "transformer.h.0.attn.c_attn.weight"
    d_full = load_file(full)[key] - w0[key]
    d_half = load_file(half)[key] - w0[key]
    assert torch.allclose(d_half * 2, d_full, atol=1e-6)


def test_conv_lora(tmp_path: Path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.point = torch.nn.Conv2d(8, 8, 1)
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.point(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = Net()
    torch.save(net.state_dict(), tmp_path / "base.pth")
    model = peft.get_peft_model(
        net, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["conv", "point", "fc"])
    )
    _randomise_lora(model, 2)
    model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "merged.pth"
    code, report = run_json(["merge-lora", tmp_path / "base.pth", tmp_path / "adapter", "-o", out])
    assert code == 0, report
    assert {t["kind"] for t in report["targets"]} == {"conv", "linear"}
    ref = model.merge_and_unload().state_dict()
    got = torch.load(out, weights_only=True)
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-6


def test_dora_and_other_types_are_refused(tmp_path: Path) -> None:
    base, adapter, _ = _make(tmp_path, "gpt2", CASES["gpt2"][1])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    result = run_cli(["merge-lora", base, adapter, "-o", tmp_path / "m.safetensors"])
    assert result.exit_code == 1 and "DoRA" in result.stderr
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    result = run_cli(["merge-lora", base, adapter, "-o", tmp_path / "m.safetensors"])
    assert result.exit_code == 1 and "IA3" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_adapter_for_another_model_is_refused(tmp_path: Path) -> None:
    _, adapter, _ = _make(tmp_path, "gpt2", CASES["gpt2"][1])
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    result = run_cli(["merge-lora", tmp_path / "other.pth", adapter, "-o", tmp_path / "m.pth"])
    assert result.exit_code == 1 and "no base weight" in result.stderr
    assert not (tmp_path / "m.pth").exists()
