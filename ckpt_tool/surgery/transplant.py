"""Transplant: pretrained weights onto another architecture's keys, with an honest report.

`plan` is pure: source and target `{key: Meta}` in, a `TransplantPlan` out that says for every
target key where its value comes from (copied, renamed, adapted) or why it is initialised
(re-initialised classifier, shape mismatch, missing), and which source keys go unused.
`execute` then builds the target's state_dict: copied tensors keep their exact bytes (the
source's records reused, or read through TensorReader), everything else comes from the model.
"""

from __future__ import annotations

import collections
import copy
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import SurgeryError, UsageError
from ckpt_tool.formats.safe_pickle import StorageRef, TensorRecord, contiguous_stride

from .prefixes import LIGHTNING, detect_prefix
from .rename import regex_plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ckpt_tool.archs import Built
    from ckpt_tool.checkpoint import Checkpoint
    from ckpt_tool.edit import Output

STATUSES = ("copied", "renamed", "adapted", "reinitialised", "shape_mismatch", "missing", "unused")
TRANSFERRED = ("copied", "renamed", "adapted")
MATCH_MODES = ("exact", "suffix")
INIT_METHODS = ("default", "kaiming", "xavier", "normal", "zeros")
# What --init does to a newly initialised weight with two or more dimensions.
METHOD_LABELS = {
    "kaiming": "kaiming_normal_",
    "xavier": "xavier_normal_",
    "normal": "normal_(0, 0.01)",
    "zeros": "zeros",
}
ZEROS = "zeros"
ONES = "ones"


@dataclass(frozen=True)
class Meta:
    """What planning needs of a tensor: shape, dtype, and parameter or buffer."""

    shape: tuple[int, ...]
    dtype: str
    kind: str = "parameter"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class KeyPlan:
    """One key's fate: a target key (where its value comes from) or an unused source key."""

    key: str
    status: str
    shape: tuple[int, ...]
    dtype: str  # dtype written (target keys) or in the source (unused keys)
    kind: str
    source_key: str | None = None  # the key as it is in the source file
    source_shape: tuple[int, ...] | None = None
    source_dtype: str | None = None
    rule: str | None = None  # what renamed it: a --map, or "suffix match"
    detail: str | None = None  # adaptation, classifier change, cast
    init: str | None = None  # how a key that was not transferred is initialised
    resample: Resample | None = None  # how an adapted position embedding or patch kernel is made

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "source_key": self.source_key,
            "shape": list(self.shape),
            "source_shape": None if self.source_shape is None else list(self.source_shape),
            "dtype": self.dtype,
            "source_dtype": self.source_dtype,
            "kind": self.kind,
            "numel": self.numel,
            "rule": self.rule,
            "detail": self.detail,
            "init": self.init,
            "resampled": None if self.resample is None else self.resample.as_json(),
        }


@dataclass(frozen=True)
class Grid:
    """A target position embedding's token layout: prefix tokens, then a rows x cols grid."""

    size: tuple[int, int]
    prefix_tokens: int


@dataclass(frozen=True)
class Resample:
    """A position embedding (grid to grid) or patch kernel (size to size), bicubic, as timm."""

    what: str  # "position_embedding" or "patch_kernel"
    old: tuple[int, int]
    new: tuple[int, int]
    prefix_tokens: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "from": list(self.old),
            "to": list(self.new),
            "prefix_tokens": self.prefix_tokens,
        }

    def describe(self) -> str:
        old, new = "×".join(map(str, self.old)), "×".join(map(str, self.new))
        if self.what == "patch_kernel":
            return f"patch kernel {old} → {new}, pseudo-inverse of the bicubic resize"
        kept = f"{self.prefix_tokens} prefix token{'s' if self.prefix_tokens != 1 else ''} kept"
        return f"position grid {old} → {new}, bicubic, {kept}"


