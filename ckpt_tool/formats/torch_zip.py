"""Zip archives as torch reads them: the directory, every local header, member bytes.

torch's reader (miniz) finds a record through the central directory, takes its data offset
from the local header's own name and extra lengths, and takes the archive's folder from the
first directory entry. Python's zipfile (what most scanners use) also shifts every offset when
bytes precede the archive, and checks local names. Wherever the two could read different bytes
for one name, `read_zip` reports an ambiguity instead of choosing.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import UnreadableCheckpoint

ZIP_MAGIC = b"PK\x03\x04"
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_DESCRIPTOR = b"PK\x07\x08"
_LOCAL = struct.Struct("<4sHHHHHLLLHH")  # sig, version, flags, method, time, date, crc, sizes, lens
STORED, DEFLATED = 0, 8  # compression methods
MAX_INFLATED = 1 << 28  # a pickle member inflated past 256 MB is refused (zip bombs)


def deflated_by_torchscript(name: str) -> bool:
    """Members torch.jit.save deflates; everywhere else torch stores members uncompressed."""
    return "/code/" in name or name.endswith(".debug_pkl")


@dataclass
class ZipIndex:
    """The members of a zip archive: names, sizes, data offsets, and torch's folder prefix."""

    path: Path
    prefix: str
    members: dict[str, Member]
    offsets: dict[str, int] = field(default_factory=dict)  # member -> absolute data offset
    byteorder: str = "little"

    def storage_member(self, key: str) -> Member | None:
        """The record of a storage key: `data/KEY`, or a folder named in the key itself
        (`constants/0` for TorchScript's constants, `data/weights/weight_0` in .pt2)."""
        if "/" in key:
            return self.members.get(f"{self.prefix}/{key}")
        return self.members.get(f"{self.prefix}/data/{key}")

    def data_offset(self, info: Member) -> int:
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
    infos: list[Member]
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


class DirectoryError(Exception):
    """A central directory that cannot be read."""


class Member:
    """One central directory entry, with the fields (and names) of `Member`."""

    __slots__ = (
        "CRC",
        "compress_size",
        "compress_type",
        "file_size",
        "filename",
        "flag_bits",
        "header_offset",
        "orig_filename",
    )

    def __init__(
        self,
        orig_filename: str,
        flag_bits: int,
        compress_type: int,
        crc: int,
        compress_size: int,
        file_size: int,
        header_offset: int,
    ) -> None:
        self.orig_filename = orig_filename
        null = orig_filename.find("\0")
        self.filename = orig_filename if null < 0 else orig_filename[:null]
        self.flag_bits = flag_bits
        self.compress_type = compress_type
        self.CRC = crc
        self.compress_size = compress_size
        self.file_size = file_size
        self.header_offset = header_offset


# the fixed 46 bytes of a directory entry, the fields read here: signature, extract version,
# flags, method, CRC, sizes, name/extra/comment lengths, local header offset
_CENTRAL = struct.Struct("<4s2xBxHH4x3L3H8xL")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR = struct.Struct("<4sLQL")
_CENTRAL_SIG = b"PK\x01\x02"
MAX_EXTRACT_VERSION = 63


def _end_record(buf: Any) -> tuple[int, int, int, bool]:
    """(record offset, directory size, directory offset, zip64) located as zipfile does."""
    size = len(buf)
    if size < 22:
        raise DirectoryError("File is not a zip file")
    tail = bytes(buf[size - 22 :])
    if tail[:4] == _EOCD and tail[-2:] == b"\0\0":
        pos = size - 22
    else:
        search_from = max(size - (1 << 16) - 22, 0)
        pos = buf.rfind(_EOCD, search_from, size)
        if pos < 0 or pos + 22 > size:
            raise DirectoryError("File is not a zip file")
    (_, _, _, _, _, cd_size, cd_offset, _) = _END.unpack_from(buf, pos)
    loc = pos - 20
    if loc >= 0:
        sig, disk, _, disks = _LOCATOR.unpack_from(buf, loc)
        if sig == _EOCD64_LOCATOR:
            if disk != 0 or disks > 1:
                raise DirectoryError("zipfiles that span multiple disks are not supported")
            rec = loc - 56
            if rec < 0:
                raise DirectoryError("File is not a zip file")
            if bytes(buf[rec : rec + 4]) == _EOCD64:
                fields = _END64.unpack_from(buf, rec)
                return pos, fields[8], fields[9], True
    return pos, cd_size, cd_offset, False


