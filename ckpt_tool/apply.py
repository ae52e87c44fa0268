"""Applying a freeze state: to a checkpoint's weights (`ckpt freeze`) and to a live model.

`apply_freeze(model, path)` is the library side of DESIGN "Freeze state": it reads what
`ckpt freeze` recorded (Parameters' requires_grad in .pth, `ckpt.frozen` in safetensors) and
sets it on a model, and keeps the recorded BatchNorm layers in eval mode (see docs/freeze.md).
torch is imported only when a live model is involved.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_tool.checkpoint import (
    Checkpoint,
    as_record,
    counts_as_parameter,
    load,
)
from ckpt_tool.edit import Output, mark_bn_eval, rebuild, weight_items
from ckpt_tool.errors import SurgeryError
from ckpt_tool.formats.safe_pickle import TensorRecord, view_key
from ckpt_tool.reports import CountFreeze, CountReport, FreezeDetails
from ckpt_tool.surgery.freeze import CountRow, FreezePlan, bare, can_train

if TYPE_CHECKING:
    from torch import nn


def bare_path(module_path: str) -> str:
    """A module path without its wrapper chain ('module.layer1.1' -> 'layer1.1')."""
    return bare(module_path + ".").rstrip(".") if module_path else module_path


is_parameter = counts_as_parameter


def kinds_inferred(ckpt: Checkpoint) -> bool:
    """True when parameters and buffers are told apart by name, not by the file."""
    return not ckpt.frozen_recorded and ckpt.layout != "module"


def parameter_state(ckpt: Checkpoint) -> tuple[dict[str, bool], list[str]]:
    """Freezable parameter key -> requires_grad (True when unrecorded), and every other key."""
    params: dict[str, bool] = {}
    others: list[str] = []
    for key, e in ckpt.tensors.items():
        if is_parameter(ckpt, e) and can_train(e.dtype):
            params[key] = e.record.requires_grad if e.record.is_parameter else True
        else:
            others.append(key)
    return params, others


def checkpoint_rows(ckpt: Checkpoint) -> list[CountRow]:
    """Count rows for a checkpoint's tensors; tied tensors (same storage view) marked."""
    seen: set[tuple[Any, ...]] = set()
    rows = []
    for key, e in ckpt.tensors.items():
        view = view_key(e.record)
        param = is_parameter(ckpt, e)
        trainable = (
            param
            and can_train(e.dtype)
            and (e.record.requires_grad if e.record.is_parameter else True)
        )
        rows.append(CountRow(key, param, e.numel, e.dtype, e.nbytes, trainable, view in seen))
        seen.add(view)
    return rows


def model_rows(model: nn.Module) -> list[CountRow]:
    """Count rows for a live model's state_dict; tied parameters counted once, as parameters()."""
    from torch import nn

    seen: set[int] = set()
    rows = []
    for key, t in model.state_dict(keep_vars=True).items():
        param = isinstance(t, nn.Parameter)
        dtype = str(t.dtype).removeprefix("torch.")
        nbytes = t.numel() * t.element_size()
        trainable = param and bool(t.requires_grad)
        rows.append(CountRow(key, param, t.numel(), dtype, nbytes, trainable, id(t) in seen))
        seen.add(id(t))
    return rows


# --- checkpoint output --------------------------------------------------------------------------


def freeze_checkpoint(ckpt: Checkpoint, plan: FreezePlan) -> Output:
    """The checkpoint with the plan's requires_grad on Parameters and BatchNorm eval marks.

    Every planned parameter becomes a Parameter record (plain state_dicts gain the freeze
    state); the eval marks go to the weights' `_metadata` (ignored by load_state_dict).
    """
    memo: dict[int, TensorRecord] = {}
    items: list[tuple[str, Any]] = []
    for key, value in weight_items(ckpt):
        rec = as_record(value)
        if rec is not None and key in plan.after:
            new = memo.get(id(rec))
            if new is None:
                new = dataclasses.replace(rec, is_parameter=True, requires_grad=plan.after[key])
                memo[id(rec)] = new
            items.append((key, new))
        else:
            items.append((key, value))
    out = rebuild(ckpt, items)
    if plan.bn_eval_before or plan.bn_eval_after:
        mark_bn_eval(out, plan.bn_eval_after)
    return out


