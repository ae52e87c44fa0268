"""What every command shares: the error boundary and the option aliases."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ckpt_tool import progress, render
from ckpt_tool.errors import (
    EXIT_CHECK_FAILED,
    EXIT_ERROR,
    INTERRUPTED,
    CkptError,
    caused_by_interrupt,
)
from ckpt_tool.memory import paused_gc

F = TypeVar("F", bound=Callable[..., Any])


_MODEL_COMMANDS: set[Callable[..., Any]] = set()


def runs_models(func: F) -> F:
    """Mark a command that builds and runs torch models: it keeps the cyclic garbage
    collector on (training steps and model builds make reference cycles worth freeing)."""
    _MODEL_COMMANDS.add(func)
    return func


def boundary(func: F) -> F:
    """Turn library errors into one stderr line and their exit code (with --json, a JSON
    document on stdout too); unknown errors are bugs.

    A command reads and writes records, not cycles: it runs with the cyclic garbage collector
    paused (a 100,000-tensor report spent a sixth of its time in collections that found
    nothing), unless marked `runs_models`."""
    collects = func in _MODEL_COMMANDS

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        try:
            with (
                progress.showing(render.progress_sink(json_out)),
                contextlib.nullcontext() if collects else paused_gc(),
            ):
                return func(*args, **kwargs)
        except CkptError as exc:
            if os.environ.get("CKPT_DEBUG") == "1":
                traceback.print_exc()
            fail(exc.message, exc.exit_code, json_out, exc.report)
        except KeyboardInterrupt:
            fail(INTERRUPTED, 130, json_out)
        except typer.Exit:
            raise
        except Exception as exc:
            if caused_by_interrupt(exc):
                fail(INTERRUPTED, 130, json_out)
            if os.environ.get("CKPT_DEBUG") == "1":
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(
                f"internal error {type(exc).__name__}: {first} "
                "(a bug in ckpt: rerun with CKPT_DEBUG=1 and report the traceback)",
                EXIT_ERROR,
                json_out,
            )

    return wrapper  # type: ignore[return-value]


_FAILED: list[int] = []  # exit codes fail() has reported in this run of the CLI


def start_run() -> None:
    """Forget what earlier runs in this process reported (tests run many)."""
    _FAILED.clear()


def has_reported(code: int) -> bool:
    """Whether fail() has already told the user about this exit code in this run."""
    return code in _FAILED


def fail(message: str, code: int, json_out: bool, report: Any = None) -> NoReturn:
    """The error line on stderr (and with --json the error document on stdout), then exit.
    A report found before the failure (transplant's coverage) is shown first."""
    _FAILED.append(code)
    if json_out:
        doc = report.to_json() if report is not None else {}
        render.print_json({**doc, "error": message, "exit_code": code})
    elif report is not None:
        show_report(report, json_out=False)
    render.error(message)
    raise typer.Exit(code)


def show_report(report: Any, json_out: bool) -> None:
    """A command's report: warnings on stderr, then JSON or tables on stdout."""
    from ckpt_tool.output import WriteReport

    for warning in report.warnings:
        render.warn(warning)
    if json_out:
        render.print_json(report.to_json())
    elif isinstance(report, WriteReport):
        render.edit_report(report)
    else:
        render.read_report(report.command, report.data)


InputArg = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint file or folder (.pth/.pt/.bin/.ckpt, .safetensors, "
        "sharded index, HF folder, DCP folder).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        metavar="KEY",
        help="Which weight set of a training checkpoint to use "
        "(e.g. state_dict_ema); inspect lists the candidates.",
    ),
]


def exit_if_dangerous(dangerous: list[str], path: Path) -> None:
    """A report on a dangerous file is printed, then the command fails like `ckpt scan`."""
    if dangerous:
        render.error(
            f"{path}: dangerous content ({'; '.join(dangerous[:3])}); nothing was run. "
            f"See `ckpt scan {path}`"
        )
        raise typer.Exit(EXIT_CHECK_FAILED)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="OUT",
        help="Output file; .pth/.pt/.bin/.ckpt (torch zip) or .safetensors. "
        "Default: next to the input with a derived name.",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
InPlaceOpt = Annotated[
    bool, typer.Option("--in-place", help="Rewrite the input itself (still atomic).")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the full report; write nothing.")]
KeepDeviceOpt = Annotated[
    bool,
    typer.Option(
        "--keep-device",
        help="Keep the devices tensors were saved on (cuda:0 ...). Default: written as CPU "
        "tensors, so any machine loads the output.",
    ),
]
NoVerifyOpt = Annotated[
    bool, typer.Option("--no-verify", help="Skip reading the output back to verify it.")
]


# The options every write command shares, added to its signature by `write_command`.
_WRITE_OPTIONS: list[tuple[str, Any, Any]] = [
    ("output", OutputOpt, None),
    ("force", ForceOpt, False),
    ("in_place", InPlaceOpt, False),
    ("dry_run", DryRunOpt, False),
    ("no_verify", NoVerifyOpt, False),
    ("weights", WeightsOpt, None),
    ("keep_device", KeepDeviceOpt, False),
    ("json_out", JsonOpt, False),
]


def write_command(in_place: bool = True) -> Callable[[F], F]:
    """Give a write command the shared options (-o, --force, --in-place, --dry-run,
    --no-verify, --weights, --keep-device, --json).

    The command declares `write: WriteArgs`, `weights` and `json_out` as keyword-only
    parameters; Typer sees the options in their place, and the command receives `write`
    ready to pass to the library function (`api.strip_module(path, **write)`).
    """

    def decorate(func: F) -> F:
        own = [
            p
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.name not in ("write", "weights", "json_out")
        ]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for name, a, d in _WRITE_OPTIONS
            if in_place or name != "in_place"
        ]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            write = {
                "output": kwargs.pop("output", None),
                "force": kwargs.pop("force", False),
                "in_place": kwargs.pop("in_place", False),
                "dry_run": kwargs.pop("dry_run", False),
                "verify": not kwargs.pop("no_verify", False),
                "keep_device": kwargs.pop("keep_device", False),
            }
            return func(*args, write=write, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
