"""`ckpt inspect`."""

from __future__ import annotations

from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.errors import UsageError

from .common import InputArg, JsonOpt, WeightsOpt, boundary, exit_if_dangerous


@boundary
def inspect(
    path: InputArg,
    depth: Annotated[
        str | None,
        typer.Option(
            "--depth",
            "-d",
            metavar="N|all",
            help="Show the module tree N levels deep, or all of it. Default: as deep as fits "
            "a screen (about 40 lines).",
        ),
    ] = None,
    filter: Annotated[
        str | None,
        typer.Option(
            "--filter", "-f", metavar="GLOB", help="Only keys matching a glob, e.g. 'layer1.*'."
        ),
    ] = None,
    keys: Annotated[
        bool, typer.Option("--keys", help="Flat listing of keys instead of the tree.")
    ] = False,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Read tensor values (one at a time) and add min/max/mean/std and NaN/Inf counts.",
        ),
    ] = False,
    weights: WeightsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show what a checkpoint holds, without loading tensor bytes or running its code.

    Exit 3 (after the report) when the file is dangerous, as `ckpt scan` says.
    Example: ckpt inspect model.pth --depth 2
    """
    from ckpt_tool import api

    levels = _parse_depth(depth)
    result = api.inspect(path, filter=filter, stats=stats, weights=weights)
    report = result.data
    if json_out:
        render.print_json(report)
        exit_if_dangerous(result.dangerous, path)
        return
    render.inspect_header(report)
    for warning in result.warnings:
        render.warn(warning)
    if filter is not None and not result.entries:
        pass
    elif keys:
        render.show(render.keys_table(result.entries, result.stats))
    else:
        tree = result.tree()
        shown = render.auto_depth(tree) if levels == AUTO else levels
        render.show(render.module_tree(tree, shown, result.stats))
        if levels == AUTO and shown is not None:
            render.out.print(f"[dim](tree cut at depth {shown}: --depth all shows every level)[/]")
    if filter is None:
        render.share_bars(report["top_level"])
    exit_if_dangerous(result.dangerous, path)


AUTO = -1


def _parse_depth(text: str | None) -> int | None:
    """--depth: None (default) -> AUTO, 'all' -> None (everything), N >= 1 -> N."""
    if text is None:
        return AUTO
    if text.strip().lower() == "all":
        return None
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise UsageError(f"--depth {text!r}: give a number of levels (1, 2, ...) or 'all'")