# --- live models --------------------------------------------------------------------------------


@dataclass
class AppliedFreeze:
    """What apply_freeze did: names are the model's own."""

    recorded: bool  # the checkpoint records a freeze state (else nothing was changed)
    frozen: list[str] = field(default_factory=list)  # parameters now requires_grad=False
    trainable: list[str] = field(default_factory=list)  # parameters set requires_grad=True
    bn_eval: list[str] = field(default_factory=list)  # modules kept in eval mode
    missing: list[str] = field(default_factory=list)  # model parameters the file does not name
    unexpected: list[str] = field(default_factory=list)  # file parameters/BN not in the model


class _KeepEval:
    """Stands in for a BatchNorm module's `train`: whatever mode is asked, it stays in eval."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return type(self.module).train(self.module, False)


def _keep_eval_hook(module: nn.Module, args: Any) -> None:
    # a safety net for code that sets `.training = True` directly instead of calling train()
    if module.training:
        module.training = False


def keep_in_eval(module: nn.Module) -> None:
    """Put a module in eval mode and keep it there through later `model.train()` calls."""
    if isinstance(module.__dict__.get("train"), _KeepEval):
        return
    module.eval()
    module.train = _KeepEval(module)  # type: ignore[method-assign]
    module.register_forward_pre_hook(_keep_eval_hook)


def apply_freeze(
    model: nn.Module, checkpoint: Checkpoint | str | os.PathLike[str], weights: str | None = None
) -> AppliedFreeze:
    """Set requires_grad on model's parameters, and keep BatchNorm layers in eval, as recorded.

    checkpoint is a path or a loaded `Checkpoint` (read metadata only; no tensor bytes, no
    code runs). Wrapper prefixes (`module.`, `_orig_mod.`) are ignored on both sides. Model
    parameters the file does not name, and everything when the file records no freeze state
    (a plain state_dict), are left as they are.
    """
    ckpt = (
        checkpoint if isinstance(checkpoint, Checkpoint) else load(os.fspath(checkpoint), weights)
    )
    state = {
        bare(k): e.record.requires_grad
        for k, e in ckpt.tensors.items()
        if ckpt.frozen_recorded and e.record.is_parameter
    }
    bn = [bare_path(p) for p in ckpt.bn_eval]
    named = {bare(n): (n, p) for n, p in model.named_parameters()}
    if state and not state.keys() & named.keys() and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
        bn = [p.removeprefix("model.") for p in bn]
    if state and not state.keys() & named.keys():
        raise SurgeryError(
            f"{ckpt.path}: none of its {len(state)} parameters is a parameter of the model "
            f"(file: {next(iter(state))!r}, model: {next(iter(named), '(none)')!r}); check "
            "that the model is the architecture the checkpoint was made for"
        )
    result = AppliedFreeze(recorded=ckpt.frozen_recorded)
    for key, (name, param) in named.items():
        if key not in state:
            if state:
                result.missing.append(name)
            continue
        param.requires_grad_(state[key])
        (result.trainable if state[key] else result.frozen).append(name)
    result.unexpected = [k for k in state if k not in named]
    modules = {bare_path(n): (n, m) for n, m in model.named_modules()}
    for path in bn:
        if path in modules:
            name, module = modules[path]
            keep_in_eval(module)
            result.bn_eval.append(name)
        else:
            result.unexpected.append(path)
    return result


# --- reports --------------------------------------------------------------------------------------


def report_prefix(ckpt: Checkpoint) -> str:
    """The prefix grouped tables leave out: a wrapper chain, or Lightning's `model.`."""
    from ckpt_tool.surgery.prefixes import detect_prefix

    found = detect_prefix(ckpt.tensors)
    return found.prefix or ("model." if found.lightning else "")


