"""`ckpt merge-lora`: fold a PEFT LoRA adapter into its base weights, one target at a time.

PEFT's own rules: W + scale · B @ A per target module, computed in float32 and written in W's
dtype; scale = lora_alpha / r (alpha / sqrt(r) with use_rslora), with per-module ranks and
alphas from rank_pattern / alpha_pattern (matched as PEFT's get_pattern_key does);
fan_in_fan_out transposes the update (GPT-2's Conv1D); embedding LoRA adds (B @ A)ᵀ; conv LoRA
composes A and B as PEFT does; lora_bias adds scale · B's bias; modules_to_save and saved base
layers are copied over. Adapter keys are matched through PEFT's `base_model.model.` prefix.
DoRA and other adapter types are refused with their type named.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint, TensorEntry, load
from .errors import SurgeryError, UnreadableCheckpoint, UsageError
from .formats import writer
from .formats.raw import tensor_bytes
from .formats.safe_pickle import StorageRef, TensorRecord, contiguous_stride
from .reports import MergeTarget

if TYPE_CHECKING:
    import torch

    from .tensors import TensorReader

PEFT_PREFIX = "base_model.model."
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
FLOATING = ("float32", "float16", "bfloat16", "float64")


@dataclass
class LoraTarget:
    """One module the adapter changes, and how."""

    module: str  # module path in the base model ("model.layers.0.self_attn.q_proj")
    kind: str  # linear | embedding | conv
    base_key: str  # the base weight it updates
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scale: float  # alpha / r (or / sqrt(r)) times --scale
    fan_in_fan_out: bool = False
    bias_key: str | None = None  # lora_bias: the base bias B's bias is added to
    b_bias_key: str | None = None
    rel_change: float | None = None  # ||ΔW|| / ||W||, known once merged

    def as_json(self) -> MergeTarget:
        return {
            "module": self.module,
            "kind": self.kind,
            "key": self.base_key,
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "rel_change": self.rel_change,
        }


@dataclass
class MergePlan:
    """Every target, every copied tensor (modules_to_save, saved base layers), the config."""

    targets: list[LoraTarget]
    copies: dict[str, str]  # base key -> adapter key
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def read_adapter(path: Path, config: Path | None) -> tuple[Path, dict[str, Any]]:
    """(adapter weights file, adapter_config.json) from a PEFT folder or a file + --config."""
    if path.is_dir():
        weights = next((path / n for n in ADAPTER_FILES if (path / n).is_file()), None)
        if weights is None:
            raise UnreadableCheckpoint(
                f"{path}: no adapter_model.safetensors or adapter_model.bin; is it a PEFT "
                "adapter folder?"
            )
        config = config or path / "adapter_config.json"
    else:
        weights = path
        config = config or path.parent / "adapter_config.json"
    if not config.is_file():
        raise UnreadableCheckpoint(
            f"{config}: no adapter_config.json; pass the adapter folder, or --config FILE"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnreadableCheckpoint(f"{config}: not a valid adapter_config.json ({exc})") from None
    if not isinstance(data, dict):
        raise UnreadableCheckpoint(f"{config}: not a valid adapter_config.json")
    kind = str(data.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise SurgeryError(f"{config}: a {kind} adapter; merge-lora merges LoRA adapters only")
    if data.get("use_dora"):
        raise SurgeryError(
            f"{config}: a DoRA adapter (use_dora): its magnitude vector is not a plain "
            "W + B @ A update; merge it with PEFT's merge_and_unload"
        )
    return weights, data


def pattern_key(patterns: dict[str, Any], key: str) -> str | None:
    """PEFT's get_pattern_key: the first pattern that matches the end of a module path."""
    for p in patterns:
        if re.match(rf"(.*\.)?({p})$", key):
            return p
    return None


