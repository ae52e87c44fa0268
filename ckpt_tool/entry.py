"""The `ckpt` executable: the CLI, imported inside the interrupt guard, so Ctrl-C during
start-up (while typer and rich load) ends with one line and exit 130, never a traceback."""

from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        from ckpt_tool.cli import main as run

        run()
    except KeyboardInterrupt:
        os.write(2, b"error: interrupted; nothing was written\n")
        sys.exit(130)
