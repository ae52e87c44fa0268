"""The options write commands share, light enough for the CLI to import at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

PathLike = str | Path
DEFAULT_MIN_COVERAGE = 1.0  # transplant: copying nothing is a failure; a head swap copies more


class WriteArgs(TypedDict, total=False):
    """The options every write command shares (`ckpt ... -o OUT --force --dry-run`)."""

    output: PathLike | None
    force: bool
    in_place: bool
    dry_run: bool
    verify: bool
    keep_device: bool


@dataclass
class WriteOptions:
    """Where and how: the options every write command shares."""

    output: Path | None = None
    force: bool = False
    in_place: bool = False
    dry_run: bool = False
    verify: bool = True
    keep_device: bool = False
