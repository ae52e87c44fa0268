"""Transplant: pretrained weights onto another architecture's keys, with an honest report.

`plan` is pure: source and target `{key: Meta}` in, a `TransplantPlan` out that says for every
target key where its value comes from (copied, renamed, adapted) or why it is initialised
(re-initialised classifier, shape mismatch, missing), and which source keys go unused.
`ckpt_tool.transplanting` executes it (torch modules live there, not here).
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import SurgeryError, UsageError
from ckpt_tool.reports import (
    BlockRow,
    KeyFate,
    StatusCount,
    TransplantPlanReport,
    TransplantTotals,
)

from .prefixes import LIGHTNING, detect_prefix
from .rename import regex_plan

if TYPE_CHECKING:
    pass

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

    def as_json(self) -> KeyFate:
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

    def totals(self) -> TransplantTotals:
        """Counts per status; coverage is transferred parameters / the target's parameters."""
        params = [k for k in self.keys if k.kind == "parameter"]
        target_params = sum(k.numel for k in params)
        copied_params = sum(k.numel for k in params if k.status in TRANSFERRED)
        by_status: dict[str, StatusCount] = {}
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


def group_rows(rows: Sequence[KeyPlan]) -> list[BlockRow]:
    """Rows grouped by block (layer1.0), identical consecutive blocks collapsed (layer1.0–2)."""
    units: list[tuple[str, list[tuple[str, KeyPlan]]]] = []
    for k in rows:
        unit, rel = _unit(k.key)
        if units and units[-1][0] == unit:
            units[-1][1].append((rel, k))
        else:
            units.append((unit, [(rel, k)]))
    groups: list[BlockRow] = []
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
        rows_json: list[KeyFate] = []
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


def report(plan_: TransplantPlan) -> TransplantPlanReport:
    """The JSON-ready report: every key, the grouped table, totals."""
    return {
        "prefix_removed": plan_.prefix or None,
        "keys": [k.as_json() for k in plan_.keys],
        "unused": [k.as_json() for k in plan_.unused],
        "modules": group_rows(plan_.keys),
        "unused_modules": group_rows(plan_.unused),
        "totals": plan_.totals(),
    }