@dataclass
class TransplantPlan:
    """Every target key in target order, the unused source keys, and what to tell the user."""

    keys: list[KeyPlan]
    unused: list[KeyPlan]
    prefix: str = ""  # wrapper prefix removed from every source key
    in_chans: int | None = None
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        """Counts per status; coverage is transferred parameters / the target's parameters."""
        params = [k for k in self.keys if k.kind == "parameter"]
        target_params = sum(k.numel for k in params)
        copied_params = sum(k.numel for k in params if k.status in TRANSFERRED)
        by_status: dict[str, dict[str, int]] = {}
        for k in [*self.keys, *self.unused]:
            s = by_status.setdefault(k.status, {"keys": 0, "params": 0})
            s["keys"] += 1
            s["params"] += k.numel if k.kind == "parameter" else 0
        return {
            "target_keys": len(self.keys),
            "target_params": target_params,
            "copied_keys": sum(1 for k in self.keys if k.status in TRANSFERRED),
            "copied_params": copied_params,
            "coverage_pct": coverage(copied_params, target_params),
            "source_keys": sum(1 for k in self.keys if k.source_key) + len(self.unused),
            "unused_keys": len(self.unused),
            "by_status": {s: by_status[s] for s in STATUSES if s in by_status},
        }


def coverage(copied: int, total: int) -> float:
    return round(100.0 * copied / total, 2) if total else 100.0


# --- matching -----------------------------------------------------------------------------------


def _wrapper_prefix(source: Sequence[str], target: Sequence[str]) -> tuple[str, list[str]]:
    """The wrapper prefix every source key carries (and the target's do not), plus notes."""
    report = detect_prefix(source)
    prefix = report.prefix or (LIGHTNING if report.lightning else "")
    wanted = set(target)
    if prefix and sum(k in wanted for k in source) > sum(
        k[len(prefix) :] in wanted for k in source
    ):
        return "", []  # the target's own keys carry it: nothing to remove
    if prefix:
        return prefix, [f"removed the wrapper prefix {prefix!r} from every source key"]
    if report.partial:
        counts = ", ".join(f"{c!r} on {n}" for c, n in report.counts.items())
        return "", [
            f"only some source keys carry a wrapper prefix ({counts} of {report.total}); "
            "they were not stripped: add --map '^module\\.=' to strip them"
        ]
    return "", []


def _suffix_pairs(targets: Sequence[str], candidates: Collection[str]) -> dict[str, str]:
    """Target key -> source name sharing the longest dotted suffix, one ending with the other.

    The detectron2 rule: `backbone.layer1.conv.weight` pairs with `layer1.conv.weight`. Where a
    target has several equally good candidates, the one whose leftover prefix (`backbone.`) is
    the one the unambiguous pairs share wins; still two, or a source key claimed by two
    targets, is an error.
    """
    by_leaf: dict[str, list[list[str]]] = collections.defaultdict(list)
    for c in candidates:
        parts = c.split(".")
        by_leaf[parts[-1]].append(parts)
    options: dict[str, tuple[list[str], int]] = {}
    for t in targets:
        tp = t.split(".")
        best: list[str] = []
        score = 0
        for cp in by_leaf.get(tp[-1], []):
            n = min(len(tp), len(cp))
            if tp[-n:] != cp[-n:]:
                continue
            if n > score:
                best, score = [".".join(cp)], n
            elif n == score:
                best.append(".".join(cp))
        if best:
            options[t] = (best, score)

    def leftover(name: str, score: int) -> str:
        return ".".join(name.split(".")[:-score])

    shared = collections.Counter(
        leftover(b[0], n) for b, n in options.values() if len(b) == 1
    ).most_common(1)
    chosen: dict[str, str] = {}
    for t, (best, score) in options.items():
        if len(best) > 1 and shared:
            narrowed = [b for b in best if leftover(b, score) == shared[0][0]]
            best = narrowed or best
        if len(best) > 1:
            shown = ", ".join(repr(b) for b in sorted(best)[:4])
            raise SurgeryError(
                f"--match suffix is ambiguous: target key {t!r} matches {len(best)} source keys "
                f"equally well ({shown}); rename them apart with --map 'REGEX=REPLACEMENT'"
            )
        chosen[t] = best[0]
    owners: dict[str, str] = {}
    for t, c in chosen.items():
        if c in owners:
            raise SurgeryError(
                f"--match suffix is ambiguous: source key {c!r} matches both target keys "
                f"{owners[c]!r} and {t!r}; rename with --map 'REGEX=REPLACEMENT' to choose"
            )
        owners[c] = t
    return chosen


