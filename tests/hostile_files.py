"""Builders of hostile and broken checkpoint files, made at test time (no tests here).

Every builder takes a directory (``pathlib.Path``) and returns the path it wrote.
Hostile payloads try to create ``<dir>/CANARY_EXECUTED`` (absolute path); a test that
finds that file after running a command has just watched a checkpoint execute code.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import random
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CANARY_NAME = "CANARY_EXECUTED"
EVIL_MODULE = "ckpt_evil_sideeffect"


def canary_path(directory: Path) -> Path:
    return (Path(directory) / CANARY_NAME).absolute()


# --------------------------------------------------------------------------- payloads
# Only __reduce__ matters: pickle records the callable it returns, not these classes.


class _OsSystem:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as posix.system
        return (os.system, (f"touch '{self.canary}'",))


class _Exec:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as __builtin__.exec (protocol 2 py2 mapping)
        return (builtins.exec, (f"open({self.canary!r}, 'w').close()",))


class _Eval:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as __builtin__.eval
        return (builtins.eval, (f"open({self.canary!r}, 'w').close()",))


class _Popen:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as commands.Popen (py2 name of subprocess)
        return (subprocess.Popen, (["touch", self.canary],))


class _Getcwd:
    """Placeholder global, byte-replaced afterwards by ckpt_evil_sideeffect.Thing."""

    def __reduce__(self):
        return (os.getcwd, ())


def _weights_with(evil: object) -> dict[str, object]:
    return {"weight": torch.randn(3, 4), "bias": torch.zeros(3), "evil": evil}


# --------------------------------------------------------------------------- hostile zips


def zip_os_system(directory: Path) -> Path:
    path = Path(directory) / "zip_os_system.pth"
    torch.save(_weights_with(_OsSystem(canary_path(directory))), path)
    return path


def zip_exec(directory: Path) -> Path:
    path = Path(directory) / "zip_exec.pth"
    torch.save(_weights_with(_Exec(canary_path(directory))), path)
    return path


def zip_eval(directory: Path) -> Path:
    path = Path(directory) / "zip_eval.pth"
    torch.save(_weights_with(_Eval(canary_path(directory))), path)
    return path


def zip_popen(directory: Path) -> Path:
    path = Path(directory) / "zip_popen.pth"
    torch.save(_weights_with(_Popen(canary_path(directory))), path)
    return path


def _write_torch_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Write members STORED, in order, each payload 64-byte aligned like torch does."""
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            offset = fh.tell() + 30 + len(name.encode()) + 4  # local header + extra header
            pad = (-offset) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # torch's "FB" padding
            zf.writestr(info, data)


def zip_import_side_effect(directory: Path) -> Path:
    """A module whose import writes the canary, and a torch zip naming one of its classes.

    The zip holds real tensors (weight, bias); data.pkl's ``evil`` entry is
    ``GLOBAL 'ckpt_evil_sideeffect Thing'`` + ``REDUCE`` (a call with no arguments).
    """
    directory = Path(directory)
    (directory / f"{EVIL_MODULE}.py").write_text(
        f"open({str(canary_path(directory))!r}, 'w').close()\n\n\nclass Thing:\n    pass\n"
    )
    path = directory / "zip_import_side_effect.pth"
    torch.save(_weights_with(_Getcwd()), path)
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    placeholder = b"cposix\ngetcwd\n"
    rewritten = []
    for name, data in members:
        if name.endswith("/data.pkl"):
            assert data.count(placeholder) == 1, "unexpected pickle layout from torch.save"
            data = data.replace(placeholder, f"c{EVIL_MODULE}\nThing\n".encode())
        rewritten.append((name, data))
    _write_torch_zip(path, rewritten)
    return path


# --------------------------------------------------------------------------- other hostile files


def _numpy_with_payload(directory: Path) -> dict[str, object]:
    return {"weight": np.zeros((3, 4), np.float32), "evil": _OsSystem(canary_path(directory))}


def pickle_os_system(directory: Path) -> Path:
    path = Path(directory) / "pickle_os_system.pkl"
    path.write_bytes(pickle.dumps(_numpy_with_payload(directory), protocol=2))
    return path


def pickle_protocol0_system(directory: Path) -> Path:
    path = Path(directory) / "pickle_protocol0_system.pkl"
    path.write_bytes(pickle.dumps(_numpy_with_payload(directory), protocol=0))
    return path


def legacy_os_system(directory: Path) -> Path:
    path = Path(directory) / "legacy_os_system.pth"
    torch.save(
        _weights_with(_OsSystem(canary_path(directory))),
        path,
        _use_new_zipfile_serialization=False,
    )
    return path


# --------------------------------------------------------------------------- broken files


def empty_file(directory: Path) -> Path:
    path = Path(directory) / "empty.pth"
    path.write_bytes(b"")
    return path


def random_bytes(directory: Path) -> Path:
    path = Path(directory) / "random.pth"
    path.write_bytes(random.Random(1234).randbytes(4096))
    return path


def text_named_pth(directory: Path) -> Path:
    path = Path(directory) / "model.pth"
    path.write_text("hello\n")
    return path


