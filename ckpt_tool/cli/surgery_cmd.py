"""Key surgery commands: strip-module, add-module, rename, extract."""

from __future__ import annotations

from typing import Annotated

import typer

from ckpt_tool.cli.common import InputArg, boundary, show_report, write_command
from ckpt_tool.output.options import WriteArgs

PrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--prefix", "-p", metavar="P", help="Use this prefix instead (e.g. Lightning's 'model.')."
    ),
]


@boundary
@write_command()
def strip_module(
    path: InputArg,
    prefix: PrefixOpt = None,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Strip where present when only some keys carry the prefix."),
    ] = False,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Remove DataParallel/DDP `module.` (and torch.compile `_orig_mod.`) from every key.

    Example: ckpt strip-module model.pth          (writes model.stripped.pth)
    """
    from ckpt_tool import api

    report = api.strip_module(path, prefix=prefix, partial=partial, weights=weights, **write)
    show_report(report, json_out)


@boundary
@write_command()
def add_module(
    path: InputArg,
    prefix: PrefixOpt = None,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Add `module.` to every key, to load into a DataParallel/DDP-wrapped model.

    Example: ckpt add-module model.pth -o model_dp.pth
    """
    from ckpt_tool import api

    show_report(api.add_module(path, prefix=prefix, weights=weights, **write), json_out)


@boundary
@write_command()
def rename(
    path: InputArg,
    maps: Annotated[
        list[str],
        typer.Option(
            "--map",
            "-m",
            metavar="'REGEX=REPLACEMENT'",
            help="Rename keys by regex (re.sub, \\1 groups); repeatable, applied in order.",
        ),
    ],
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Rename keys with regular expressions, applied in order.

    Example: ckpt rename model.pth --map '^backbone\\.=' --map 'fc\\.=head.'
    """
    from ckpt_tool import api

    show_report(api.rename(path, maps, weights=weights, **write), json_out)


@boundary
@write_command(in_place=False)
def extract(
    path: InputArg,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep",
            metavar="GLOB",
            help="Only the weights whose keys match (repeatable), e.g. 'backbone.*'.",
        ),
    ] = None,
    strip_prefix: Annotated[
        str | None,
        typer.Option(
            "--strip-prefix",
            metavar="PREFIX",
            help="Remove PREFIX from every kept key (each must start with it), e.g. backbone.",
        ),
    ] = None,
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Write only the weights as a bare state_dict (drop optimizer, epoch, ...).

    Works on training checkpoints (Lightning, timm, mmengine...) and on whole pickled models
    whose class code you do not have. Example: ckpt extract last.ckpt -o weights.safetensors
    """
    from ckpt_tool import api

    report = api.extract(path, keep=keep or [], strip_prefix=strip_prefix, weights=weights, **write)
    show_report(report, json_out)


@boundary
@write_command()
def drop(
    path: InputArg,
    patterns: Annotated[
        list[str],
        typer.Argument(
            metavar="PATTERN...",
            help="Weight keys (globs such as 'aux_head.*') or entries of a training checkpoint "
            "(optimizer, lr_scheduler, callbacks, ...) to remove.",
            show_default=False,
        ),
    ],
    *,
    write: WriteArgs,
    weights: str | None,
    json_out: bool,
) -> None:
    """Remove weights by pattern, or training-checkpoint entries by name; keep the rest.

    Reports what went and the bytes saved. Example: ckpt drop last.ckpt optimizer_states
    lr_schedulers callbacks -o slim.ckpt
    """
    from ckpt_tool import api

    show_report(api.drop(path, patterns, weights=weights, **write), json_out)
