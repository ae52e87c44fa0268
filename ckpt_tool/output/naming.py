"""Where an output goes: derived names, the Hugging Face cache rule, overwrite refusals."""

from __future__ import annotations

import os
from pathlib import Path

from ckpt_tool.errors import OutputRefused, UsageError
from ckpt_tool.formats.writer import PTH_SUFFIXES, output_format


def derived_name(src: Path, tag: str, ext: str | None = None) -> Path:
    """model.pth -> model.TAG.pth (next to the input); folders get TAG.safetensors inside."""
    name = src.name
    for double in (".pth.tar", ".pt.tar"):
        if name.endswith(double):
            stem, suffix = name[: -len(double)], double
            break
    else:
        stem, suffix = (name, "") if src.is_dir() else (src.stem, src.suffix)
    if ext is not None:
        suffix = ext
    if not suffix or suffix not in (*PTH_SUFFIXES, ".pth.tar", ".pt.tar", ".safetensors"):
        suffix = ".pth"
    if in_hf_cache(src):  # never beside a cache's files: the current folder instead
        return Path(f"{stem}.{tag}{suffix}")
    return src.parent / f"{stem}.{tag}{suffix}"


def in_hf_cache(path: Path) -> bool:
    """A file or folder inside a Hugging Face cache snapshot (.../models--x/snapshots/...)."""
    parts = Path(os.path.abspath(path)).parts
    return any(p.startswith("models--") for p in parts) and "snapshots" in parts


def cache_note(src: Path) -> list[str]:
    """Why a derived output name is in the current folder, when it is."""
    if not in_hf_cache(src):
        return []
    return [
        f"{src} is inside a Hugging Face cache (never written into): the output goes to the "
        "current folder; choose the place with -o"
    ]


def resolve_output(
    src: Path,
    output: Path | None,
    *,
    tag: str,
    force: bool,
    in_place: bool,
    ext: str | None = None,
) -> Path:
    """The path to write, after the safety rules: no silent overwrite, never the input itself."""
    if in_place and output is not None:
        raise UsageError("give either --in-place or -o/--output, not both")
    if in_place:
        if not src.is_file():
            raise UsageError(f"{src}: --in-place needs a single checkpoint file")
        if in_hf_cache(src):
            raise OutputRefused(
                f"{src}: is inside a Hugging Face cache (its files are shared links to blobs); "
                "write a copy with -o instead of --in-place"
            )
        target = src
    else:
        target = output if output is not None else derived_name(src, tag, ext)
    output_format(target)
    if target.is_symlink():
        # write through the link, as cp does: the file it names is what the user means
        target = Path(os.path.realpath(target))
    if target.is_dir():
        raise OutputRefused(f"{target}: is a folder; give a file name for the output")
    if target.exists() and not target.is_file():
        raise OutputRefused(f"{target}: exists and is not a regular file; choose another -o")
    if not in_place and target.exists():
        if _same_file(src, target):
            raise OutputRefused(
                f"{target}: is the input file itself; pass --in-place to rewrite the input "
                "(still atomic), or choose another -o"
            )
        if not force:
            raise OutputRefused(f"{target}: already exists; pass --force to overwrite it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputRefused(f"{target}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputRefused(f"{target}: folder {folder} is not writable")
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
    # also covers symlinks and hard links: samefile compares device and inode


def is_folder_output(path: Path | None) -> bool:
    """`-o DIR`: a path without a file extension, or an existing folder."""
    return path is not None and (path.is_dir() or path.suffix == "")