def truncated_zip(directory: Path) -> Path:
    path = Path(directory) / "truncated.pth"
    buf = io.BytesIO()
    torch.save({"weight": torch.randn(64, 64), "bias": torch.zeros(64)}, buf)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def zip_without_data_pkl(directory: Path) -> Path:
    path = Path(directory) / "no_data_pkl.pth"
    _write_torch_zip(path, [("archive/version", b"3\n")])
    return path


def folder_without_checkpoint(directory: Path) -> Path:
    path = Path(directory) / "not_a_checkpoint_folder"
    path.mkdir()
    (path / "README.txt").write_text("nothing to see here\n")
    return path


def missing_path(directory: Path) -> Path:
    return Path(directory) / "does_not_exist.pth"


def safetensors_bytes(header: object, data: bytes, *, pad: bool = True) -> bytes:
    """8-byte little-endian header length, the JSON header (space-padded to 8), the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * ((-len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _f32_entry(begin: int, end: int, shape: list[int] | None = None) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape or [2, 2], "data_offsets": [begin, end]}


_META = {"__metadata__": {"format": "pt"}}


def safetensors_valid(directory: Path) -> Path:
    """A control file: the builders below each break exactly one thing in this one."""
    path = Path(directory) / "valid.safetensors"
    header = {"a": _f32_entry(0, 16), "b": _f32_entry(16, 32), **_META}
    path.write_bytes(safetensors_bytes(header, bytes(32)))
    return path


def safetensors_absurd_header_len(directory: Path) -> Path:
    path = Path(directory) / "absurd_header_len.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b'{"a": {}}')
    return path


def safetensors_broken_json(directory: Path) -> Path:
    path = Path(directory) / "broken_json.safetensors"
    path.write_bytes(safetensors_bytes(b'{"a": {"dtype": "F32", "shape": [2, 2', bytes(16)))
    return path


def safetensors_overlapping_offsets(directory: Path) -> Path:
    path = Path(directory) / "overlapping_offsets.safetensors"
    header = {"a": _f32_entry(0, 16), "b": _f32_entry(8, 24), **_META}
    path.write_bytes(safetensors_bytes(header, bytes(24)))
    return path


def safetensors_offsets_past_end(directory: Path) -> Path:
    path = Path(directory) / "offsets_past_end.safetensors"
    header = {"a": _f32_entry(0, 16), "b": _f32_entry(16, 32), **_META}
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    return path


def safetensors_header_not_object(directory: Path) -> Path:
    path = Path(directory) / "header_not_object.safetensors"
    path.write_bytes(safetensors_bytes([1, 2, 3], bytes(16)))
    return path


def safetensors_size_mismatch(directory: Path) -> Path:
    path = Path(directory) / "size_mismatch.safetensors"
    header = {"a": _f32_entry(0, 12), **_META}  # 2x2 float32 needs 16 bytes
    path.write_bytes(safetensors_bytes(header, bytes(12)))
    return path


def safetensors_unknown_dtype(directory: Path) -> Path:
    path = Path(directory) / "unknown_dtype.safetensors"
    header = {"a": {"dtype": "Q7", "shape": [2, 2], "data_offsets": [0, 16]}, **_META}
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    return path


# --------------------------------------------------------------------------- registries

Builder = Callable[[Path], Path]

# (builder, substring the one-line error must contain besides the file name, or None)
BAD_INPUTS: list[tuple[Builder, str | None]] = [
    (empty_file, None),
    (random_bytes, None),
    (text_named_pth, None),
    (truncated_zip, None),
    (zip_without_data_pkl, None),
    (folder_without_checkpoint, None),
    (missing_path, None),
    (safetensors_absurd_header_len, None),
    (safetensors_broken_json, None),
    (safetensors_overlapping_offsets, None),
    (safetensors_offsets_past_end, None),
    (safetensors_header_not_object, None),
    (safetensors_size_mismatch, None),
    (safetensors_unknown_dtype, "Q7"),
]

# Hostile torch zips holding real tensors `weight` (3x4) and `bias` (3) plus an `evil` entry.
# Each with the refused global it must report: (accepted spellings, dangerous).
# Spellings: as recorded in the file, or after torch's py2 -> py3 name mapping.
HOSTILE_ZIPS: list[tuple[Builder, tuple[str, ...], bool]] = [
    (zip_os_system, ("posix.system",), True),
    (zip_exec, ("__builtin__.exec", "builtins.exec"), True),
    (zip_eval, ("__builtin__.eval", "builtins.eval"), True),
    (zip_popen, ("commands.Popen", "subprocess.Popen"), True),
    (zip_import_side_effect, (f"{EVIL_MODULE}.Thing",), False),
]

# Other hostile files (not torch zips): plain pickles and a legacy torch file.
HOSTILE_OTHER: list[tuple[Builder, tuple[str, ...], bool]] = [
    (pickle_os_system, ("posix.system",), True),
    (pickle_protocol0_system, ("posix.system",), True),
    (legacy_os_system, ("posix.system",), True),
]
