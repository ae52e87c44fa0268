"""The typed reports commands return: what `--json` prints and what render draws."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ckpt_tool.reports import CastReport


@dataclass
class WriteReport:
    """What a write command did (or, with dry_run, would do), and where."""

    command: str
    input: str
    output: str
    dry_run: bool
    weights_key: str | None
    details: dict[str, Any] = field(default_factory=dict)  # the command's own fields
    notes: list[str] = field(default_factory=list)
    written: bool = False
    format: str | None = None
    bytes: int | None = None
    verified: bool | None = None
    files: dict[str, Any] = field(default_factory=dict)  # shards, index, folder files
    cast: CastReport | None = None  # per-tensor cast statistics, when a cast ran
    warnings: list[str] = field(default_factory=list)  # for stderr; not in the JSON
    exit_code: int = 0

    @property
    def shards(self) -> list[str]:
        return list(self.files.get("shards") or self.details.get("shards") or [])

    def to_json(self) -> dict[str, Any]:
        """The --json document (the same keys the CLI has always printed)."""
        doc: dict[str, Any] = {
            "command": self.command,
            "input": self.input,
            "output": self.output,
            "dry_run": self.dry_run,
            "written": self.written,
            "weights_key": self.weights_key,
            **self.details,
            "notes": self.notes,
        }
        if self.written:
            doc.update(format=self.format, bytes=self.bytes, verified=self.verified)
        doc.update(self.files)
        if self.cast is not None:
            doc["cast_report"] = self.cast
        return doc


D = TypeVar("D", bound=Mapping[str, Any])


@dataclass
class Report(Generic[D]):
    """What a read command found (inspect, count, diff, smoke-train, archs); exit_code 3
    when a check failed or the file is dangerous."""

    command: str
    data: D  # the command's reports.* shape (CountReport, DiffReport, ...)
    exit_code: int = 0
    warnings: list[str] = field(default_factory=list)
    dangerous: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)