def read_directory(buf: Any) -> list[Member]:
    """The central directory, entry by entry, exactly as Python's zipfile reads it (the same
    end-record search, zip64 fields, name decoding and offset shift), without its per-entry
    overhead: a 100,000-member archive reads in a fraction of zipfile's time."""
    pos, cd_size, cd_offset, zip64 = _end_record(buf)
    concat = pos - cd_size - cd_offset - (76 if zip64 else 0)
    start = cd_offset + concat
    if start < 0:
        raise DirectoryError("Bad offset for central directory")
    data = bytes(buf[start : start + cd_size])
    out: list[Member] = []
    unpack = _CENTRAL.unpack_from
    at = 0
    while at < cd_size:
        if at + 46 > len(data):
            raise DirectoryError("Truncated central directory")
        sig, version, flags, method, crc, csize, usize, nlen, elen, clen, offset = unpack(data, at)
        if sig != _CENTRAL_SIG:
            raise DirectoryError("Bad magic number for central directory")
        if version > MAX_EXTRACT_VERSION:
            raise DirectoryError(f"zip file version {version / 10:.1f}")
        name_at = at + 46
        raw = data[name_at : name_at + nlen]
        name = raw.decode("utf-8") if flags & 0x800 else raw.decode("cp437")
        if elen:
            usize, csize, offset = _zip64_fields(
                data[name_at + nlen : name_at + nlen + elen], usize, csize, offset
            )
        out.append(Member(name, flags, method, crc, csize, usize, offset + concat))
        at = name_at + nlen + elen + clen
    return out


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset from a zip64 extra field, as `Member._decodeExtra` reads them."""
    while len(extra) >= 4:
        tp, ln = struct.unpack_from("<HH", extra)
        if ln + 4 > len(extra):
            raise DirectoryError(f"Corrupt extra field {tp:04x} (size={ln})")
        if tp == 0x0001:
            data = extra[4 : ln + 4]
            field = ""
            try:
                if usize in (0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF):
                    field = "File size"
                    (usize,) = struct.unpack("<Q", data[:8])
                    data = data[8:]
                if csize == 0xFFFF_FFFF:
                    field = "Compress size"
                    (csize,) = struct.unpack("<Q", data[:8])
                    data = data[8:]
                if offset == 0xFFFF_FFFF:
                    field = "Header offset"
                    (offset,) = struct.unpack("<Q", data[:8])
            except struct.error:
                raise DirectoryError(f"Corrupt zip64 extra field. {field} not found.") from None
        extra = extra[ln + 4 :]
    return usize, csize, offset


def read_zip(buf: Any, path: Path) -> ZipRead:
    """Read the directory and every local header; refuse what no reader can open."""
    try:
        infos = read_directory(buf)
    except (DirectoryError, UnicodeDecodeError, struct.error) as exc:
        raise UnreadableCheckpoint(
            f"{path}: damaged zip archive ({exc}); the file is probably truncated or corrupt"
        ) from None
    if not infos:
        raise UnreadableCheckpoint(f"{path}: empty zip archive, not a checkpoint")
    members: dict[str, Member] = {}
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


def _torch_prefix(infos: list[Member]) -> str:
    """The folder torch looks in: the first directory entry's, up to its first slash."""
    first = infos[0].filename
    return first.split("/", 1)[0] if "/" in first else ""


def _raw_name(info: Member) -> bytes:
    """The name's bytes as the directory writes them (decoding them is exact both ways)."""
    try:
        return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    except UnicodeEncodeError:
        return info.orig_filename.encode("utf-8")


RELEASE_STEP = 16 << 20  # mapped bytes checked before their pages are handed back


def _local_headers(
    buf: Any,
    infos: list[Member],
    index: ZipIndex,
    ambiguities: list[tuple[str, int | None]],
    damage: list[tuple[str, str | None]],
) -> Extents:
    """Check every local header against its directory entry; returns each entry's extent.

    Walking the headers of a file of many small tensors touches every page of it: the pages
    already checked are handed back to the page cache as the walk goes on (madvise), so they
    do not count in this process's memory."""
    size = len(buf)
    extents = Extents()
    release = getattr(buf, "madvise", None) if isinstance(buf, mmap.mmap) else None
    released = 0
    for info in infos:
        off = info.header_offset
        if off < 0 or off + 30 > size:
            damage.append((f"member {info.filename!r}: local header past the end", info.filename))
            continue
        if release is not None and off - released >= RELEASE_STEP:
            upto = off - off % mmap.PAGESIZE
            release(mmap.MADV_DONTNEED, released, upto - released)
            released = upto
        sig, _, flags, method, _, _, crc, csize, usize, nlen, elen = _LOCAL.unpack_from(buf, off)
        if sig != ZIP_MAGIC:
            damage.append((f"member {info.filename!r} has a corrupt local header", info.filename))
            continue
        raw_name = buf[off + 30 : off + 30 + nlen]
        start = off + 30 + nlen + elen
        if raw_name != _raw_name(info):
            ambiguities.append(
                (
                    f"the directory names {info.filename!r} but its local header names "
                    f"{bytes(raw_name).decode('utf-8', 'replace')!r}: torch reads the bytes "
                    "anyway, other readers refuse or read another entry",
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
        extents.add(off, end)
    return extents


class Extents:
    """(start, end) of every member in two flat integer arrays (a tuple per member would cost
    more than the member itself on a 100,000-tensor file), and whether they came in order."""

    def __init__(self) -> None:
        self.starts = array("q")
        self.ends = array("q")
        self.ordered = True

    def add(self, start: int, end: int) -> None:
        if self.starts and start < self.starts[-1]:
            self.ordered = False
        self.starts.append(start)
        self.ends.append(end)

    def in_order(self) -> Iterator[tuple[int, int]]:
        pairs = zip(self.starts, self.ends, strict=True)
        return iter(pairs) if self.ordered else iter(sorted(pairs))


def _check_coverage(
    buf: Any, extents: Extents, cd_start: int, out: list[tuple[str, int | None]]
) -> None:
    """Members must tile the archive: an overlap or a hidden local header between them lets a
    reader that walks local headers see a different archive than the directory describes."""
    cursor = 0
    for start, end in extents.in_order():
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
    buf: Any, read: ZipRead, info: Member, limit: int = MAX_INFLATED
) -> tuple[bytes, bool]:
    """A member's bytes (stored, or deflated as TorchScript and numpy write them), and whether
    they match its CRC-32 (torch does not check it, so a mismatch is damage, not a reason to
    look away)."""
    start = read.index.data_offset(info)
    raw = buf[start : start + info.compress_size]
    if info.compress_type == STORED:
        data = bytes(raw)
    elif info.compress_type == DEFLATED:
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
