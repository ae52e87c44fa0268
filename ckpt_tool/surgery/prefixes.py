"""Wrapper prefixes: `module.` (DataParallel/DDP), `_orig_mod.` (compile), `model.` (Lightning)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

WRAPPERS = ("module.", "_orig_mod.")
LIGHTNING = "model."


@dataclass
class PrefixReport:
    """Which wrapper prefix the keys carry, and how to remove it."""

    prefix: str  # the wrapper chain every key starts with ('' if none)
    total: int
    counts: dict[str, int]  # leading wrapper chain -> number of keys carrying it
    partial: bool  # some keys carry a wrapper and some do not
    lightning: bool  # every key starts with Lightning's `model.`

    @property
    def suggestion(self) -> str | None:
        if self.prefix:
            return "ckpt strip-module {path}"
        if self.lightning:
            return "ckpt strip-module {path} --prefix model."
        if self.partial:
            return "ckpt strip-module {path} --partial"
        return None


def wrapper_chain(key: str, wrappers: Iterable[str] = WRAPPERS) -> str:
    """The run of wrapper prefixes a key starts with, e.g. 'module._orig_mod.'."""
    wrappers = tuple(wrappers)
    if not key.startswith(wrappers):  # most keys: one C call instead of a loop
        return ""
    chain = ""
    rest = key
    progress = True
    while progress:
        progress = False
        for w in wrappers:
            if rest.startswith(w):
                chain += w
                rest = rest[len(w) :]
                progress = True
    return chain


def detect_prefix(keys: Iterable[str]) -> PrefixReport:
    """Report the wrapper prefix shared by all keys, and keys carrying one only partly."""
    keys = list(keys)
    chains: Counter[str] = Counter()
    memo: dict[str, str] = {}  # a key's chain depends only on its first two segments
    for k in keys:
        if not k.startswith(WRAPPERS):
            chains[""] += 1
            continue
        head, _, rest = k.partition(".")
        second = rest.partition(".")[0] + "."
        if second in WRAPPERS:  # a longer chain (module._orig_mod.): walk it
            chains[wrapper_chain(k)] += 1
            continue
        chain = memo.get(head)
        if chain is None:
            chain = memo[head] = wrapper_chain(k)
        chains[chain] += 1
    carrying = {c: n for c, n in chains.items() if c}
    common = ""
    if keys and len(chains) == 1:
        common = next(iter(chains))
    partial = bool(carrying) and not common
    lightning = bool(keys) and not common and all(k.startswith(LIGHTNING) for k in keys)
    return PrefixReport(common, len(keys), dict(carrying), partial, lightning)
