"""The `ckpt` executable: the CLI, imported inside the interrupt guard, so Ctrl-C during
start-up (while typer and rich load) ends with one line and exit 130, never a traceback."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported before the guard below is in place
if TYPE_CHECKING:
    from typing import Any, NoReturn


def main() -> None:
    sys.unraisablehook = _unraisable
    try:
        from ckpt_tool.cli import main as run

        run()
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as done:
        if isinstance(done.code, int | None) and _alone():
            _leave_now(done.code or 0)
        raise
    except Exception as exc:
        from ckpt_tool.errors import caused_by_interrupt

        if caused_by_interrupt(exc):  # Ctrl-C while a module was being imported
            _interrupted()
        raise


def _unraisable(unraisable: Any) -> None:
    """Ctrl-C landing in a callback whose exceptions Python only prints (an import lock's
    weakref callback): delivered again to the main thread, where the guard catches it,
    instead of a printed traceback and a command that carries on."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread

        _thread.interrupt_main()
        return
    sys.__unraisablehook__(unraisable)


def _interrupted() -> NoReturn:
    """Ctrl-C before a command ran: the one line (and the error document for --json)."""
    import json

    from ckpt_tool.errors import INTERRUPTED

    if "--json" in sys.argv[1:]:
        os.write(1, json.dumps({"error": INTERRUPTED, "exit_code": 130}).encode() + b"\n")
    os.write(2, f"error: {INTERRUPTED}\n".encode())
    sys.exit(130)


def _alone() -> bool:
    """No other thread, child process, process group or profiler that an orderly interpreter
    shutdown would wait for, close or let write its results."""
    import threading

    if threading.active_count() > 1:
        return False
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return False  # a profiler or coverage tool writes its results at interpreter exit
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.active_children():
        return False
    dist = sys.modules.get("torch.distributed")  # a process group torch would tear down
    return dist is None or not (dist.is_available() and dist.is_initialized())


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
