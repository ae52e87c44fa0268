"""`ckpt scan`: the verdict on files and folders, from the same reading every command uses.

Each file is surveyed (`formats/survey.py`): read the way torch.load reads it, every pickle it
holds run through the one restricted unpickler, every global judged by how the pickle uses it
(`formats/pickle_rules.py`), every place two readers could disagree called ambiguous. This
module adds what only a scan needs: folders walked recursively, sharded indexes checked,
safetensors headers validated, and the report with its exit code.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from . import progress
from .errors import EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_OK, CkptError
from .formats import dcp
from .formats.pickle_rules import DANGEROUS, ERROR, NEEDS_CODE, RANK, SAFE, VERDICTS
from .formats.safetensors_io import MAX_HEADER, read_header
from .formats.survey import NPY_MAGIC, Finding, Survey, survey_file
from .keys import natural_key
from .reports import FileScanInfo, ScanDoc, ScanSummary

# What a folder scan picks up by name (`.pth.tar` ends in `.tar`); files with other names are
# picked up when their first bytes are a zip, a pickle (protocol 2+) or a numpy array.
CHECKPOINT_SUFFIXES = (
    ".pth",
    ".pt",
    ".bin",
    ".ckpt",
    ".tar",
    ".pkl",
    ".pickle",
    ".safetensors",
    ".npy",
    ".npz",
    ".ptl",
    ".pt2",
    ".joblib",
    ".dat",
    ".data",
)
INDEX_SUFFIX = ".index.json"
_SNIFF = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", NPY_MAGIC)


@dataclass
class FileScan:
    """The scan of one file or folder (DCP, sharded index)."""

    path: Path
    format: str
    findings: list[Finding]
    pickles: int = 0

    @property
    def verdict(self) -> str:
        """safe | needs code | dangerous, or error when the bytes could not all be read and
        nothing dangerous was found in what could."""
        worst = max(
            (f.verdict for f in self.findings if f.verdict in RANK),
            key=RANK.__getitem__,
            default=SAFE,
        )
        if worst != DANGEROUS and any(f.verdict == ERROR for f in self.findings):
            return ERROR
        return worst

    def as_dict(self) -> FileScanInfo:
        counts = dict.fromkeys((*VERDICTS, ERROR), 0)
        for f in self.findings:
            counts[f.verdict] += 1
        order = {DANGEROUS: 0, ERROR: 1, NEEDS_CODE: 2, SAFE: 3}
        return {
            "path": str(self.path),
            "format": self.format,
            "verdict": self.verdict,
            "pickles": self.pickles,
            "counts": counts,
            "findings": [
                f.as_dict() for f in sorted(self.findings, key=lambda f: order[f.verdict])
            ],
        }


@dataclass
class ScanReport:
    """Every file scanned, and the exit code the result calls for."""

    files: list[FileScan]
    strict: bool = False

    @property
    def exit_code(self) -> int:
        verdicts = {f.verdict for f in self.files}
        if DANGEROUS in verdicts or (self.strict and NEEDS_CODE in verdicts):
            return EXIT_CHECK_FAILED
        if ERROR in verdicts:
            return EXIT_ERROR
        return EXIT_OK

    def as_dict(self) -> ScanDoc:
        counts = {"files": len(self.files), **dict.fromkeys((*VERDICTS, ERROR), 0)}
        for f in self.files:
            counts[f.verdict] += 1
        summary = cast("ScanSummary", counts)  # keys: files and the verdict names
        return {
            "files": [f.as_dict() for f in self.files],
            "summary": summary,
            "strict": self.strict,
            "exit_code": self.exit_code,
        }


def _from_survey(survey: Survey) -> FileScan:
    return FileScan(survey.path, survey.format, survey.findings, len(survey.pickles))


def _error(path: Path, fmt: str, message: str, member: str = "file") -> FileScan:
    return FileScan(path, fmt, [Finding(ERROR, "unreadable", message, None, member)])


# --- safetensors and sharded indexes -------------------------------------------------------------


def _check_safetensors(path: Path, scan: FileScan) -> None:
    try:
        header = read_header(path)
    except CkptError as exc:
        scan.findings.append(Finding(ERROR, "header", exc.message, None, "header", 0))
        return
    scan.findings.append(
        Finding(
            SAFE,
            "header",
            f"header valid: {len(header.tensors)} tensors, no code (safetensors holds no pickle)",
            None,
            "header",
            0,
        )
    )


def scan_index(path: Path) -> tuple[FileScan, list[Path]]:
    """Check a sharded index; returns it and the shards inside its folder that exist."""
    scan = FileScan(path, "sharded index", [])

    def flag(verdict: str, why: str, message: str) -> None:
        scan.findings.append(Finding(verdict, why, message, None, "index"))

    try:
        if path.stat().st_size > MAX_HEADER:
            raise ValueError("larger than 100 MB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        flag(ERROR, "header", f"index is not valid JSON ({str(exc)[:120]})")
        return scan, []
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        flag(ERROR, "header", "index has no weight_map of key -> shard file")
        return scan, []
    folder = path.parent.resolve()
    shards: list[Path] = []
    for shard in sorted(set(weight_map.values())):
        target = (folder / shard).resolve()
        if (
            not shard
            or "/" in shard
            or "\\" in shard
            or shard in (".", "..")
            or Path(shard).is_absolute()
            or target.parent != folder
        ):
            flag(
                DANGEROUS,
                "path-traversal",
                f"shard {shard!r} points outside the index's folder: a loader following it "
                "reads a file the checkpoint does not ship",
            )
        elif not target.is_file():
            flag(ERROR, "unreadable", f"shard {shard!r} is missing")
        else:
            shards.append(folder / shard)
    if scan.verdict == SAFE and shards and all(s.suffix == ".safetensors" for s in shards):
        from .checkpoint import load

        try:
            load(path)  # every key in its shard, headers valid
        except CkptError as exc:
            flag(ERROR, "unreadable", exc.message)
    return scan, shards


# --- files and folders ---------------------------------------------------------------------------


def scan_file(path: Path, check_crc: bool = False) -> FileScan:
    """Scan one file (never raises for what it holds)."""
    scan = _from_survey(survey_file(path, check_crc=check_crc))
    if scan.format == "safetensors":
        _check_safetensors(path, scan)
    elif scan.verdict in (SAFE, NEEDS_CODE) and scan.format in ("torch-zip", "pickle"):
        _layout_check(path, scan)
    return scan


def _layout_check(path: Path, scan: FileScan) -> None:
    """What our reader makes of the layout (storages present and large enough, views in
    bounds): a file torch cannot load either is damaged, whatever its pickle says."""
    from .checkpoint import load

    try:
        load(path)
    except CkptError as exc:
        scan.findings.append(Finding(ERROR, "unreadable", exc.message, None, "file"))


def _looks_like_checkpoint(path: Path) -> bool:
    if path.name.endswith(INDEX_SUFFIX) or path.name.endswith(CHECKPOINT_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.startswith(_SNIFF)


def targets(path: Path) -> list[Path]:
    """The files and DCP folders a path names: itself, or everything in a folder tree (links
    are not followed, so a link loop cannot trap the walk)."""
    if not path.is_dir():
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        here = Path(root)
        if ".metadata" in files:
            found.append(here)  # its data files are read through its .metadata
            continue
        for name in files:
            p = here / name
            if p.is_symlink() or not p.is_file():
                continue
            if name != ".metadata" and _looks_like_checkpoint(p):
                found.append(p)
    return sorted(found, key=lambda p: natural_key(str(p)))


def _kind(path: Path) -> str | None:
    """Why a path cannot be scanned (missing, a link loop, a pipe or device), else None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing" if not path.is_symlink() else "a broken symbolic link"
    except OSError as exc:
        return f"cannot be opened ({exc.strerror or exc})"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return "not a regular file or folder (a pipe, device or socket)"


