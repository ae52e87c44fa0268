"""`ckpt scan`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.scan import scan_paths

from .common import JsonOpt, boundary


@boundary
def scan(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint files or folders (scanned recursively: .pth .pt .bin .ckpt .tar "
            ".pkl .pickle .safetensors, *.index.json, DCP folders).",
            show_default=False,
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """List every callable and class a checkpoint's pickles would reach, without running any.

    Reads the pickle opcodes statically (zip members, legacy and plain pickles, DCP metadata and
    items, nested pickles), validates safetensors headers and sharded indexes, and checks zip
    CRCs. Exit 0: clean (allowlisted or unknown classes only); 3: dangerous content found;
    1: a file is unreadable or damaged. Example: ckpt scan downloads/ --json
    """
    report = scan_paths(paths).as_dict()
    if json_out:
        render.print_json(report)
    else:
        render.scan_report(report)
    render.scan_verdict(report)
    if report["exit_code"]:
        raise typer.Exit(report["exit_code"])
