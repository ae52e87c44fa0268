"""torch's legacy (pre-zip) format and plain pickles: several pickles in a row, then raw bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ckpt_tool.errors import UnreadableCheckpoint

from .safe_pickle import DTYPE_SIZES, GlobalRef, PickleResult, safe_load_stream

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass
class LegacyIndex:
    """Where each storage's bytes lie in a legacy torch file."""

    path: Path
    offsets: dict[str, int] = field(default_factory=dict)  # storage key -> data offset


def read_pickle_file(path: Path) -> tuple[PickleResult, LegacyIndex | None]:
    """Read a legacy torch file (magic number first) or a plain pickle."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = safe_load_stream(f, str(path))
        if first.root != LEGACY_MAGIC:
            return first, None
        what = f"{path} (legacy torch format)"
        protocol = safe_load_stream(f, what)
        if protocol.root != 1001:
            raise UnreadableCheckpoint(f"{what}: unsupported protocol {protocol.root!r:.20}")
        safe_load_stream(f, what)  # sys_info: byte order and type sizes
        main = safe_load_stream(f, what)
        keys = safe_load_stream(f, what).root
        if not isinstance(keys, list):
            raise UnreadableCheckpoint(f"{what}: storage key list is missing")
        index = LegacyIndex(path)
        for key in keys:
            ref = main.storages.get(str(key))
            header = f.read(8)
            if len(header) != 8 or ref is None:
                raise UnreadableCheckpoint(f"{what}: storage {key} is missing or truncated")
            (numel,) = struct.unpack("<q", header)
            nbytes = numel * DTYPE_SIZES.get(ref.dtype, 1)
            start = f.tell()
            if numel < 0 or numel != ref.numel or start + nbytes > size:
                raise UnreadableCheckpoint(
                    f"{what}: storage {key} claims {numel} elements but the file is too short"
                )
            index.offsets[str(key)] = start
            f.seek(nbytes, 1)
    _merge_globals(main, first, protocol)
    return main, index


def _merge_globals(into: PickleResult, *others: PickleResult) -> None:
    for other in others:
        for name, ref in other.globals.items():
            into.globals.setdefault(name, GlobalRef(name, ref.kind, 0)).count += ref.count
