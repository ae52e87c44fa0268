"""What every command shares: the error boundary and the option aliases."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ckpt_tool import render
from ckpt_tool.errors import EXIT_CHECK_FAILED, EXIT_ERROR, CkptError

F = TypeVar("F", bound=Callable[..., Any])


def boundary(func: F) -> F:
    """Turn library errors into one stderr line and their exit code; unknown errors are bugs."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CkptError as exc:
            if os.environ.get("CKPT_DEBUG") == "1":
                traceback.print_exc()
            render.error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            render.error("interrupted; nothing was written")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("CKPT_DEBUG") == "1":
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            render.error(
                f"internal error {type(exc).__name__}: {first} "
                "(a bug in ckpt: rerun with CKPT_DEBUG=1 and report the traceback)"
            )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


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
