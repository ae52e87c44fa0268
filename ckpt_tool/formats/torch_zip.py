"""torch's zip format: the directory, `data.pkl` and where each storage's bytes lie."""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ckpt_tool.errors import UnreadableCheckpoint

ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


@dataclass
class ZipIndex:
    """The members of a torch zip archive: names, sizes, and data offsets on demand."""

    path: Path
    prefix: str
    members: dict[str, zipfile.ZipInfo]
    byteorder: str = "little"
    _offsets: dict[str, int | None] = field(default_factory=dict)

    def storage_member(self, key: str) -> zipfile.ZipInfo | None:
        return self.members.get(f"{self.prefix}/data/{key}")

    def data_offset(self, info: zipfile.ZipInfo) -> int:
        """Absolute offset of a STORED member's bytes (from its 30-byte local header)."""
        if not self._offsets:
            self._offsets = self._read_local_headers()
        offset = self._offsets.get(info.filename)
        if offset is None:
            raise UnreadableCheckpoint(
                f"{self.path}: member {info.filename} has a corrupt local header"
            )
        return offset

    def _read_local_headers(self) -> dict[str, int | None]:
        """Every member's data offset (None where its header is corrupt), through one
        descriptor: a checkpoint can hold thousands of members."""
        offsets: dict[str, int | None] = {}
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for name, info in self.members.items():
                header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
                if len(header) != _LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
                    offsets[name] = None  # refused when that member is read, not before
                    continue
                name_len, extra_len = struct.unpack("<2H", header[26:30])
                offsets[name] = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        finally:
            os.close(fd)
        return offsets


def open_zip_index(path: Path) -> tuple[ZipIndex, bytes]:
    """Read the zip directory once, apply torch's layout rules, and return data.pkl's bytes.

    Refuses what torch would misread: duplicate names, compressed members, no data.pkl.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            index = _index(path, infos)
            data_pkl = zf.read(f"{index.prefix}/data.pkl")  # checks its CRC-32
            order = index.members.get(f"{index.prefix}/byteorder")
            if order is not None:
                index.byteorder = zf.read(order).decode("ascii", "replace").strip() or "little"
    except zipfile.BadZipFile as exc:
        raise UnreadableCheckpoint(
            f"{path}: damaged zip archive ({exc}); the file is probably truncated or corrupt"
        ) from None
    except (OSError, ValueError, EOFError) as exc:
        raise UnreadableCheckpoint(f"{path}: cannot read the zip archive ({exc})") from None
    if index.byteorder != "little":
        raise UnreadableCheckpoint(
            f"{path}: saved on a {index.byteorder}-endian machine; not supported yet"
        )
    return index, data_pkl


def _index(path: Path, infos: list[zipfile.ZipInfo]) -> ZipIndex:
    if not infos:
        raise UnreadableCheckpoint(f"{path}: empty zip archive, not a torch checkpoint")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.filename in members:
            raise UnreadableCheckpoint(
                f"{path}: zip holds the member {info.filename!r} twice; readers disagree on "
                "which one counts, so we refuse it"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnreadableCheckpoint(
                f"{path}: member {info.filename!r} is compressed; torch checkpoints store "
                "members uncompressed (was the file re-zipped?)"
            )
        members[info.filename] = info
    prefix = infos[0].filename.split("/", 1)[0]
    if f"{prefix}/data.pkl" not in members:
        pkl = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise UnreadableCheckpoint(
                f"{path}: zip archive without a data.pkl record: not a torch checkpoint"
            )
        prefix = pkl[0].split("/", 1)[0]
    return ZipIndex(path, prefix, members)


def is_torchscript(index: ZipIndex) -> bool:
    return f"{index.prefix}/constants.pkl" in index.members or any(
        n.startswith(f"{index.prefix}/code/") for n in index.members
    )
