"""The `ckpt` command: Typer commands only; the work is in the library."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # the exception types of command-line mistakes: typer vendors click since 0.2x
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors  # type: ignore[no-redef]  # noqa: TID251

from ckpt_tool import __version__, render

from .archs_cmd import archs
from .compare_cmd import average, diff
from .convert_cmd import cast, convert
from .demo_cmd import demo
from .freeze_cmd import count, freeze
from .inspect_cmd import inspect as inspect_cmd
from .merge_cmd import merge_lora
from .scan_cmd import scan
from .surgery_cmd import add_module, drop, extract, rename, strip_module
from .train_cmd import smoke_train_cmd
from .transplant_cmd import transplant


class CkptGroup(TyperGroup):
    """The `ckpt` group: a command-line mistake is one stderr line (and a JSON document on
    stdout with --json), not a usage box; exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(args) if args is not None else sys.argv[1:]
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click_errors.NoArgsIsHelpError as exc:
            sys.stderr.write(exc.format_message() + "\n")
            code = exc.exit_code
        except click_errors.ClickException as exc:
            code = exc.exit_code
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "ckpt"
            said = " ".join(exc.format_message().split())
            line = f"{where}: {said} (`{where} --help` lists the options)"
            if "--json" in argv:
                render.print_json({"error": line, "exit_code": code})
            render.error(line)
        except typer.Abort:
            render.error("aborted; nothing was written")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="ckpt",
    cls=CkptGroup,
    help="Inspect and repair PyTorch checkpoints safely: nothing in a checkpoint runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ckpt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Inspect and repair PyTorch checkpoints safely: nothing in a checkpoint runs."""


def _reflow(doc: str | None) -> str:
    """A docstring as help: the lines of each paragraph joined, so the terminal wraps them
    (Typer keeps a docstring's line breaks, which breaks lines twice in 80 columns)."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


COMMANDS: list[tuple[str, str, Callable[..., None]]] = [
    ("inspect", "Inspect", inspect_cmd),
    ("demo", "Start here", demo),
    ("count", "Inspect", count),
    ("archs", "Inspect", archs),
    ("diff", "Inspect", diff),
    ("strip-module", "Edit", strip_module),
    ("add-module", "Edit", add_module),
    ("rename", "Edit", rename),
    ("extract", "Edit", extract),
    ("drop", "Edit", drop),
    ("transplant", "Edit", transplant),
    ("freeze", "Edit", freeze),
    ("cast", "Edit", cast),
    ("convert", "Edit", convert),
    ("merge-lora", "Edit", merge_lora),
    ("average", "Edit", average),
    ("scan", "Check", scan),
    ("smoke-train", "Check", smoke_train_cmd),
]
for _name, _panel, _func in COMMANDS:
    app.command(_name, rich_help_panel=_panel, help=_reflow(_func.__doc__))(_func)


def main() -> None:
    if len(sys.argv) == 1:  # bare `ckpt`: the grouped command list, and success
        sys.argv.append("--help")
    app()
