"""A minimal zip writer for torch archives: STORED members, 64-byte aligned data, zip64, and
member bytes copied by the kernel (`os.copy_file_range`) when they come from another file."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

ALIGN = 64
PAGE = 4096
# Copied members at least this large start at the same offset within a page as their source:
# the kernel then copies whole pages (about 15% faster here) for at most 4 KB of padding.
PAGE_MATCH_MIN = 1 << 20
SMALL_COPY = 64 << 10  # members up to this size are read and written, not kernel-copied
_U32 = 0xFFFFFFFF
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR = struct.Struct("<IIQI")
_FLAGS = 0x0800  # names are UTF-8
_DOS_DATE = 0x21  # 1980-01-01, as torch writes


@dataclass
class Member:
    name: str
    header_offset: int
    size: int
    crc: int
    data_offset: int = 0


def copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """Copy `size` bytes from fd `src` at `offset` to fd `dst` at its position, in the kernel."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, min(size - done, 1 << 30), offset + done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        # Filesystems or kernels without it fall through to a plain copy.
        if done or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < size:
        chunk = os.pread(src, min(size - done, 16 << 20), offset + done)
        if not chunk:
            raise OSError(errno.EIO, "source ended before the expected bytes")
        view = memoryview(chunk)
        while view:
            written = os.write(dst, view)
            view = view[written:]
        done += len(chunk)


class ZipWriter:
    """Writes a zip archive member by member to a seekable binary file."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.members: list[Member] = []

    def _local_header(
        self, name: bytes, size: int, crc: int, page_offset: int | None = None
    ) -> int:
        """Write a local header padded so data starts on a 64-byte boundary (and at
        `page_offset` within a page, when given); return its offset."""
        offset = self.f.tell()
        zip64 = size >= _U32
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        base = offset + _LOCAL.size + len(name) + len(extra) + 4
        pad = (-base) % ALIGN if page_offset is None else (page_offset - base) % PAGE
        extra += struct.pack("<HH", 0x4246, pad) + b"\0" * pad  # "FB" padding, as torch does
        self.f.write(
            _LOCAL.pack(
                0x04034B50,
                45 if zip64 else 20,
                _FLAGS,
                0,
                0,
                _DOS_DATE,
                crc,
                _U32 if zip64 else size,
                _U32 if zip64 else size,
                len(name),
                len(extra),
            )
        )
        self.f.write(name)
        self.f.write(extra)
        return offset

    def add_bytes(self, name: str, data: bytes) -> Member:
        raw = name.encode("utf-8")
        crc = zlib.crc32(data)
        offset = self._local_header(raw, len(data), crc)
        self.f.write(data)
        return self._record(name, offset, len(data), crc)

    def add_copy(self, name: str, src_fd: int, src_offset: int, size: int, crc: int) -> Member:
        """A member whose bytes are copied from another file; `crc` is known (e.g. the source's)."""
        if size <= SMALL_COPY:
            # a read and a buffered write: a kernel copy costs a flush and three seeks, which
            # dominate for the tiny tensors of a 100,000-tensor file
            data = os.pread(src_fd, size, src_offset)
            if len(data) != size:
                raise OSError(errno.EIO, "source ended before the expected bytes")
            raw = name.encode("utf-8")
            offset = self._local_header(raw, size, crc)
            self.f.write(data)
            return self._record(name, offset, size, crc)
        raw = name.encode("utf-8")
        in_page = src_offset % PAGE
        match = size >= PAGE_MATCH_MIN and in_page % ALIGN == 0
        offset = self._local_header(raw, size, crc, in_page if match else None)
        self.f.flush()
        start = self.f.tell()
        os.lseek(self.f.fileno(), start, os.SEEK_SET)
        copy_range(src_fd, self.f.fileno(), src_offset, size)
        self.f.seek(start + size)
        return self._record(name, offset, size, crc)

    def begin_stream(self, name: str, size: int) -> tuple[int, bytes]:
        """Start a member whose bytes the caller writes (exactly `size`); finish with end_stream."""
        raw = name.encode("utf-8")
        return self._local_header(raw, size, 0), raw

    def end_stream(self, name: str, offset: int, size: int, crc: int) -> Member:
        end = self.f.tell()
        self.f.seek(offset + 14)
        self.f.write(struct.pack("<I", crc))
        self.f.seek(end)
        return self._record(name, offset, size, crc)

    def _record(self, name: str, offset: int, size: int, crc: int) -> Member:
        m = Member(name, offset, size, crc, self.f.tell() - size)  # data was written last
        self.members.append(m)
        return m

    def close(self) -> None:
        cd_start = self.f.tell()
        for m in self.members:
            raw = m.name.encode("utf-8")
            extra_fields: list[int] = []
            if m.size >= _U32:
                extra_fields += [m.size, m.size]
            if m.header_offset >= _U32:
                extra_fields.append(m.header_offset)
            extra = (
                struct.pack("<HH", 1, 8 * len(extra_fields))
                + struct.pack(f"<{len(extra_fields)}Q", *extra_fields)
                if extra_fields
                else b""
            )
            big = m.size >= _U32
            self.f.write(
                _CENTRAL.pack(
                    0x02014B50,
                    45,
                    45 if extra else 20,
                    _FLAGS,
                    0,
                    0,
                    _DOS_DATE,
                    m.crc,
                    _U32 if big else m.size,
                    _U32 if big else m.size,
                    len(raw),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    _U32 if m.header_offset >= _U32 else m.header_offset,
                )
            )
            self.f.write(raw)
            self.f.write(extra)
        cd_end = self.f.tell()
        cd_size = cd_end - cd_start
        n = len(self.members)
        if n >= 0xFFFF or cd_start >= _U32 or cd_size >= _U32:
            self.f.write(_EOCD64.pack(0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
            self.f.write(_LOCATOR.pack(0x07064B50, 0, cd_end, 1))
        self.f.write(
            _EOCD.pack(
                0x06054B50,
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                min(cd_size, _U32),
                min(cd_start, _U32),
                0,
            )
        )
