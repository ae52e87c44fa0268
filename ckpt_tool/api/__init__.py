"""The library API: one function per `ckpt` command, returning its typed report.

Each function does what the command does, prints nothing and raises the CkptError family
(each with its exit code) instead of exiting. Write commands take the shared options as
keywords: `output`, `force`, `in_place`, `dry_run`, `verify`, `keep_device`.

    import ckpt_tool
    report = ckpt_tool.strip_module("model.pth", output="clean.pth")
    report.output, report.verified, report.to_json()

Names are imported on first use (`ckpt inspect` never loads the writers).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckpt_tool.output.options import DEFAULT_MIN_COVERAGE, WriteArgs
    from ckpt_tool.output.report import Report, WriteReport

    from .read import InspectReport, archs, count, diff, inspect, scan, smoke_train
    from .write import (
        add_module,
        average,
        cast,
        convert,
        drop,
        extract,
        freeze,
        merge_lora,
        rename,
        strip_module,
        transplant,
    )

_READ = ("InspectReport", "archs", "count", "diff", "inspect", "scan", "smoke_train")
_WRITE = (
    "add_module", "average", "cast", "convert", "drop", "extract", "freeze", "merge_lora",
    "rename", "strip_module", "transplant",
)  # fmt: skip
_ELSEWHERE = {
    "DEFAULT_MIN_COVERAGE": "ckpt_tool.output.options",
    "WriteArgs": "ckpt_tool.output.options",
    "Report": "ckpt_tool.output.report",
    "WriteReport": "ckpt_tool.output.report",
}
__all__ = [
    "DEFAULT_MIN_COVERAGE",
    "InspectReport",
    "Report",
    "WriteArgs",
    "WriteReport",
    "add_module",
    "archs",
    "average",
    "cast",
    "convert",
    "count",
    "diff",
    "drop",
    "extract",
    "freeze",
    "inspect",
    "merge_lora",
    "rename",
    "scan",
    "smoke_train",
    "strip_module",
    "transplant",
]


def __getattr__(name: str) -> Any:
    if name in _READ:
        return getattr(import_module(".read", __name__), name)
    if name in _WRITE:
        return getattr(import_module(".write", __name__), name)
    if name in _ELSEWHERE:
        return getattr(import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'ckpt_tool.api' has no attribute {name!r}")
