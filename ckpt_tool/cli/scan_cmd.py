"""`ckpt scan`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render

from .common import JsonOpt, boundary


@boundary
def scan(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint files or folders (scanned recursively: checkpoint suffixes, "
            "*.index.json, DCP folders, and any file that starts like a zip, pickle or .npy).",
            show_default=False,
        ),
    ],
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Also fail (exit 3) on 'needs code': files that name classes or functions "
            "outside torch.load(weights_only=True)'s allowlist.",
        ),
    ] = False,
    crc: Annotated[
        bool,
        typer.Option(
            "--crc",
            help="Also read every tensor record and check its CRC-32 (reads all the bytes).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Judge every pickle a file holds, as torch.load would read it, without running any.

    Verdicts: safe (only what torch.load(weights_only=True) permits), needs code (classes or
    functions a real load would import, used the ordinary way: whole models, Namespaces,
    enums), dangerous (anything else called, code-running names, names computed at load time,
    files two readers could read differently). Exit 0: safe or needs code; 3: dangerous (and
    needs code with --strict); 1: unreadable or damaged. Example: ckpt scan downloads/ --json
    """
    from ckpt_tool import api

    report = api.scan(paths, strict=strict, crc=crc).as_dict()
    if json_out:
        render.print_json(report)
    else:
        render.scan_report(report)
    render.scan_verdict(report)
    if report["exit_code"]:
        raise typer.Exit(report["exit_code"])
