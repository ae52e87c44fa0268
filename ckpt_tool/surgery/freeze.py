"""Freeze plans and parameter counts as data over key names: which parameters train.

Patterns are matched against each key without its wrapper chain (`module.`, `_orig_mod.`), so
`layer1.*` also selects `module.layer1.0.weight`. Globs use `fnmatch.fnmatchcase` (`*` crosses
dots); `--regex` patterns must match the whole name (`re.fullmatch`), like globs, so a short
pattern never silently selects more than the user wrote.
"""

from __future__ import annotations

import collections
import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckpt_tool.checkpoint import BN_EVAL_FIELD
from ckpt_tool.errors import CkptError, UsageError, WeightsNotFound
from ckpt_tool.reports import CountModule, CountTotals, FreezeRow, MatchCount

from .prefixes import wrapper_chain

BN_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
MODES = ("freeze", "unfreeze", "only")

Matcher = Callable[[str], bool]


class PatternError(CkptError):
    """A freeze pattern selects no parameter (an empty or invalid one is a UsageError)."""


def can_train(dtype: str) -> bool:
    """Only floating point and complex tensors can require gradients."""
    return dtype.startswith(("float", "bfloat", "complex"))


def bare(key: str) -> str:
    """The key without its wrapper chain: the name patterns are matched against."""
    return key[len(wrapper_chain(key)) :]


def compile_pattern(pattern: str, regex: bool, label: str = "pattern") -> Matcher:
    """A predicate over names for one glob (fnmatchcase) or regex (fullmatch)."""
    if not pattern.strip():
        raise UsageError(
            f"{label} is empty; give a glob such as 'layer1.*' (or a regex with --regex)"
        )
    if not regex:
        return lambda name: fnmatch.fnmatchcase(name, pattern)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError(
            f"{label} {pattern!r} is not a valid regular expression ({exc}); fix it, or drop "
            "--regex to use a glob such as 'layer1.*'"
        ) from None
    return lambda name: compiled.fullmatch(name) is not None


def _module_globs(names: Iterable[str]) -> list[str]:
    """'layer1.*', 'layer1.0.*', ... for every module path, then the names themselves."""
    globs: dict[str, None] = {}
    plain: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts)):
            globs[".".join(parts[:i]) + ".*"] = None
        plain[n] = None
    return [*globs, *plain]


def no_match_hint(pattern: str, names: Sequence[str], regex: bool) -> str:
    """Why a pattern probably matched nothing, and real names close to it."""
    if regex:
        compiled = re.compile(pattern)
        if any(compiled.search(n) for n in names):
            return f"regexes must match the whole name (re.fullmatch); try '.*{pattern}.*'"
    elif any(n.startswith(pattern + ".") for n in names):
        return f"patterns match whole names; did you mean '{pattern}.*'?"
    if not regex and any(fnmatch.fnmatchcase(n, "model." + pattern) for n in names):
        return f"the keys carry a 'model.' prefix; try 'model.{pattern}'"
    candidates = _module_globs(names)
    close = difflib.get_close_matches(pattern, candidates, n=4, cutoff=0.5)
    if not close:
        top = [c for c in candidates if c.count(".") == 1 and c.endswith(".*")]
        close = (top or list(names))[:4]
    return "names look like: " + ", ".join(repr(c) for c in close) if close else "it has no keys"


@dataclass
class FreezePlan:
    """requires_grad of every trainable-dtype parameter before and after, and BatchNorm marks."""

    mode: str
    patterns: list[str]
    regex: bool
    before: dict[str, bool]  # parameter key -> requires_grad
    after: dict[str, bool]
    matched: dict[str, MatchCount]  # pattern -> {"parameters": n, "buffers": n}
    matched_buffers: list[str]
    bn_eval_before: list[str]
    bn_eval_after: list[str]
    bn_unmarked: list[str]  # BatchNorm layers with all parameters frozen, not kept in eval
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        return [k for k, v in self.after.items() if v != self.before[k]]