def plan_merge(
    base: dict[str, TensorEntry],
    adapter: dict[str, TensorEntry],
    config: dict[str, Any],
    multiplier: float = 1.0,
) -> MergePlan:
    """Pair every LoRA pair of the adapter with its base weight (no tensor is read)."""
    r_default = int(config.get("r", 8))
    alpha_default = float(config.get("lora_alpha", r_default))
    alphas = config.get("alpha_pattern") or {}
    ranks = config.get("rank_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    names = {k.removeprefix(PEFT_PREFIX): k for k in adapter}
    modules: dict[str, dict[str, str]] = {}
    copies: dict[str, str] = {}
    for name, key in names.items():
        m = re.match(r"^(.*)\.(lora_A|lora_B)\.(weight|bias)$", name) or re.match(
            r"^(.*)\.(lora_embedding_A|lora_embedding_B)$", name
        )
        if m:
            part = m.group(2) + ("_bias" if m.lastindex == 3 and m.group(3) == "bias" else "")
            modules.setdefault(m.group(1), {})[part] = key
        elif ".lora_" in name:
            raise SurgeryError(f"adapter key {key!r} is not a LoRA weight ckpt knows how to merge")
        else:
            copies[name.replace(".base_layer.", ".").replace(".modules_to_save.", ".")] = key
    targets: list[LoraTarget] = []
    for module, parts in modules.items():
        if "lora_embedding_A" in parts:
            kind, a, b = "embedding", parts.get("lora_embedding_A"), parts.get("lora_embedding_B")
        else:
            a, b = parts.get("lora_A"), parts.get("lora_B")
            kind = "conv" if a is not None and len(adapter[a].shape) == 4 else "linear"
        if a is None or b is None:
            raise SurgeryError(f"adapter module {module!r} has only one of its LoRA pair")
        base_key = f"{module}.weight"
        if base_key not in base:
            raise SurgeryError(
                f"adapter module {module!r} has no base weight {base_key!r}; is this the "
                f"adapter's base model? (base keys look like {next(iter(base), '-')!r})"
            )
        rank = int(adapter[a].shape[0])
        rank_key = pattern_key(ranks, module)
        if rank_key is not None and int(ranks[rank_key]) != rank:
            raise SurgeryError(
                f"adapter module {module!r}: rank_pattern says r={ranks[rank_key]} but its "
                f"lora_A has {rank} rows"
            )
        if rank_key is None and rank != r_default and not ranks:
            raise SurgeryError(
                f"adapter module {module!r}: r={r_default} in the config but its lora_A has "
                f"{rank} rows"
            )
        alpha_key = pattern_key(alphas, module)
        alpha = float(alphas[alpha_key]) if alpha_key is not None else alpha_default
        scale = (alpha / math.sqrt(rank) if rslora else alpha / rank) * multiplier
        bias = parts.get("lora_B_bias")
        bias_key = f"{module}.bias" if bias is not None else None
        if bias_key is not None and bias_key not in base:
            raise SurgeryError(f"adapter module {module!r} has lora_bias but the base has no bias")
        targets.append(
            LoraTarget(
                module, kind, base_key, a, b, rank, alpha, scale,
                fan_in_fan_out and kind == "linear", bias_key, bias,
            )
        )  # fmt: skip
    for base_key in copies:
        if base_key not in base:
            raise SurgeryError(
                f"adapter tensor {copies[base_key]!r} replaces {base_key!r}, which the base does "
                "not have"
            )
    if not targets:
        raise SurgeryError("the adapter holds no LoRA pairs; nothing to merge")
    targets.sort(key=lambda t: list(base).index(t.base_key))
    return MergePlan(targets, copies, config)


def delta(target: LoraTarget, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> Any:
    """The float32 update PEFT's get_delta_weight computes for one target."""
    import torch

    a, b = a.float(), b.float()
    if target.kind == "embedding":
        return (b @ a).T * target.scale
    if target.kind == "conv":
        if weight.shape[2:4] == (1, 1):
            out = (b.squeeze(3).squeeze(2) @ a.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
            return out * target.scale
        out = torch.nn.functional.conv2d(a.transpose(0, 1), b)
        return out.transpose(0, 1) * target.scale
    out = b @ a
    return (out.T if target.fan_in_fan_out else out) * target.scale


def _bytes(t: torch.Tensor) -> bytes:
    return tensor_bytes(t)


@dataclass
class Merging:
    """What the writer needs: the merged records (bytes produced when written) and how to get
    the report's relative changes for a dry run."""

    records: dict[str, TensorRecord]
    sources: writer.Sources
    plan: MergePlan
    readers: list[TensorReader]

    def compute_all(self) -> None:
        """A dry run: every update computed (for the report), nothing kept."""
        for target in self.plan.targets:
            _merged(self, target)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def _merged(m: Merging, target: LoraTarget) -> bytes:

    base_reader, adapter_reader = m.readers
    base = base_reader.ckpt.tensors
    adapter = adapter_reader.ckpt.tensors
    w = base_reader.read(base[target.base_key])
    if target.base_key in m.plan.copies:  # a saved base layer replaces the base's own
        w = adapter_reader.read(adapter[m.plan.copies[target.base_key]])
    a = adapter_reader.read(adapter[target.a_key])
    b = adapter_reader.read(adapter[target.b_key])
    d = delta(target, a, b, w)
    if tuple(d.shape) != tuple(w.shape):
        raise SurgeryError(
            f"{target.module}: the LoRA update has shape {list(d.shape)} but the base weight "
            f"{list(w.shape)} (fan_in_fan_out set right?)"
        )
    merged = (w.float() + d).to(w.dtype)
    norm = float(w.float().norm())
    target.rel_change = float(d.norm()) / norm if norm else math.inf
    del a, b
    return _bytes(merged) if merged.numel() else b""


def _merged_bias(m: Merging, target: LoraTarget) -> bytes:
    base_reader, adapter_reader = m.readers
    assert target.bias_key is not None and target.b_bias_key is not None
    bias = base_reader.read(base_reader.ckpt.tensors[target.bias_key])
    extra = adapter_reader.read(adapter_reader.ckpt.tensors[target.b_bias_key])
    return _bytes((bias.float() + extra.float() * target.scale).to(bias.dtype))


def prepare(base: Checkpoint, adapter: Checkpoint, plan: MergePlan) -> Merging:
    """Records for every changed tensor, their bytes produced one at a time as written."""
    from .tensors import TensorReader

    sources = writer.Sources(base)
    m = Merging({}, sources, plan, [TensorReader(base), TensorReader(adapter)])

    def record(key: str, produce: Callable[[], bytes]) -> None:
        rec = base.tensors[key].record
        storage = StorageRef(f"merge:{key}", rec.dtype, "cpu", rec.numel)

        def stream() -> Iterator[bytes]:
            yield produce()

        sources.add_stream(storage, stream)
        m.records[key] = TensorRecord(
            storage, 0, rec.shape, contiguous_stride(rec.shape), rec.dtype,
            rec.requires_grad, rec.is_parameter,
        )  # fmt: skip

    for target in plan.targets:
        if base.tensors[target.base_key].dtype not in FLOATING:
            raise SurgeryError(f"{target.base_key}: a {base.tensors[target.base_key].dtype} weight")
        record(target.base_key, _bind(_merged, m, target))
        if target.bias_key is not None:
            record(target.bias_key, _bind(_merged_bias, m, target))
    merged = {t.base_key for t in plan.targets}
    for base_key, adapter_key in plan.copies.items():
        if base_key in merged:
            continue  # replaced, then merged above

        def copy(k: str = adapter_key, bk: str = base_key) -> bytes:
            from .tensors import torch_dtype

            t = m.readers[1].read(adapter.tensors[k])
            want = base.tensors[bk]
            if tuple(t.shape) != tuple(want.shape):
                raise SurgeryError(
                    f"adapter tensor {k!r} has shape {list(t.shape)} but {bk!r} has "
                    f"{list(want.shape)}"
                )
            return _bytes(t.to(torch_dtype(want.dtype)))

        record(base_key, copy)
    return m


def _bind(
    fn: Callable[[Merging, LoraTarget], bytes], m: Merging, t: LoraTarget
) -> Callable[[], bytes]:
    return lambda: fn(m, t)


def scale_option(value: float) -> float:
    if not math.isfinite(value):
        raise UsageError("--scale must be a finite number")
    return value


def load_adapter(path: Path, config: Path | None) -> tuple[Checkpoint, dict[str, Any]]:
    weights, cfg = read_adapter(path, config)
    return load(weights), cfg
