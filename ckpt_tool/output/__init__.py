"""The one write path: WritePlan -> write() -> WriteReport."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .options import WriteArgs, WriteOptions
    from .report import Report, WriteReport
    from .write import WritePlan, write

__all__ = ["Report", "WriteArgs", "WriteOptions", "WritePlan", "WriteReport", "write"]
_WHERE = {
    "Report": ".report",
    "WriteReport": ".report",
    "WriteArgs": ".options",
    "WriteOptions": ".options",
    "WritePlan": ".write",
    "write": ".write",
}


def __getattr__(name: str) -> Any:
    """Names imported on first use: the CLI needs the options without the writers."""
    from importlib import import_module

    if name not in _WHERE:
        raise AttributeError(f"module 'ckpt_tool.output' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