def scan_paths(paths: list[Path], strict: bool = False, check_crc: bool = False) -> ScanReport:
    """Scan files and folders; never raises for anything a file contains."""
    results: list[FileScan] = []
    done: set[Path] = set()
    queue = list(paths)
    while queue:
        path = queue.pop(0)
        problem = _kind(path)
        if problem is not None:
            fmt = "missing" if problem == "missing" else "other"
            text = "no such file or folder" if problem == "missing" else problem
            results.append(_error(path, fmt, text))
            continue
        found = targets(path)
        if path.is_dir() and not found:
            results.append(
                _error(
                    path,
                    "folder",
                    "folder holds no checkpoint files (" + " ".join(CHECKPOINT_SUFFIXES) + ", "
                    "*.index.json, DCP folders)",
                    "folder",
                )
            )
            continue
        extra: list[Path] = []
        for target in progress.track(found, "scanning files", len(found)):
            key = target.resolve()
            if key in done:
                continue
            done.add(key)
            if target.is_dir():
                results.append(_from_survey(dcp.survey_dcp(target)))
            elif target.name.endswith(INDEX_SUFFIX):
                scan, shards = scan_index(target)
                results.append(scan)
                extra.extend(s for s in shards if s.resolve() not in done)
            else:
                results.append(scan_file(target, check_crc))
        queue[:0] = extra
    return ScanReport(results, strict)
