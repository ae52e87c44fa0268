"""Zip archives as torch reads them: the directory, every local header, member bytes.

torch's reader (miniz) finds a record through the central directory, takes its data offset
from the local header's own name and extra lengths, and takes the archive's folder from the
first directory entry. Python's zipfile (what most scanners use) also shifts every offset when
bytes precede the archive, and checks local names. Wherever the two could read different bytes
for one name, `read_zip` reports an ambiguity instead of choosing.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import UnreadableCheckpoint

from .safe_pickle import BufferStream

ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_DESCRIPTOR = b"PK\x07\x08"
_LOCAL = struct.Struct("<4sHHHHHLLLHH")  # sig, version, flags, method, time, date, crc, sizes, lens
MAX_INFLATED = 1 << 28  # a pickle member inflated past 256 MB is refused (zip bombs)


def deflated_by_torchscript(name: str) -> bool:
    """Members torch.jit.save deflates; everywhere else torch stores members uncompressed."""
    return "/code/" in name or name.endswith(".debug_pkl")


@dataclass
class ZipIndex:
    """The members of a zip archive: names, sizes, data offsets, and torch's folder prefix."""

    path: Path
    prefix: str
    members: dict[str, zipfile.ZipInfo]
    offsets: dict[str, int] = field(default_factory=dict)  # member -> absolute data offset
    byteorder: str = "little"

    def storage_member(self, key: str) -> zipfile.ZipInfo | None:
        """The record of a storage key: `data/KEY`, or a folder named in the key itself
        (`constants/0` for TorchScript's constants, `data/weights/weight_0` in .pt2)."""
        if "/" in key:
            return self.members.get(f"{self.prefix}/{key}")
        return self.members.get(f"{self.prefix}/data/{key}")

    def data_offset(self, info: zipfile.ZipInfo) -> int:
        """Absolute offset of a member's bytes (from its local header)."""
        offset = self.offsets.get(info.filename)
        if offset is None:
            raise UnreadableCheckpoint(
                f"{self.path}: member {info.filename} has a corrupt local header"
            )
        return offset

    def has(self, name: str) -> bool:
        return f"{self.prefix}/{name}" in self.members


@dataclass
class ZipRead:
    """A zip's directory read the way torch reads it, and what stood out."""

    index: ZipIndex
    infos: list[zipfile.ZipInfo]
    ambiguities: list[tuple[str, int | None]]  # (message, offset): readers could disagree
    damage: list[tuple[str, str | None]]  # (message, member): unreadable parts
    trailing: int = 0  # bytes after the end-of-directory record (its comment included)
    end: int = 0  # where the archive ends (the end-of-directory record's end)


@dataclass
class _End:
    pos: int  # offset of the end-of-central-directory record
    cd_offset: int
    cd_size: int
    end: int  # offset just past the record and its comment
    zip64: bool


def find_end(buf: Any) -> _End | None:
    """The end-of-central-directory record, searched from the end as both readers do."""
    size = len(buf)
    start = max(0, size - (22 + 65535))
    pos = buf.rfind(_EOCD, start, size)
    while pos >= 0:
        if pos + 22 <= size:
            (_, _, _, _, _, cd_size, cd_offset, comment_len) = struct.unpack_from(
                "<4s4H2LH", buf, pos
            )
            end = pos + 22 + comment_len
            zip64 = False
            if pos >= 20:  # a zip64 locator is used when present, as zipfile does
                loc = pos - 20
                if bytes(buf[loc : loc + 4]) == _EOCD64_LOCATOR:
                    (rec,) = struct.unpack_from("<Q", buf, loc + 8)
                    if rec + 56 <= size and bytes(buf[rec : rec + 4]) == _EOCD64:
                        cd_size, cd_offset = struct.unpack_from("<QQ", buf, rec + 40)
                        zip64 = True
            if end <= size:
                return _End(pos, cd_offset, cd_size, end, zip64)
        pos = buf.rfind(_EOCD, start, pos)
    return None