def plan_freeze(
    params: Mapping[str, bool],
    buffers: Sequence[str],
    patterns: Sequence[str],
    *,
    where: str,
    mode: str = "freeze",
    regex: bool = False,
    bn_layers: Mapping[str, Sequence[str]] | None = None,
    bn_eval: Sequence[str] = (),
    keep_bn_eval: bool = False,
) -> FreezePlan:
    """Decide requires_grad for each parameter from patterns (freeze, unfreeze, or only).

    params: parameter key -> requires_grad now; buffers: every other tensor key; where: the
    file, for messages; bn_layers: BatchNorm module path -> its keys; bn_eval: module paths
    already kept in eval; keep_bn_eval: record the BatchNorm layers this freezes (--bn-eval).
    """
    if mode not in MODES:
        raise UsageError(f"unknown freeze mode {mode!r}")
    if not patterns:
        raise UsageError("give at least one PATTERN before the checkpoint, e.g. 'layer1.*'")
    if keep_bn_eval and mode == "unfreeze":
        raise UsageError("--bn-eval marks frozen BatchNorm layers; it does not go with --unfreeze")
    if not params:
        shown = ", ".join(repr(b) for b in buffers[:3]) or "no tensors"
        raise WeightsNotFound(
            f"{where}: holds no parameters to {'unfreeze' if mode == 'unfreeze' else 'freeze'} "
            f"(only buffers or integer tensors: {shown}); check the file, or choose another "
            "weight set with --weights"
        )
    label = "--only pattern" if mode == "only" else "pattern"
    keys = [*params, *buffers]
    names = {k: bare(k) for k in keys}
    selected: set[str] = set()
    matched: dict[str, MatchCount] = {}
    for pattern in patterns:
        match = compile_pattern(pattern, regex, label)
        hits = [k for k in keys if match(names[k])]
        if not hits:
            hint = no_match_hint(pattern, list(dict.fromkeys(names.values())), regex)
            raise PatternError(f"{where}: {label} {pattern!r} matches no key; {hint}")
        n_params = sum(1 for k in hits if k in params)
        matched[pattern] = {"parameters": n_params, "buffers": len(hits) - n_params}
        selected.update(hits)
    selected_params = [k for k in params if k in selected]
    matched_buffers = [k for k in keys if k in selected and k not in params]
    if not selected_params:
        shown = ", ".join(repr(k) for k in matched_buffers[:4])
        more = f" +{len(matched_buffers) - 4} more" if len(matched_buffers) > 4 else ""
        raise PatternError(
            f"{where}: {', '.join(repr(p) for p in patterns)} matched only buffers ({shown}{more}),"
            " which have no requires_grad: nothing to freeze. To keep BatchNorm statistics "
            "fixed, freeze the layer's parameters with --bn-eval"
        )
    after = dict(params)
    if mode == "only":
        targets = {k for k in keys if k not in selected}
        for k in params:
            after[k] = k in selected
    else:
        targets = selected
        for k in selected_params:
            after[k] = mode == "unfreeze"
    plan = FreezePlan(
        mode=mode,
        patterns=list(patterns),
        regex=regex,
        before=dict(params),
        after=after,
        matched=matched,
        matched_buffers=matched_buffers,
        bn_eval_before=list(bn_eval),
        bn_eval_after=[],
        bn_unmarked=[],
    )
    _plan_bn(plan, bn_layers or {}, targets, keep_bn_eval)
    if mode == "only" and not any(not v for v in after.values()):
        plan.notes.append("--only matched every parameter: nothing is frozen")
    return plan


def _plan_bn(
    plan: FreezePlan, bn_layers: Mapping[str, Sequence[str]], targets: set[str], keep: bool
) -> None:
    def frozen(path: str) -> bool:
        return all(not plan.after[k] for k in bn_layers.get(path, ()) if k in plan.after)

    kept = [p for p in plan.bn_eval_before if frozen(p)]
    dropped = [p for p in plan.bn_eval_before if p not in kept]
    if dropped:
        plan.notes.append(
            f"{len(dropped)} BatchNorm layer(s) train again, so they are no longer kept in eval "
            f"mode: {_few(dropped)}"
        )
    if keep:
        new = [
            p
            for p, ks in bn_layers.items()
            if p not in kept and frozen(p) and any(k in targets for k in ks)
        ]
        kept += new
        if not new:
            plan.notes.append("--bn-eval: no BatchNorm layer among the frozen parameters")
    plan.bn_eval_after = kept
    plan.bn_unmarked = [
        p
        for p, ks in bn_layers.items()
        if p not in kept and any(k in plan.after for k in ks) and frozen(p)
    ]
    if plan.bn_unmarked:
        plan.notes.append(
            f"{len(plan.bn_unmarked)} BatchNorm layer(s) have all parameters frozen but their "
            f"running statistics still update in train mode ({_few(plan.bn_unmarked)}); add "
            "--bn-eval to record that they stay in eval mode"
        )


def _few(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" +{len(items) - n} more" if len(items) > n else "")


