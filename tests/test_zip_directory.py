"""Our central directory reader against Python's zipfile: the same members, fields and offset
shift on real archives, and the same accept/refuse decision on damaged ones."""

from __future__ import annotations

import io
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from ckpt_tool.formats import torch_zip

FIELDS = ("filename", "orig_filename", "header_offset", "flag_bits", "compress_type", "CRC")
SIZES = ("compress_size", "file_size")


def _zipfile_view(data: bytes) -> list[tuple[object, ...]] | None:
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, struct.error, NotImplementedError):
        return None
    return [tuple(getattr(i, f) for f in FIELDS + SIZES) for i in infos]


def _our_view(data: bytes) -> list[tuple[object, ...]] | None:
    try:
        members = torch_zip.read_directory(data)
    except (torch_zip.DirectoryError, UnicodeDecodeError, struct.error):
        return None
    return [tuple(getattr(m, f) for f in FIELDS + SIZES) for m in members]


def _torch_file(tmp_path: Path, n: int = 12) -> bytes:
    path = tmp_path / "t.pth"
    torch.manual_seed(0)
    torch.save({f"layer{i}.weight": torch.randn(3, 2) for i in range(n)}, path)
    return path.read_bytes()


def _zip(members: dict[str, bytes], **kwargs: object) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", **kwargs) as z:  # type: ignore[arg-type]
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _zip64(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", allowZip64=True) as z:
        for name, data in members.items():
            with z.open(name, "w", force_zip64=True) as f:
                f.write(data)
    return out.getvalue()


def _cases(tmp_path: Path) -> dict[str, bytes]:
    torch_bytes = _torch_file(tmp_path)
    plain = _zip({"a/data.pkl": b"\x80\x02}q\x00.", "a/data/0": b"\x00" * 16})
    return {
        "torch.save": torch_bytes,
        "zipfile": plain,
        "deflated": _zip({"x/code/m.py": b"print(1)\n" * 50}, compression=zipfile.ZIP_DEFLATED),
        "utf-8 names": _zip({"模型/data.pkl": b"\x80\x02N.", "é/data/0": b"1234"}),
        "zip64 fields": _zip64({"z/data.pkl": b"\x80\x02N.", "z/data/0": b"\x01" * 40}),
        "comment": plain[:-2] + struct.pack("<H", 5) + b"hello",
        "bytes before": b"JUNK" * 100 + plain,
        "bytes after": plain + b"trailing",
        "nul in name": plain.replace(b"a/data/0", b"a/d\x00ta/0"),
        "truncated directory": plain[:-30],
        "empty": b"",
        "not a zip": b"\x80\x02}q\x00." * 10,
        "no directory": plain[: plain.rfind(b"PK\x01\x02")],
    }


def test_same_members_as_zipfile(tmp_path: Path) -> None:
    for label, data in _cases(tmp_path).items():
        ours, theirs = _our_view(data), _zipfile_view(data)
        assert ours == theirs, label


def test_many_members_read(tmp_path: Path) -> None:
    data = _torch_file(tmp_path, n=3000)
    members = torch_zip.read_directory(data)
    assert len(members) == len(zipfile.ZipFile(io.BytesIO(data)).infolist())
    assert _our_view(data) == _zipfile_view(data)


@pytest.mark.parametrize("seed", range(4))
def test_damaged_directories_decided_alike(tmp_path: Path, seed: int) -> None:
    """Random byte changes in the directory and end record: both readers accept (with the
    same fields) or both refuse."""
    base = _torch_file(tmp_path)
    cd = base.find(b"PK\x01\x02")
    rng = random.Random(seed)
    disagreements = []
    for trial in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(cd, len(data))
            data[at] = rng.randrange(256)
        ours, theirs = _our_view(bytes(data)), _zipfile_view(bytes(data))
        if ours != theirs:
            disagreements.append(trial)
    assert disagreements == []


def test_read_zip_refuses_damage_in_one_line(tmp_path: Path) -> None:
    from ckpt_tool.errors import UnreadableCheckpoint

    data = _cases(tmp_path)["truncated directory"]
    with pytest.raises(UnreadableCheckpoint, match="damaged zip archive"):
        torch_zip.read_zip(data, tmp_path / "x.pth")
