"""Pausing Python's cyclic garbage collector while large object graphs are built."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run a block with the cyclic collector off, restoring it after (nesting is fine).

    Reading a 100,000-tensor pickle makes a million small objects, none of them garbage; the
    collector would traverse all of them again and again (measured: half the unpickling time).
    Reference counting still frees everything as usual; only cycles wait until the block ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