def with_bn_eval(metadata: Any, paths: Sequence[str]) -> collections.OrderedDict[Any, Any]:
    """A copy of a state_dict's `_metadata` whose BatchNorm eval marks are exactly `paths`."""
    meta: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    if isinstance(metadata, dict):
        for path, info in metadata.items():
            if isinstance(info, dict):
                info = {k: v for k, v in info.items() if k != BN_EVAL_FIELD}
            meta[path] = info
    for path in paths:
        info = meta.get(path)
        if not isinstance(info, dict):
            info = meta[path] = {}
        info[BN_EVAL_FIELD] = True
    return meta


def batchnorm_layers(
    keys: Iterable[str], classes: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """Module path -> keys of each BatchNorm layer, by class name or by its key names.

    By keys: running_mean and running_var under one module path with nothing but weight,
    bias and num_batches_tracked beside them.
    """
    by_module: dict[str, list[str]] = {}
    for k in keys:
        by_module.setdefault(k.rpartition(".")[0], []).append(k)
    out: dict[str, list[str]] = {}
    for path, ks in by_module.items():
        leaves = {k.rpartition(".")[2] for k in ks}
        cls = (classes or {}).get(path, "")
        by_class = "BatchNorm" in cls.rsplit(".", 1)[-1]
        by_keys = {"running_mean", "running_var"} <= leaves <= BN_LEAVES
        if by_class or by_keys:
            out[path] = ks
    return out


# --- counting -----------------------------------------------------------------------------------


@dataclass
class CountRow:
    """One tensor for counting: kind, size, and whether it trains."""

    key: str
    parameter: bool
    numel: int
    dtype: str
    nbytes: int
    trainable: bool
    duplicate: bool = False  # shares its storage view with an earlier key (tied weights)


def group_of(key: str, depth: int = 1, strip: str = "") -> str:
    """The module a key belongs to, `depth` levels deep, below a stripped prefix."""
    name = key[len(strip) :] if strip and key.startswith(strip) else key
    parts = name.split(".")[:-1]
    return ".".join(parts[:depth]) if parts else "(root)"


def count_report(rows: Sequence[CountRow], depth: int = 1, strip: str = "") -> CountTotals:
    """Parameters (trainable, frozen), buffers, bytes by dtype and per module; ties once."""
    unique = [r for r in rows if not r.duplicate]
    params = [r for r in unique if r.parameter]
    buffers = [r for r in unique if not r.parameter]
    by_dtype: dict[str, int] = {}
    for r in unique:
        by_dtype[r.dtype] = by_dtype.get(r.dtype, 0) + r.nbytes
    total = sum(r.numel for r in params)
    trainable = sum(r.numel for r in params if r.trainable)
    modules: dict[str, CountModule] = {}
    for r in unique:
        g = group_of(r.key, depth, strip)
        m = modules.setdefault(
            g, {"module": g, "params": 0, "trainable": 0, "frozen": 0, "buffer_elements": 0}
        )
        if r.parameter:
            m["params"] += r.numel
            m["trainable" if r.trainable else "frozen"] += r.numel
        else:
            m["buffer_elements"] += r.numel
    for m in modules.values():
        m["share"] = m["params"] / total if total else 0.0
    return {
        "params": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "trainable_share": trainable / total if total else 0.0,
        "param_tensors": len(params),
        "buffers": {
            "tensors": len(buffers),
            "elements": sum(r.numel for r in buffers),
            "bytes": sum(r.nbytes for r in buffers),
        },
        "bytes_by_dtype": dict(sorted(by_dtype.items())),
        "tensor_bytes": sum(by_dtype.values()),
        "shared_keys": [r.key for r in rows if r.duplicate],
        "depth": depth,
        "modules": list(modules.values()),
    }


def freeze_summary(
    numel: Mapping[str, int], plan: FreezePlan, strip: str = ""
) -> tuple[list[FreezeRow], FreezeRow]:
    """Per top-level module and in total: parameters trainable and frozen, before and after."""

    def empty(name: str) -> FreezeRow:
        return {
            "module": name,
            "params": 0,
            "before": {"trainable": 0, "frozen": 0},
            "after": {"trainable": 0, "frozen": 0},
        }

    modules: dict[str, FreezeRow] = {}
    total = empty("total")
    for key, n in numel.items():
        row = modules.setdefault(group_of(key, 1, strip), empty(group_of(key, 1, strip)))
        for r in (row, total):
            r["params"] += n
            r["before"]["trainable" if plan.before[key] else "frozen"] += n
            r["after"]["trainable" if plan.after[key] else "frozen"] += n
    return list(modules.values()), total
