"""The `ckpt` command: Typer commands only; the work is in the library."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

try:  # click's types and exceptions: typer vendors click since 0.2x
    from typer import _click as click_core
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    import click as click_core  # type: ignore[no-redef]  # noqa: TID251
    from click import exceptions as click_errors  # type: ignore[no-redef]  # noqa: TID251

from ckpt_tool import __version__, render
from ckpt_tool.errors import INTERRUPTED

from . import common

# name, help panel, module under ckpt_tool.cli, function: in the order `ckpt --help` lists them
COMMANDS: list[tuple[str, str, str, str]] = [
    ("inspect", "Inspect", "inspect_cmd", "inspect"),
    ("demo", "Start here", "demo_cmd", "demo"),
    ("count", "Inspect", "freeze_cmd", "count"),
    ("archs", "Inspect", "archs_cmd", "archs"),
    ("diff", "Inspect", "compare_cmd", "diff"),
    ("strip-module", "Edit", "surgery_cmd", "strip_module"),
    ("add-module", "Edit", "surgery_cmd", "add_module"),
    ("rename", "Edit", "surgery_cmd", "rename"),
    ("extract", "Edit", "surgery_cmd", "extract"),
    ("drop", "Edit", "surgery_cmd", "drop"),
    ("transplant", "Edit", "transplant_cmd", "transplant"),
    ("freeze", "Edit", "freeze_cmd", "freeze"),
    ("cast", "Edit", "convert_cmd", "cast"),
    ("convert", "Edit", "convert_cmd", "convert"),
    ("merge-lora", "Edit", "merge_cmd", "merge_lora"),
    ("average", "Edit", "compare_cmd", "average"),
    ("scan", "Check", "scan_cmd", "scan"),
    ("smoke-train", "Check", "train_cmd", "smoke_train_cmd"),
]
_SPECS = {name: (panel, module, func) for name, panel, module, func in COMMANDS}
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _reflow(doc: str | None) -> str:
    """A docstring as help: the lines of each paragraph joined, so the terminal wraps them
    (Typer keeps a docstring's line breaks, which breaks lines twice in 80 columns)."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _function(name: str) -> Callable[..., None]:
    """The function behind command `name` (its module imported now)."""
    _, module, attr = _SPECS[name]
    func: Callable[..., None] = getattr(importlib.import_module(f"ckpt_tool.cli.{module}"), attr)
    return func


def _build(name: str) -> click_core.Command:
    """The click command `name`, built from its module only when it is asked for."""
    func = _function(name)
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    one.command(
        name,
        rich_help_panel=_SPECS[name][0],
        help=_reflow(func.__doc__),
        context_settings=CONTEXT_SETTINGS,
    )(func)
    return typer.main.get_command(one)


def _listing(name: str) -> click_core.Command:
    """What `ckpt --help` shows of a command (its name, help and panel), without building its
    options: the group's help needs no more, and building all 18 took a third of its time."""
    doc = _reflow(_function(name).__doc__)
    return TyperCommand(name, help=doc, rich_help_panel=_SPECS[name][0])


class _LazyCommands(MutableMapping[str, "click_core.Command"]):
    """The group's commands: every name is known, each command is built on first use, so
    `ckpt inspect` imports and builds inspect alone (all 18 took 50 ms of start-up)."""

    def __init__(self, built: dict[str, click_core.Command]) -> None:
        self._built = built

    def __getitem__(self, name: str) -> click_core.Command:
        if name not in self._built:
            if name not in _SPECS:
                raise KeyError(name)
            self._built[name] = _build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: click_core.Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*_SPECS, *(n for n in self._built if n not in _SPECS)])

    def __len__(self) -> int:
        return len(set(_SPECS) | set(self._built))

    def __contains__(self, name: object) -> bool:
        return name in _SPECS or name in self._built

    def listing(self) -> dict[str, click_core.Command]:
        """Every command as `ckpt --help` lists it: the built ones, else a listing."""
        return {name: self._built.get(name) or _listing(name) for name in self}


class CkptGroup(TyperGroup):
    """The `ckpt` group: a command-line mistake is one stderr line (and a JSON document on
    stdout with --json), not a usage box; exit code 2. Commands are built on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(dict(self.commands))

    def format_help(self, ctx: click_core.Context, formatter: click_core.HelpFormatter) -> None:
        commands = self.commands
        if isinstance(commands, _LazyCommands):
            self.commands = commands.listing()
        try:
            super().format_help(ctx, formatter)
        finally:
            self.commands = commands

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(args) if args is not None else sys.argv[1:]
        common.start_run()
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
            if code == 130 and not common.has_reported(130):
                # Ctrl-C outside a command's body (while parsing or loading it): typer turns
                # it into a silent exit 130; say it as the command itself would
                if "--json" in argv:
                    render.print_json({"error": INTERRUPTED, "exit_code": code})
                render.error(INTERRUPTED)
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
    context_settings=CONTEXT_SETTINGS,
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


def main() -> None:
    if len(sys.argv) == 1:  # bare `ckpt`: the grouped command list, and success
        sys.argv.append("--help")
    app()
