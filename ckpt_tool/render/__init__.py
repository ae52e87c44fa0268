"""The only place that prints: JSON for programs, error and warning lines, the progress
line; tables, trees and colours (rich) in `render.views`, imported on first use, so --json
and error paths never import rich (about 50 ms)."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ hands out, typed for mypy
    from ckpt_tool.reports import ScanDoc

    from .views import (
        arch_list,
        auto_depth,
        count_report,
        demo_step,
        demo_summary,
        diff_report,
        edit_report,
        inspect_header,
        keys_table,
        module_tree,
        out,
        read_report,
        safe,
        sampled_steps,
        scan_report,
        share_bars,
        show,
        smoke_train_report,
        sparkline,
    )

__all__ = [
    "ProgressLine",
    "arch_list",
    "auto_depth",
    "count_report",
    "demo_step",
    "demo_summary",
    "diff_report",
    "edit_report",
    "error",
    "human_bytes",
    "inspect_header",
    "keys_table",
    "module_tree",
    "out",
    "print_json",
    "progress_sink",
    "read_report",
    "safe",
    "sampled_steps",
    "scan_report",
    "scan_verdict",
    "share_bars",
    "show",
    "smoke_train_report",
    "sparkline",
    "warn",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else: the bytes `json.dumps(data)` gives.

    Written a top-level entry at a time, and long lists an item at a time, so a 100,000-tensor
    report never exists as one string (and its UTF-8 copy) on top of the data. No indent:
    json's C encoder, several times faster than the indenting one, does each piece."""
    write = sys.stdout.write
    for piece in _json_pieces(data):
        write(piece)
    write("\n")
    sys.stdout.flush()


def _json_pieces(data: Any) -> Any:
    dumps = json.JSONEncoder(default=str).encode
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        yield dumps(data)
        return
    yield "{"
    for i, (key, value) in enumerate(data.items()):
        yield f"{', ' if i else ''}{dumps(key)}: "
        if isinstance(value, list) and len(value) > 256:
            yield "["
            for j in range(0, len(value), 256):
                part = dumps(value[j : j + 256])
                yield (", " if j else "") + part[1:-1]
            yield "]"
        else:
            yield dumps(value)
    yield "}"


def error(message: str) -> None:
    """One line on stderr."""
    line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message)
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    """One warning line on stderr (in colour on a terminal)."""
    if sys.stderr.isatty():
        from importlib import import_module

        import_module(".views", __name__).warn(message)
        return
    line = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message)
    sys.stderr.write(f"warning: {line}\n")
    sys.stderr.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressLine:
    """One self-overwriting stderr line per task ("writing  42% 512 MB / 1.2 GB"), at most
    ten redraws a second, erased when the task ends."""

    def __init__(self) -> None:
        self.last = 0.0
        self.shown = False

    def __call__(self, what: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        finished = done >= total
        if not finished and self.shown and now - self.last < 0.1:
            return
        self.last = now
        if finished:
            if self.shown:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
            self.shown = False
            return
        pct = f"{100 * done / total:3.0f}%" if total else ""
        amount = (
            f"{human_bytes(done)} / {human_bytes(total)}"
            if what in ("writing", "reading", "casting")
            else f"{done:,} / {total:,}"
        )
        sys.stderr.write(f"\r\x1b[K{_CONTROL.sub('?', what)}  {pct} {amount}")
        sys.stderr.flush()
        self.shown = True


def scan_verdict(r: ScanDoc) -> None:
    """One stderr line when a scan does not pass."""
    s = r["summary"]
    if s["dangerous"]:
        error(f"{s['dangerous']} of {s['files']} scanned file(s) are dangerous; nothing was run")
    elif r.get("strict") and s["needs code"]:
        error(
            f"{s['needs code']} of {s['files']} scanned file(s) need code outside the "
            "weights-only allowlist (--strict)"
        )
    elif s["error"]:
        error(f"{s['error']} of {s['files']} scanned file(s) are unreadable or damaged")


def progress_sink(json_out: bool) -> ProgressLine | None:
    """The progress display for a command: on stderr when it is a terminal, never with
    --json or when CKPT_NO_PROGRESS is set."""
    if json_out or os.environ.get("CKPT_NO_PROGRESS") or not sys.stderr.isatty():
        return None
    return ProgressLine()


def __getattr__(name: str) -> Any:
    """Everything else (tables, trees, reports) from render.views, imported on first use."""
    if name.startswith("__") or name == "views":  # the import system asking: not ours
        raise AttributeError(name)
    from importlib import import_module

    views = import_module(".views", __name__)
    try:
        return getattr(views, name)
    except AttributeError:
        raise AttributeError(f"module 'ckpt_tool.render' has no attribute {name!r}") from None
