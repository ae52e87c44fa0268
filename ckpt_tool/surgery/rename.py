"""Key renaming as data: plans over key lists (strip/add a prefix, regex maps); no tensor bytes."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ckpt_tool.errors import SurgeryError, UsageError
from ckpt_tool.reports import RenameGroup

from .prefixes import WRAPPERS, wrapper_chain


@dataclass
class RenamePlan:
    """Old -> new name for every key, in order, and what the user should know about it."""

    pairs: list[tuple[str, str]]
    rules: dict[str, str] = field(default_factory=dict)  # old key -> rule that renamed it
    notes: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # --map patterns that matched nothing
    meta_fn: Callable[[str], str] | None = None  # renames `_metadata` module paths

    @property
    def changed(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in self.pairs if a != b]

    def groups(self, examples: int = 3) -> list[RenameGroup]:
        """Changed keys grouped by the rule that renamed them, with a few examples each."""
        out: dict[str, RenameGroup] = {}
        for old, new in self.changed:
            rule = self.rules.get(old, "renamed")
            g = out.setdefault(rule, {"rule": rule, "count": 0, "examples": []})
            g["count"] += 1
            if len(g["examples"]) < examples:
                g["examples"].append({"from": old, "to": new})
        return list(out.values())


def _check_conflicts(plan: RenamePlan) -> RenamePlan:
    seen: dict[str, str] = {}
    for old, new in plan.pairs:
        if not new:
            raise SurgeryError(f"renaming {old!r} would leave an empty key")
        if new in seen:
            raise SurgeryError(
                f"keys {seen[new]!r} and {old!r} would both become {new!r}; "
                "adjust the mapping so every key stays unique"
            )
        seen[new] = old
    return plan


def _examples(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (" ..." if len(keys) > n else "")


def strip_plan(
    keys: Sequence[str],
    prefix: str | None = None,
    partial: bool = False,
    framework: str | None = None,
    partial_hint: str = "pass --partial to strip only where present",
) -> RenamePlan:
    """Remove `prefix` from every key, or by default every wrapper chain (module./_orig_mod.).

    A prefix given without its final dot (`backbone`) that every carrying key continues with
    a dot is taken with it: a key starting with '.' loads into no module.
    """
    if prefix == "":
        raise UsageError("--prefix must not be empty")
    dotted_note: list[str] = []
    if prefix is not None and not prefix.endswith("."):
        hits = [k for k in keys if k.startswith(prefix)]
        if hits and all(k[len(prefix) : len(prefix) + 1] == "." for k in hits):
            dotted_note.append(
                f"prefix {prefix!r} taken as {prefix + '.'!r} (each key goes on with a dot)"
            )
            prefix += "."
    if prefix is None:
        chains = {k: wrapper_chain(k) for k in keys}
        rule_of = {k: f"{c}* → *" for k, c in chains.items() if c}
        what = " or ".join(WRAPPERS)
    else:
        chains = {k: prefix if k.startswith(prefix) else "" for k in keys}
        rule_of = {k: f"{prefix}* → *" for k, c in chains.items() if c}
        what = prefix
    carrying = [k for k in keys if chains[k]]
    bare = [k for k in keys if not chains[k]]
    if not carrying:
        hint = ""
        first = {k.split(".", 1)[0] for k in keys if "." in k}
        if prefix is None and keys and len(first) == 1 and all("." in k for k in keys):
            shared = f"{next(iter(first))}."
            who = "Lightning's " if framework == "lightning" and shared == "model." else ""
            hint = f"; every key starts with {who}{shared!r}: use --prefix {shared}"
        raise SurgeryError(f"no key starts with {what}; nothing to strip{hint}")
    if bare and not partial:
        raise SurgeryError(
            f"{len(carrying)} of {len(keys)} keys start with {what} and {len(bare)} do not "
            f"(with: {_examples(carrying)}; without: {_examples(bare)}); {partial_hint}"
        )
    pairs = [(k, k[len(chains[k]) :]) for k in keys]
    plan = RenamePlan(pairs, rules=rule_of)
    plan.notes += dotted_note
    if bare:
        plan.notes.append(f"{len(bare)} keys without the prefix were left as they are")
    if prefix is None:
        plan.meta_fn = lambda m: _strip_meta_chain(m)
    else:
        plan.meta_fn = lambda m: _strip_meta(m, prefix)
    return _check_conflicts(plan)


def _strip_meta_chain(module_path: str) -> str:
    dotted = module_path + "."
    return dotted[len(wrapper_chain(dotted)) :].rstrip(".")


def _strip_meta(module_path: str, prefix: str) -> str:
    dotted = module_path + "."
    return dotted[len(prefix) :].rstrip(".") if dotted.startswith(prefix) else module_path


def add_plan(keys: Sequence[str], prefix: str = "module.") -> RenamePlan:
    """Prefix every key (for loading into a DataParallel/DDP-wrapped model)."""
    if not prefix:
        raise UsageError("--prefix must not be empty")
    already = [k for k in keys if k.startswith(prefix)]
    if already:
        raise SurgeryError(
            f"{len(already)} of {len(keys)} keys already start with {prefix!r} "
            f"({_examples(already)}); nothing added. Use strip-module to remove it"
        )
    plan = RenamePlan([(k, prefix + k) for k in keys], rules=dict.fromkeys(keys, f"* → {prefix}*"))
    plan.meta_fn = lambda m: (prefix + m if m else prefix).rstrip(".")
    return _check_conflicts(plan)


def parse_maps(maps: Sequence[str]) -> list[tuple[re.Pattern[str], str, str]]:
    """'REGEX=REPLACEMENT' options (split at the first '='), compiled."""
    out = []
    for m in maps:
        if "=" not in m:
            raise UsageError(f"--map {m!r}: expected REGEX=REPLACEMENT")
        pattern, repl = m.split("=", 1)
        if not pattern:
            raise UsageError(f"--map {m!r}: the pattern is empty")
        try:
            out.append((re.compile(pattern), repl, m))
        except re.error as exc:
            raise UsageError(f"--map {m!r}: invalid regular expression ({exc})") from None
    return out


def regex_plan(keys: Sequence[str], maps: Sequence[str]) -> RenamePlan:
    """Apply each REGEX=REPLACEMENT in order to every key (re.sub semantics, \\1 groups)."""
    compiled = parse_maps(maps)
    if not compiled:
        raise UsageError("give at least one --map 'REGEX=REPLACEMENT'")
    used = {m: False for _, _, m in compiled}
    pairs: list[tuple[str, str]] = []
    rules: dict[str, str] = {}

    def rename(key: str) -> tuple[str, list[str]]:
        applied = []
        for pattern, repl, text in compiled:
            try:
                new = pattern.sub(repl, key)
            except (re.error, IndexError) as exc:
                raise UsageError(f"--map {text!r}: bad replacement ({exc})") from None
            if new != key or pattern.search(key):
                used[text] = True
                applied.append(text)
            key = new
        return key, applied

    for k in keys:
        new, applied = rename(k)
        pairs.append((k, new))
        if applied:
            rules[k] = " then ".join(applied)
    plan = RenamePlan(pairs, rules=rules, unmatched=[m for m, u in used.items() if not u])
    if all(old == new for old, new in pairs):
        shown = ", ".join(repr(m) for _, _, m in compiled)
        example = f" (keys look like {keys[0]!r})" if keys else ""
        raise SurgeryError(f"--map {shown} renames no key; nothing to rename{example}")
    for m in plan.unmatched:
        plan.notes.append(f"--map {m!r} matched no key")
    plan.meta_fn = lambda m: rename(m + ".")[0].rstrip(".") if m else m
    return _check_conflicts(plan)


def rename_metadata(metadata: Any, fn: Callable[[str], str] | None, add_root: bool = False) -> Any:
    """The state_dict's `_metadata` (module path -> version info) renamed like the keys."""
    if not isinstance(metadata, dict) or fn is None:
        return metadata
    out = type(metadata)()
    if add_root and "" in metadata:
        out[""] = metadata[""]  # the wrapper's own entry comes first, as DataParallel writes it
    for path, info in metadata.items():
        if path == "" and not add_root:
            out.setdefault("", info)  # the wrapper's own entry, unless the inner root replaces it
            continue
        # stripping: 'module' (the inner root) becomes '' and replaces the wrapper's entry,
        # as torch's consume_prefix_in_state_dict_if_present does
        out[fn(str(path))] = info
    return out