# Prefixes one side's keys often carry and the other's do not (a backbone inside a detector,
# an encoder inside an autoencoder, a framework's wrapper module).
ONE_SIDED = ("backbone.", "encoder.", "model.", "net.", "module.", "body.", "features.", "base.")


def _one_sided_prefix(
    names: Mapping[str, str], target: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """Source names (matched name -> key) with a prefix removed from, or added to, every name
    when that matches strictly more target keys than leaving them be and no other prefix does
    as well; notes say what was done, or which --map would do it."""
    wanted = set(target)
    base = sum(n in wanted for n in names)
    tried: list[tuple[int, str, dict[str, str]]] = []
    firsts = collections.Counter(n.split(".", 1)[0] + "." for n in names if "." in n)
    prefixes = [p for p in ONE_SIDED if firsts.get(p)] + [
        p for p, c in firsts.most_common(1) if c >= 0.9 * len(names) and p not in ONE_SIDED
    ]
    for p in prefixes:
        removed = {n[len(p) :]: k for n, k in names.items() if n.startswith(p)}
        tried.append((sum(n in wanted for n in removed), f"removed {p!r} from", removed))
    tfirsts = collections.Counter(t.split(".", 1)[0] + "." for t in target if "." in t)
    for p, c in tfirsts.most_common(2):
        if c >= 0.5 * len(target):
            added = {p + n: k for n, k in names.items()}
            tried.append((sum(n in wanted for n in added), f"added {p!r} to", added))
    tried.sort(key=lambda x: -x[0])
    if tried and tried[0][0] > base and (len(tried) == 1 or tried[1][0] < tried[0][0]):
        hits, how, mapped = tried[0]
        return mapped, [f"{how} the source keys: {hits} target keys match that way, {base} without"]
    if tried and tried[0][0] > base:
        options = " or ".join(
            sorted({how.split("'")[1] for n, how, _ in tried if n == tried[0][0]})
        )
        return dict(names), [
            f"several prefixes ({options}) would match as many target keys; choose with "
            "--map (e.g. --map '^backbone\\.=')"
        ]
    return dict(names), []


def _only_dim_differs(a: tuple[int, ...], b: tuple[int, ...], dim: int) -> bool:
    return (
        len(a) == len(b)
        and len(a) > dim
        and a[dim] != b[dim]
        and all(x == y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i != dim)
    )


def _kernel_only_differs(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) == 4 and a[:2] == b[:2] and a[2:] != b[2:]


def _grid_resample(source: tuple[int, ...], target: tuple[int, ...], grid: Grid) -> Resample | None:
    """The resampling that turns a (1, prefix + h*w, dim) source embedding into the target's
    grid; the source grid is taken as square (as timm does without size metadata)."""
    if len(source) != 3 or len(target) != 3 or source[0] != 1 or source[2] != target[2]:
        return None
    tokens = source[1] - grid.prefix_tokens
    side = math.isqrt(tokens) if tokens > 0 else 0
    if side * side != tokens or (side, side) == grid.size:
        return None
    return Resample("position_embedding", (side, side), grid.size, grid.prefix_tokens)


def init_label(key: str, meta: Meta, method: str, seed: int, norms: Collection[str]) -> str:
    """How a key that is not transferred gets its value, under --init METHOD."""
    default = f"architecture default (seed {seed})"
    if method == "default" or meta.kind != "parameter":
        return default
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        return ZEROS
    if leaf == "weight" and key in norms:
        return ONES
    if leaf == "weight" and len(meta.shape) >= 2:
        return METHOD_LABELS[method]
    return default


def plan(
    source: Mapping[str, Meta],
    target: Mapping[str, Meta],
    *,
    maps: Sequence[str] = (),
    match: str = "exact",
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_conv: str | None = None,
    init: str = "default",
    seed: int = 0,
    keep_dtype: bool = False,
    norms: Collection[str] = (),
    grids: Mapping[str, Grid] | None = None,
    patch_kernel: str | None = None,
    resize_patch: bool = False,
) -> TransplantPlan:
    """Decide, for every target key, which source key fills it and how (no tensor is read).

    `input_conv` is the target key of the first convolution's weight (adapted when in_chans is
    given); `norms` are the target's normalisation-layer weights (set to 1 under --init);
    `grids` are the target's absolute position embeddings (resampled when only the grid
    differs) and `patch_kernel` its patch-embedding weight (resampled with resize_patch).
    """
    if match not in MATCH_MODES:
        raise UsageError(f"--match {match!r}: choose one of {', '.join(MATCH_MODES)}")
    if init not in INIT_METHODS:
        raise UsageError(f"--init {init!r}: choose one of {', '.join(INIT_METHODS)}")
    if not source:
        raise SurgeryError("the source holds no tensors; nothing to transplant")
    prefix, notes = _wrapper_prefix(list(source), list(target))
    names = {k[len(prefix) :]: k for k in source}  # name to match -> key in the file
    rules: dict[str, str] = {}
    if maps:
        renames = regex_plan(list(names), maps)
        renamed: dict[str, str] = {}
        for old, new in renames.pairs:
            renamed[new] = names[old]
            if old != new:
                rules[new] = "--map " + renames.rules.get(old, "")
        names = renamed
        notes += renames.notes
    if not maps:
        names, found = _one_sided_prefix(names, list(target))
        notes += found
    pairs: dict[str, str] = {t: names[t] for t in target if t in names}
    if match == "suffix":
        used = {names[t] for t in pairs}
        rest = [t for t in target if t not in pairs]
        candidates = [n for n, k in names.items() if k not in used]
        for t, n in _suffix_pairs(rest, candidates).items():
            pairs[t] = names[n]
            rules[t] = f"{rules[n]}, suffix match" if n in rules else "suffix match"
    rows: list[KeyPlan] = []
    for t, tm in target.items():
        init_how = init_label(t, tm, init, seed, norms)
        src = pairs.get(t)
        if src is None:
            rows.append(KeyPlan(t, "missing", tm.shape, tm.dtype, tm.kind, init=init_how))
            continue
        sm = source[src]
        row = KeyPlan(
            t, "copied", tm.shape, tm.dtype, tm.kind, src, sm.shape, sm.dtype, rules.get(t)
        )
        if sm.shape == tm.shape:
            row.status = "renamed" if row.rule else "copied"
        elif (
            in_chans is not None
            and t == input_conv
            and _only_dim_differs(sm.shape, tm.shape, 1)
            and tm.shape[1] == in_chans
        ):
            row.status = "adapted"
            chans = sm.shape[1]
            row.detail = (
                f"summed over {chans} input channels"
                if in_chans == 1
                else f"{chans} input channels repeated to {in_chans}, scaled by {chans}/{in_chans}"
            )
        elif grids and t in grids and (how := _grid_resample(sm.shape, tm.shape, grids[t])):
            row.status, row.resample = "adapted", how
            row.detail = how.describe()
        elif t == patch_kernel and _kernel_only_differs(sm.shape, tm.shape):
            how = Resample("patch_kernel", (sm.shape[2], sm.shape[3]), (tm.shape[2], tm.shape[3]))
            if resize_patch:
                row.status, row.resample = "adapted", how
                row.detail = how.describe()
            else:
                row.status, row.init = "shape_mismatch", init_how
                row.detail = (
                    f"patch kernel {'×'.join(map(str, how.old))} vs "
                    f"{'×'.join(map(str, how.new))}: --resize-patch resamples it"
                )
        elif (
            num_classes is not None
            and _only_dim_differs(sm.shape, tm.shape, 0)
            and tm.shape[0] == num_classes
        ):
            row.status = "reinitialised"
            row.detail = f"classifier: {sm.shape[0]} → {num_classes} classes"
            row.init = init_how
        else:
            row.status = "shape_mismatch"
            row.init = init_how
        if row.status in TRANSFERRED:
            row.dtype = sm.dtype if keep_dtype else tm.dtype
            if row.dtype != sm.dtype:
                cast = f"cast {sm.dtype} → {row.dtype}"
                row.detail = f"{row.detail}; {cast}" if row.detail else cast
        rows.append(row)
    taken = set(pairs.values())
    unused = [
        KeyPlan(k, "unused", m.shape, m.dtype, m.kind) for k, m in source.items() if k not in taken
    ]
    return TransplantPlan(rows, unused, prefix, in_chans, notes)


# --- grouping for the report --------------------------------------------------------------------

_INDEX = re.compile(r"^(.*)\.(\d+)$")


def _unit(key: str) -> tuple[str, str]:
    """(block, rest): the key cut after its first numeric part: ('layer1.0', 'conv1.weight')."""
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return ".".join(parts[: i + 1]), ".".join(parts[i + 1 :])
    if len(parts) == 1:
        return "", key
    return ".".join(parts[:-1]), parts[-1]


def _row_signature(rel: str, k: KeyPlan) -> tuple[Any, ...]:
    return (rel, k.status, k.shape, k.source_shape, k.dtype, k.detail, k.init, k.rule)


def group_rows(rows: Sequence[KeyPlan]) -> list[dict[str, Any]]:
    """Rows grouped by block (layer1.0), identical consecutive blocks collapsed (layer1.0–2)."""
    units: list[tuple[str, list[tuple[str, KeyPlan]]]] = []
    for k in rows:
        unit, rel = _unit(k.key)
        if units and units[-1][0] == unit:
            units[-1][1].append((rel, k))
        else:
            units.append((unit, [(rel, k)]))
    groups: list[dict[str, Any]] = []
    last_sig: tuple[Any, ...] | None = None
    for unit, members in units:
        sig = tuple(_row_signature(rel, k) for rel, k in members)
        m = _INDEX.match(unit)
        g = groups[-1] if groups else None
        if (
            g is not None
            and m is not None
            and sig == last_sig
            and g["_parent"] == m.group(1)
            and g["_last"] + 1 == int(m.group(2))
        ):
            g["blocks"].append(unit)
            g["_last"] += 1
            g["params"] += sum(k.numel for _, k in members if k.kind == "parameter")
            first = g["blocks"][0].rsplit(".", 1)[-1]
            g["module"] = f"{m.group(1)}.{first}–{g['_last']}"
            continue
        statuses = {k.status for _, k in members}
        rows_json = []
        for rel, k in members:
            r = k.as_json()
            r["key"] = rel
            r["full_key"] = k.key
            rows_json.append(r)
        groups.append(
            {
                "module": unit or "(root)",
                "blocks": [unit],
                "status": statuses.pop() if len(statuses) == 1 else "mixed",
                "keys": len(members),
                "params": sum(k.numel for _, k in members if k.kind == "parameter"),
                "rows": rows_json,
                "_parent": m.group(1) if m else None,
                "_last": int(m.group(2)) if m else -1,
            }
        )
        last_sig = sig
    for g in groups:
        del g["_parent"], g["_last"]
    return groups


def report(plan_: TransplantPlan) -> dict[str, Any]:
    """The JSON-ready report: every key, the grouped table, totals."""
    return {
        "prefix_removed": plan_.prefix or None,
        "keys": [k.as_json() for k in plan_.keys],
        "unused": [k.as_json() for k in plan_.unused],
        "modules": group_rows(plan_.keys),
        "unused_modules": group_rows(plan_.unused),
        "totals": plan_.totals(),
    }


# --- executing a plan ---------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def source_metas(ckpt: Checkpoint) -> dict[str, Meta]:
    return {k: Meta(e.shape, e.dtype, e.kind) for k, e in ckpt.tensors.items()}


def target_metas(model: nn.Module) -> dict[str, Meta]:
    """The target's state_dict as metadata: shapes, dtypes, parameter or buffer."""
    import torch

    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out: dict[str, Meta] = {}
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise SurgeryError(
                f"the target's state_dict holds a non-tensor entry {k!r} (extra state); "
                "transplant supports tensor state only"
            )
        out[k] = Meta(tuple(v.shape), dtype_name(v.dtype), "parameter" if k in params else "buffer")
    return out


def norm_weights(model: nn.Module) -> set[str]:
    """Keys of normalisation layers' weights (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)."""
    from torch import nn

    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {
        f"{name}.weight" if name else "weight"
        for name, m in model.named_modules()
        if isinstance(m, kinds) and getattr(m, "weight", None) is not None
    }


def input_conv_key(model: nn.Module) -> str | None:
    from ckpt_tool.archs import first_conv

    found = first_conv(model)
    return None if found is None else (f"{found[0]}.weight" if found[0] else "weight")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-conv weight for in_chans inputs, as timm's adapt_input_conv does.

    One channel: the sum over the source's input channels. More: the source channels repeated
    ceil(in_chans / n) times, cut to in_chans, and scaled by n / in_chans (n = 3 for RGB).
    """
    import torch

    work = weight if weight.dtype == torch.float64 else weight.float()
    n = work.shape[1]
    if in_chans == 1:
        work = work.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / n)
        work = work.repeat(1, reps, *([1] * (work.dim() - 2)))[:, :in_chans] * (n / in_chans)
    return work.to(weight.dtype).contiguous()


def resample_position_embedding(
    embed: torch.Tensor, old: tuple[int, int], new: tuple[int, int], prefix_tokens: int
) -> torch.Tensor:
    """(1, prefix + old grid, dim) -> (1, prefix + new grid, dim): the grid part resized
    bicubic with antialiasing in float32, prefix tokens (class, distillation) kept as they are;
    the arithmetic of timm's resample_abs_pos_embed."""
    import torch
    from torch.nn import functional as F

    prefix, grid = embed[:, :prefix_tokens], embed[:, prefix_tokens:]
    dim = grid.shape[-1]
    work = grid.float().reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    work = F.interpolate(work, size=new, mode="bicubic", antialias=True, align_corners=False)
    out = work.permute(0, 2, 3, 1).reshape(1, -1, dim).to(embed.dtype)
    return torch.cat([prefix, out], dim=1) if prefix_tokens else out


def resample_patch_kernel(kernel: torch.Tensor, new: tuple[int, int]) -> torch.Tensor:
    """A patch-embedding kernel for another patch size: the pseudo-inverse of the bicubic
    resize of its inputs (FlexiViT), so the new kernel on resized patches gives the old
    kernel's outputs; the arithmetic of timm's resample_patch_embed."""
    import torch
    from torch.nn import functional as F

    out_ch, in_ch, h, w = kernel.shape
    basis = torch.eye(h * w, dtype=torch.float32).reshape(h * w, 1, h, w)
    resized = F.interpolate(basis, size=new, mode="bicubic", antialias=True, align_corners=False)
    matrix = resized.squeeze(1).permute(1, 2, 0).reshape(new[0] * new[1], h * w)
    pinv = torch.linalg.pinv(matrix)
    work = kernel.reshape(out_ch, in_ch, -1).float() @ pinv
    result: torch.Tensor = work.reshape(out_ch, in_ch, *new).to(kernel.dtype)
    return result


def apply_resample(value: torch.Tensor, how: Resample) -> torch.Tensor:
    if how.what == "patch_kernel":
        return resample_patch_kernel(value, how.new).contiguous()
    return resample_position_embedding(value, how.old, how.new, how.prefix_tokens).contiguous()


POSITION_NAMES = ("pos_embed", "pos_embedding", "position_embeddings", "absolute_pos_embed")


def position_grids(model: nn.Module) -> tuple[dict[str, Grid], str | None]:
    """The target's absolute position embeddings (by name, 3-D, one row) with their token
    grid, and its patch-embedding weight: the first convolution whose stride is its kernel.

    The grid is what the model says (timm's patch_embed.grid_size and num_prefix_tokens),
    else the input size it declares over the patch stride, the rest of the tokens prefix.
    """
    from ckpt_tool.archs import declared_image_size, first_conv

    found = first_conv(model)
    patch_key: str | None = None
    stride: tuple[int, int] | None = None
    if found is not None:
        conv = found[1]
        kernel = tuple(getattr(conv, "kernel_size", ()))
        if len(kernel) == 2 and tuple(getattr(conv, "stride", ())) == kernel and kernel[0] > 1:
            patch_key = f"{found[0]}.weight" if found[0] else "weight"
            stride = (int(kernel[0]), int(kernel[1]))
    image = declared_image_size(model)
    grids: dict[str, Grid] = {}
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf not in POSITION_NAMES or param.dim() != 3 or param.shape[0] != 1:
            continue
        module = model.get_submodule(owner) if owner else model
        tokens = int(param.shape[1])
        grid = _declared_grid(module, tokens)
        if grid is None and image is not None and stride is not None:
            rows, cols = image[0] // stride[0], image[1] // stride[1]
            if 0 <= tokens - rows * cols <= 8:
                grid = Grid((rows, cols), tokens - rows * cols)
        if grid is None:  # a square grid after the fewest prefix tokens
            for prefix in range(0, 9):
                side = math.isqrt(max(tokens - prefix, 0))
                if side > 1 and side * side == tokens - prefix:
                    grid = Grid((side, side), prefix)
                    break
        if grid is not None:
            grids[name] = grid
    return grids, patch_key


def _declared_grid(module: nn.Module, tokens: int) -> Grid | None:
    """timm's VisionTransformer family: patch_embed.grid_size, num_prefix_tokens, no_embed_class."""
    size = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        return None
    rows, cols = int(size[0]), int(size[1])
    prefix = 0 if getattr(module, "no_embed_class", False) else tokens - rows * cols
    return Grid((rows, cols), prefix) if prefix >= 0 and tokens == prefix + rows * cols else None


def _initialise(t: torch.Tensor, how: str) -> None:
    from torch import nn

    if how == ZEROS:
        nn.init.zeros_(t)
    elif how == ONES:
        nn.init.ones_(t)
    elif how == METHOD_LABELS["kaiming"]:
        nn.init.kaiming_normal_(t)
    elif how == METHOD_LABELS["xavier"]:
        nn.init.xavier_normal_(t)
    elif how == METHOD_LABELS["normal"]:
        nn.init.normal_(t, 0.0, 0.01)


def tensor_record(t: torch.Tensor) -> TensorRecord:
    """A record for a live tensor, its bytes held inline until the writer streams them."""
    import torch

    c = t.detach().to("cpu").contiguous()
    data = c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b""
    stride = tuple(c.stride())
    return TensorRecord(None, 0, tuple(c.shape), stride, dtype_name(c.dtype), inline=data)


def _whole_storage(rec: TensorRecord) -> bool:
    """The record is exactly its storage (offset 0, contiguous, every element): reuse its bytes."""
    s = rec.storage
    if s is None or rec.inline is not None or rec.offset != 0 or s.dtype != rec.dtype:
        return False
    if rec.numel != s.numel:
        return False
    return rec.numel <= 1 or contiguous_stride(rec.shape) == rec.stride


def _cpu(storage: StorageRef) -> StorageRef:
    """The same bytes (located by key), to be loaded on CPU whatever device saved them."""
    if storage.location == "cpu":
        return storage
    return StorageRef(storage.key, storage.dtype, "cpu", storage.numel)


def execute(ckpt: Checkpoint, model: nn.Module, plan_: TransplantPlan) -> Output:
    """The target state_dict the plan describes, ready for the writer (model init is modified)."""
    import torch

    from ckpt_tool.edit import Output
    from ckpt_tool.tensors import TensorReader, torch_dtype

    state = model.state_dict()
    with torch.no_grad():
        for k in plan_.keys:
            if k.status not in TRANSFERRED and k.init is not None:
                _initialise(state[k.key], k.init)
    records: dict[str, TensorRecord] = {}
    on_cpu: dict[int, StorageRef] = {}  # the output is for a new model: its tensors load on CPU
    with TensorReader(ckpt) as reader:
        for k in plan_.keys:
            if k.status not in TRANSFERRED:
                records[k.key] = tensor_record(state[k.key])
                continue
            assert k.source_key is not None
            entry = ckpt.tensors[k.source_key]
            rec = entry.record
            if k.status != "adapted" and k.dtype == rec.dtype and _whole_storage(rec):
                assert rec.storage is not None
                storage = on_cpu.setdefault(id(rec.storage), _cpu(rec.storage))
                records[k.key] = TensorRecord(storage, 0, rec.shape, rec.stride, rec.dtype)
                continue
            value = reader.read(entry)
            if k.resample is not None:
                value = apply_resample(value, k.resample)
            elif k.status == "adapted":
                assert plan_.in_chans is not None
                value = adapt_input_conv(value, plan_.in_chans)
            records[k.key] = tensor_record(value.to(torch_dtype(k.dtype)))
    root: collections.OrderedDict[str, Any] = collections.OrderedDict(records)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        root._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return Output(root=root, weights=dict(records), weights_key=None, whole_container=False)


def transplant(
    ckpt: Checkpoint,
    built: Built,
    *,
    maps: Sequence[str] = (),
    match: str = "exact",
    init: str = "default",
    seed: int = 0,
    keep_dtype: bool = False,
    resize_patch: bool = False,
) -> tuple[TransplantPlan, Output]:
    """Plan and execute a transplant of ckpt's weights into a built architecture."""
    model = built.model
    try:
        p = _plan_for(ckpt, built, maps, match, init, seed, keep_dtype, resize_patch)
    except SurgeryError as exc:
        raise SurgeryError(f"{ckpt.path}: {exc.message}") from None
    p.notes = [*built.notes, *p.notes]
    return p, execute(ckpt, model, p)


def _plan_for(
    ckpt: Checkpoint,
    built: Built,
    maps: Sequence[str],
    match: str,
    init: str,
    seed: int,
    keep_dtype: bool,
    resize_patch: bool,
) -> TransplantPlan:
    model = built.model
    grids, patch_kernel = position_grids(model)
    return plan(
        source_metas(ckpt),
        target_metas(model),
        maps=maps,
        match=match,
        num_classes=built.num_classes,
        in_chans=built.in_chans,
        input_conv=input_conv_key(model),
        init=init,
        seed=seed,
        keep_dtype=keep_dtype,
        norms=norm_weights(model),
        grids=grids,
        patch_kernel=patch_kernel,
        resize_patch=resize_patch,
    )