def embedded_zip(buf: Any) -> int | None:
    """Where a zip archive sits inside a file that does not start with one (a polyglot), if a
    genuine end record and a central directory entry are where they say."""
    end = find_end(buf)
    if end is None:
        return None
    directory_end = end.pos - (76 if end.zip64 else 0)
    cd = directory_end - end.cd_size
    if cd <= 0 or bytes(buf[cd : cd + 4]) != b"PK\x01\x02":
        return None
    return cd - end.cd_offset if cd - end.cd_offset >= 0 else None


def read_zip(buf: Any, path: Path) -> ZipRead:
    """Read the directory and every local header; refuse what no reader can open."""
    try:
        infos = zipfile.ZipFile(BufferStream(buf)).infolist()  # type: ignore[arg-type]
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, struct.error) as exc:
        raise UnreadableCheckpoint(
            f"{path}: damaged zip archive ({exc}); the file is probably truncated or corrupt"
        ) from None
    if not infos:
        raise UnreadableCheckpoint(f"{path}: empty zip archive, not a checkpoint")
    members: dict[str, zipfile.ZipInfo] = {}
    ambiguities: list[tuple[str, int | None]] = []
    damage: list[tuple[str, str | None]] = []
    for info in infos:
        if info.filename in members:
            ambiguities.append(
                (
                    f"the zip holds {info.filename!r} more than once; readers disagree on which "
                    "one counts (torch's reader picks by binary search)",
                    info.header_offset,
                )
            )
        members.setdefault(info.filename, info)
    end = find_end(buf)
    index = ZipIndex(path, _torch_prefix(infos), members)
    read = ZipRead(index, infos, ambiguities, damage)
    if end is not None:
        directory_end = end.pos - (76 if end.zip64 else 0)
        shift = directory_end - end.cd_size - end.cd_offset
        if shift:
            ambiguities.append(
                (
                    f"the directory's offsets are {shift} bytes off (data before the archive): "
                    "Python's zipfile shifts them, torch's reader does not",
                    0,
                )
            )
        read.end = end.end
        read.trailing = len(buf) - end.end
        cd_start = directory_end - end.cd_size
    else:
        cd_start = len(buf)
    extents = _local_headers(buf, infos, index, ambiguities, damage)
    _check_coverage(buf, extents, cd_start, ambiguities)
    return read


def _torch_prefix(infos: list[zipfile.ZipInfo]) -> str:
    """The folder torch looks in: the first directory entry's, up to its first slash."""
    first = infos[0].filename
    return first.split("/", 1)[0] if "/" in first else ""


