"""The `ckpt` executable: the CLI, imported inside the interrupt guard, so Ctrl-C during
start-up (while typer and rich load) ends with one line and exit 130, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def main() -> None:
    try:
        from ckpt_tool.cli import main as run

        run()
    except KeyboardInterrupt:
        os.write(2, b"error: interrupted; nothing was written\n")
        sys.exit(130)
    except SystemExit as done:
        if isinstance(done.code, int | None) and _alone():
            _leave_now(done.code or 0)
        raise


def _alone() -> bool:
    """No other thread or child process that an orderly interpreter shutdown would wait for."""
    import threading

    if threading.active_count() > 1:
        return False
    mp = sys.modules.get("multiprocessing")
    return mp is None or not mp.active_children()


def _leave_now(code: int) -> NoReturn:
    """Exit without tearing the interpreter down object by object: the command has finished
    and written everything; freeing a 100,000-tensor report one object at a time took longer
    than printing it (0.5-0.8 s measured). Output streams and logging are flushed first."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        os._exit(code or 1)  # nobody reads stdout any more: what a normal exit would report
    os._exit(code)
