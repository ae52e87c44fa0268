"""The `ckpt` command: Typer commands only; the work is in the library."""

from __future__ import annotations

from typing import Annotated

import typer

from ckpt_tool import __version__

from .archs_cmd import archs
from .compare_cmd import average, diff
from .convert_cmd import cast, convert
from .demo_cmd import demo
from .freeze_cmd import count, freeze
from .inspect_cmd import inspect
from .merge_cmd import merge_lora
from .scan_cmd import scan
from .surgery_cmd import add_module, drop, extract, rename, strip_module
from .train_cmd import smoke_train_cmd
from .transplant_cmd import transplant

app = typer.Typer(
    name="ckpt",
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


app.command(rich_help_panel="Inspect")(inspect)
app.command(rich_help_panel="Start here")(demo)
app.command(rich_help_panel="Inspect")(count)
app.command(rich_help_panel="Inspect")(archs)
app.command(rich_help_panel="Inspect")(diff)
app.command("strip-module", rich_help_panel="Edit")(strip_module)
app.command("add-module", rich_help_panel="Edit")(add_module)
app.command(rich_help_panel="Edit")(rename)
app.command(rich_help_panel="Edit")(extract)
app.command(rich_help_panel="Edit")(drop)
app.command(rich_help_panel="Edit")(transplant)
app.command(rich_help_panel="Edit")(freeze)
app.command(rich_help_panel="Edit")(cast)
app.command(rich_help_panel="Edit")(convert)
app.command("merge-lora", rich_help_panel="Edit")(merge_lora)
app.command(rich_help_panel="Edit")(average)
app.command(rich_help_panel="Check")(scan)
app.command("smoke-train", rich_help_panel="Check")(smoke_train_cmd)


def main() -> None:
    import sys

    if len(sys.argv) == 1:  # bare `ckpt`: the grouped command list, and success
        sys.argv.append("--help")
    app()