def _local_headers(
    buf: Any,
    infos: list[zipfile.ZipInfo],
    index: ZipIndex,
    ambiguities: list[tuple[str, int | None]],
    damage: list[tuple[str, str | None]],
) -> list[tuple[int, int]]:
    """Check every local header against its directory entry; returns each entry's extent."""
    size = len(buf)
    extents: list[tuple[int, int]] = []
    for info in infos:
        off = info.header_offset
        if off < 0 or off + 30 > size:
            damage.append((f"member {info.filename!r}: local header past the end", info.filename))
            continue
        sig, _, flags, method, _, _, crc, csize, usize, nlen, elen = _LOCAL.unpack_from(buf, off)
        if sig != ZIP_MAGIC:
            damage.append((f"member {info.filename!r} has a corrupt local header", info.filename))
            continue
        raw_name = bytes(buf[off + 30 : off + 30 + nlen])
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        try:
            expected = info.orig_filename.encode(encoding)
        except UnicodeEncodeError:
            expected = info.orig_filename.encode("utf-8")
        start = off + 30 + nlen + elen
        if raw_name != expected:
            ambiguities.append(
                (
                    f"the directory names {info.filename!r} but its local header names "
                    f"{raw_name.decode('utf-8', 'replace')!r}: torch reads the bytes anyway, "
                    "other readers refuse or read another entry",
                    off,
                )
            )
        if method != info.compress_type:
            ambiguities.append(
                (
                    f"member {info.filename!r}: the directory and its local header disagree "
                    "about compression",
                    off,
                )
            )
        sized = not flags & 0x08 and 0xFFFFFFFF not in (csize, usize)
        if sized and (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
            ambiguities.append(
                (
                    f"member {info.filename!r}: the directory and its local header give "
                    "different sizes or CRC; readers that walk local headers read other "
                    "bytes",
                    off,
                )
            )
        end = start + info.compress_size
        if end > size:
            damage.append(
                (
                    f"member {info.filename!r}: its data runs past the end of the archive "
                    "(truncated file?)",
                    info.filename,
                )
            )
            continue
        if flags & 0x08:  # a data descriptor follows the data
            end += 4 if bytes(buf[end : end + 4]) == _DESCRIPTOR else 0
            end += 20 if info.file_size >= 0xFFFFFFFF or info.compress_size >= 0xFFFFFFFF else 12
        index.offsets.setdefault(info.filename, start)
        extents.append((off, end))
    return extents


def _check_coverage(
    buf: Any, extents: list[tuple[int, int]], cd_start: int, out: list[tuple[str, int | None]]
) -> None:
    """Members must tile the archive: an overlap or a hidden local header between them lets a
    reader that walks local headers see a different archive than the directory describes."""
    cursor = 0
    for start, end in sorted(extents):
        if start < cursor:
            out.append((f"two members share the bytes at offset {start}", start))
        elif start > cursor:
            _gap(buf, cursor, start, out)
        cursor = max(cursor, end)
    if cd_start > cursor:
        _gap(buf, cursor, cd_start, out)


def _gap(buf: Any, start: int, end: int, out: list[tuple[str, int | None]]) -> None:
    hidden = buf.find(ZIP_MAGIC, start, end)
    if hidden >= 0:
        out.append(
            (
                f"a local header at offset {hidden} belongs to no directory entry: readers that "
                "walk local headers see a member torch does not",
                hidden,
            )
        )


def member_bytes(
    buf: Any, read: ZipRead, info: zipfile.ZipInfo, limit: int = MAX_INFLATED
) -> tuple[bytes, bool]:
    """A member's bytes (stored, or deflated as TorchScript and numpy write them), and whether
    they match its CRC-32 (torch does not check it, so a mismatch is damage, not a reason to
    look away)."""
    start = read.index.data_offset(info)
    raw = buf[start : start + info.compress_size]
    if info.compress_type == zipfile.ZIP_STORED:
        data = bytes(raw)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > limit:
            raise UnreadableCheckpoint(
                f"{read.index.path}: member {info.filename!r} claims {info.file_size} bytes "
                f"inflated, more than the {limit >> 20} MB a pickle may take"
            )
        d = zlib.decompressobj(-15)
        try:
            data = d.decompress(raw, max(info.file_size, 1) + 1)
        except zlib.error as exc:
            raise UnreadableCheckpoint(
                f"{read.index.path}: member {info.filename!r} cannot be decompressed ({exc})"
            ) from None
        if len(data) > info.file_size:
            raise UnreadableCheckpoint(
                f"{read.index.path}: member {info.filename!r} inflates past its declared size"
            )
    else:
        raise UnreadableCheckpoint(
            f"{read.index.path}: member {info.filename!r} is compressed with method "
            f"{info.compress_type}, which torch cannot read"
        )
    return data, zlib.crc32(data) == info.CRC


def is_torchscript(index: ZipIndex) -> bool:
    return index.has("constants.pkl") or any(
        n.startswith(f"{index.prefix}/code/") for n in index.members
    )


def is_torch_export(index: ZipIndex) -> bool:
    return index.has("archive_format") or any(
        n.startswith(f"{index.prefix}/models/") and n.endswith(".json") for n in index.members
    )
