"""Progress of long work: the library says how far it is; the CLI decides whether to show it.

Nothing is shown unless a sink is installed (`ckpt` installs one drawing on stderr when
stderr is a terminal and --json is off), so library calls stay silent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
Sink = Callable[[str, int, int], None]  # (what, done, total); done == total ends that task

_sink: Sink | None = None


def report(what: str, done: int, total: int) -> None:
    """Say that `done` of `total` units of `what` are finished."""
    if _sink is not None:
        _sink(what, done, total)


def track(items: Iterable[T], what: str, total: int) -> Iterator[T]:
    """The items, reporting one unit after each."""
    report(what, 0, total)
    done = 0
    for item in items:
        yield item
        done += 1
        report(what, done, total)
    if done != total:
        report(what, total, total)


@contextlib.contextmanager
def showing(sink: Sink | None) -> Iterator[None]:
    """Send progress to sink inside the block (None: nowhere)."""
    global _sink
    before, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = before