def freeze_report(ckpt: Checkpoint, plan: FreezePlan) -> FreezeDetails:
    """What `ckpt freeze` changed, per top-level module and in total, as plain data."""
    from ckpt_tool.surgery.freeze import freeze_summary

    seen: set[tuple[Any, ...]] = set()
    numel: dict[str, int] = {}
    for key in plan.after:
        view = view_key(ckpt.tensors[key].record)
        if view not in seen:
            numel[key] = ckpt.tensors[key].numel
        seen.add(view)
    modules, totals = freeze_summary(numel, plan, report_prefix(ckpt))
    notes = list(plan.notes)
    if kinds_inferred(ckpt):
        notes.insert(
            0,
            "plain tensors: parameters told apart from buffers by name (running_mean, "
            "num_batches_tracked, integer dtypes ... are buffers)",
        )
    return {
        "mode": plan.mode,
        "patterns": plan.patterns,
        "regex": plan.regex,
        "matched": plan.matched,
        "matched_buffers": plan.matched_buffers,
        "changed_keys": plan.changed,
        "frozen_keys": [k for k, v in plan.after.items() if not v],
        "kinds_inferred": kinds_inferred(ckpt),
        "recorded_before": ckpt.frozen_recorded,
        "modules": modules,
        "totals": totals,
        "bn_eval": {
            "before": plan.bn_eval_before,
            "after": plan.bn_eval_after,
            "unmarked": plan.bn_unmarked,
        },
        "notes": notes,
    }


def count_checkpoint(ckpt: Checkpoint, depth: int = 1) -> CountReport:
    """`ckpt count` for a file: parameters trainable and frozen as recorded, buffers, bytes."""
    from ckpt_tool.surgery.freeze import count_report

    report = count_report(checkpoint_rows(ckpt), depth, report_prefix(ckpt))
    notes = []
    if not ckpt.frozen_recorded:
        notes.append(
            "no freeze state recorded (plain tensors): every parameter is assumed trainable"
            + ("; parameters and buffers told apart by name" if kinds_inferred(ckpt) else "")
        )
    if ckpt.layout == "module":
        notes.append("whole pickled model: parameters and buffers read from its modules")
    return {
        "file": str(ckpt.path),
        "arch": None,
        "format": ckpt.format,
        "layout": ckpt.layout,
        "weights_key": ckpt.weights_key,
        "freeze": {
            "recorded": ckpt.frozen_recorded,
            "assumed": not ckpt.frozen_recorded,
            "kinds_inferred": kinds_inferred(ckpt),
            "bn_eval": ckpt.bn_eval,
        },
        **report,  # type: ignore[typeddict-item]  # mypy: optional keys of CountReport
        "notes": notes,
    }


def count_model(
    model: nn.Module, label: str, ckpt: Checkpoint | None = None, depth: int = 1
) -> CountReport:
    """`ckpt count --arch`: a live model, after applying ckpt's freeze state when given."""
    from ckpt_tool.surgery.freeze import count_report

    applied = apply_freeze(model, ckpt) if ckpt is not None else None
    from ckpt_tool.surgery.prefixes import detect_prefix

    rows = model_rows(model)
    report = count_report(rows, depth, detect_prefix(r.key for r in rows).prefix)
    notes = []
    freeze: CountFreeze = {"recorded": False, "assumed": False, "kinds_inferred": False}
    if applied is None:
        notes.append("a freshly built model: every parameter trainable")
        freeze["bn_eval"] = []
    else:
        freeze["recorded"], freeze["bn_eval"] = applied.recorded, applied.bn_eval
        if not applied.recorded:
            notes.append(f"{ckpt.path if ckpt else ''}: no freeze state recorded; nothing applied")
        if applied.missing:
            notes.append(
                f"{len(applied.missing)} model parameter(s) not named by the file kept their "
                f"state (e.g. {applied.missing[0]})"
            )
        if applied.unexpected:
            notes.append(
                f"{len(applied.unexpected)} name(s) in the file are not in the model "
                f"(e.g. {applied.unexpected[0]})"
            )
    return {
        "file": str(ckpt.path) if ckpt is not None else None,
        "arch": label,
        "format": ckpt.format if ckpt is not None else None,
        "layout": ckpt.layout if ckpt is not None else "model",
        "weights_key": ckpt.weights_key if ckpt is not None else None,
        "freeze": freeze,
        **report,  # type: ignore[typeddict-item]  # mypy: optional keys of CountReport
        "applied": None
        if applied is None
        else {"missing": applied.missing, "unexpected": applied.unexpected},
        "notes": notes,
    }
