"""Helpers over key names that every layer may use (nothing here reads files or imports up)."""

from __future__ import annotations

import re
from typing import Any

_NUM = re.compile(r"(\d+)")


def natural_key(text: str) -> list[Any]:
    """Sort key that puts layer2 before layer10."""
    return [int(p) if p.isdigit() else p for p in _NUM.split(text)]
