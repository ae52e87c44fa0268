"""Tensor bytes: materialise one tensor at a time from its file location (imports torch)."""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UnreadableCheckpoint, UnsafeCheckpoint
from .formats import dcp
from .formats.safe_pickle import DTYPE_SIZES, TensorRecord, contiguous_stride

# The integers behind a quantized dtype.
INT_OF = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}

if TYPE_CHECKING:
    import torch

    from .checkpoint import Checkpoint, TensorEntry


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UnreadableCheckpoint(f"dtype {name!r} is not supported by this torch")
    return dtype


def pread_exactly(fd: int, buf: Any, offset: int, path: Path) -> None:
    """Fill buf (any writable buffer) from offset, or fail saying the file is short."""
    if os.preadv(fd, [buf], offset) != memoryview(buf).nbytes:
        raise UnreadableCheckpoint(f"{path}: file ended inside a tensor")


class TensorReader:
    """Reads tensors of one checkpoint from memory-mapped files (copy-on-write, never written)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._maps: dict[Path, mmap.mmap] = {}
        self._dcp_batch: dict[str, Any] = {}
        self._dcp_order: list[tuple[str, TensorRecord]] | None = None
        self._dcp_position: dict[str, int] = {}
        self._fds: dict[Path, int] = {}
        self._pieces: dict[str, tuple[dcp.Piece, ...] | None] = {}

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[path]

    def read_record(self, key: str, rec: TensorRecord) -> torch.Tensor:
        """The tensor of a record found under key (DCP items are found by key)."""
        from .checkpoint import TensorEntry

        return self.read(TensorEntry(key, rec, "tensor"))

    def record_ranges(
        self, key: str, rec: TensorRecord, elements: int
    ) -> Iterator[tuple[int, int, int]] | None:
        """(fd, offset, size) of a record's bytes in C order when they lie in files so (the
        writers copy them without torch), else None."""
        from .checkpoint import TensorEntry

        entry = TensorEntry(key, rec, "tensor")
        return self.raw_ranges(entry, elements) if self.file_backed(entry) else None

    def read(self, entry: TensorEntry) -> torch.Tensor:
        """The tensor as torch would load it (on CPU), sharing no memory with other reads."""
        rec = entry.record
        if rec.quant is not None:
            return self._read_quantized(entry)
        return self._read_plain(entry)

    def _read_quantized(self, entry: TensorEntry) -> torch.Tensor:
        """A quantized tensor from its integers and its quantizer parameters, as torch's
        _rebuild_qtensor builds it."""
        import torch

        from .checkpoint import TensorEntry

        rec, q = entry.record, entry.record.quant
        assert q is not None
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        ints = self._read_plain(
            TensorEntry(entry.key, replace(rec, dtype=INT_OF[rec.dtype], quant=None), entry.kind)
        )
        if q.per_channel:
            assert q.scales is not None and q.zero_points is not None
            scales = self._read_plain(TensorEntry(f"{entry.key}.scales", q.scales, "tensor"))
            points = self._read_plain(
                TensorEntry(f"{entry.key}.zero_points", q.zero_points, "tensor")
            )
            return torch._make_per_channel_quantized_tensor(ints, scales, points, q.axis or 0)
        return torch._make_per_tensor_quantized_tensor(ints, q.scale or 0.0, q.zero_point or 0)

    def _read_plain(self, entry: TensorEntry) -> torch.Tensor:
        import torch

        rec = entry.record
        if rec.rebuild == "dcp":
            return self._read_dcp(entry)
        if rec.inline is not None:
            if not rec.inline:
                return torch.empty(rec.shape, dtype=torch_dtype(rec.dtype))
            flat = torch.frombuffer(bytearray(rec.inline), dtype=torch_dtype(rec.dtype))
            return flat.reshape(rec.shape)
        storage = rec.storage
        assert storage is not None
        loc = self.ckpt.locate(storage)
        if storage.nbytes > loc.available:
            raise UnreadableCheckpoint(
                f"{self.ckpt.path}: storage {storage.key} is shorter than the tensor it holds"
            )
        if storage.nbytes == 0 or rec.numel == 0:
            return torch.empty(rec.shape, dtype=torch_dtype(rec.dtype))
        raw = torch.frombuffer(
            self._map(loc.path), dtype=torch.uint8, count=storage.nbytes, offset=loc.offset
        )
        flat = raw.view(torch_dtype(rec.dtype))
        view = flat.as_strided(
            rec.shape,
            rec.stride,
            rec.offset,  # in elements of the tensor's dtype, as torch has it
        )
        return view.clone()

    def view(self, entry: TensorEntry) -> torch.Tensor:
        """Like read, but without the copy when the bytes can be viewed in place (valid until
        close; do not write to it)."""
        import torch

        rec = entry.record
        storage = rec.storage
        plain = rec.quant is None and rec.rebuild != "dcp" and rec.inline is None
        if not plain or storage is None or not rec.numel:
            return self.read(entry)
        loc = self.ckpt.locate(storage)
        if storage.nbytes > loc.available:
            raise UnreadableCheckpoint(
                f"{self.ckpt.path}: storage {storage.key} is shorter than the tensor it holds"
            )
        raw = torch.frombuffer(
            self._map(loc.path), dtype=torch.uint8, count=storage.nbytes, offset=loc.offset
        )
        flat = raw.view(torch_dtype(rec.dtype))
        return flat.as_strided(
            rec.shape,
            rec.stride,
            rec.offset,  # in elements of the tensor's dtype, as torch has it
        )

    def file_backed(self, entry: TensorEntry) -> bool:
        """True when the tensor's bytes lie in files in C order (pread-able): one contiguous
        run, or a DCP tensor's plain chunks."""
        rec = entry.record
        if rec.rebuild == "dcp":
            return rec.numel > 0 and rec.quant is None and self.dcp_pieces(entry) is not None
        contiguous = rec.stride == contiguous_stride(rec.shape) or rec.numel <= 1
        return (
            rec.storage is not None
            and rec.inline is None
            and rec.quant is None
            and rec.rebuild != "dcp"
            and contiguous
            and rec.numel > 0
        )

    def raw_ranges(self, entry: TensorEntry, elements: int) -> Iterator[tuple[int, int, int]]:
        """(fd, offset, size) of a file-backed tensor's bytes, `elements` at a time; the fd
        stays open until close, and pread on it is safe from any thread."""
        rec = entry.record
        pieces = self.dcp_pieces(entry)
        if pieces is not None:
            size = DTYPE_SIZES[rec.dtype]
            step = elements * size
            for piece in pieces:
                fd = self._fd(piece.path)
                for first in range(0, piece.nbytes, step):
                    yield fd, piece.offset + first, min(step, piece.nbytes - first)
            return
        storage = rec.storage
        assert storage is not None and self.file_backed(entry)
        loc = self.ckpt.locate(storage)
        size = DTYPE_SIZES[rec.dtype]
        start = loc.offset + rec.offset * size
        if rec.offset * size + rec.nbytes > loc.available:
            raise UnreadableCheckpoint(
                f"{self.ckpt.path}: storage {storage.key} is shorter than the tensor it holds"
            )
        fd = self._fd(loc.path)
        for first in range(0, rec.numel, elements):
            yield fd, start + first * size, min(elements, rec.numel - first) * size

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def raw_chunks(self, entry: TensorEntry, elements: int) -> Iterator[bytearray]:
        """The bytes of a file-backed tensor, `elements` at a time, read with pread: memory
        stays at one chunk whatever the tensor's size, and torch is not needed."""
        for fd, offset, size in self.raw_ranges(entry, elements):
            buf = bytearray(size)
            pread_exactly(fd, buf, offset, self.ckpt.path)
            yield buf

    def chunks(self, entry: TensorEntry, elements: int) -> Iterator[torch.Tensor]:
        """The tensor's values in C order, `elements` at a time, as flat torch tensors."""
        import torch

        if not self.file_backed(entry):
            t = self.view(entry)
            flat = (t.dequantize() if t.is_quantized else t).reshape(-1)
            for start in range(0, flat.numel(), elements):
                yield flat[start : start + elements]
            return
        dtype = torch_dtype(entry.record.dtype)
        for buf in self.raw_chunks(entry, elements):
            yield torch.frombuffer(buf, dtype=dtype)

    def dcp_pieces(self, entry: TensorEntry) -> tuple[dcp.Piece, ...] | None:
        """A DCP tensor's bytes as file ranges in row-major order, where the data files hold
        them plainly (dcp.plain_pieces); None otherwise, and for any other tensor."""
        rec = entry.record
        if rec.rebuild != "dcp":
            return None
        fqn = rec.metadata if isinstance(rec.metadata, str) else entry.key
        if fqn not in self._pieces:
            stored = self.ckpt.dcp_stored.get(fqn, ())
            self._pieces[fqn] = dcp.plain_pieces(self.ckpt.path, rec.shape, rec.dtype, stored)
        return self._pieces[fqn]

    def _read_dcp(self, entry: TensorEntry) -> torch.Tensor:
        """A DCP tensor: its plain bytes read with pread where the data files hold them so,
        else through torch's DCP reader with the tensors after it, up to DCP_BATCH_BYTES at a
        time: memory stays near one batch, whatever the model's size."""
        import torch

        rec = entry.record
        if rec.numel and self.dcp_pieces(entry) is not None:
            out = bytearray(rec.nbytes)
            at = 0
            for fd, offset, size in self.raw_ranges(entry, 1 << 24):
                pread_exactly(fd, memoryview(out)[at : at + size], offset, self.ckpt.path)
                at += size
            return torch.frombuffer(out, dtype=torch_dtype(rec.dtype)).reshape(rec.shape)
        fqn = entry.record.metadata if isinstance(entry.record.metadata, str) else entry.key
        if fqn not in self._dcp_batch:
            # The batch starts at this item in file order, found by its FQN: a writer asks by
            # its output key (renamed by strip-module), which the checkpoint does not know.
            order = self._dcp_items()
            start = self._dcp_position.get(fqn)
            following = order[start + 1 :] if start is not None else []
            batch: dict[str, tuple[tuple[int, ...], str]] = {}
            size = 0
            for name, rec in [(fqn, entry.record), *following]:
                if name in batch or (batch and size + rec.nbytes > DCP_BATCH_BYTES):
                    break
                batch[name] = (rec.shape, rec.dtype)
                size += rec.nbytes
            self._dcp_batch = load_dcp_tensors(self.ckpt.path, batch)
        value = self._dcp_batch.pop(fqn, None)
        if value is None:
            raise UnreadableCheckpoint(f"{self.ckpt.path}: DCP item {fqn!r} could not be read")
        return value

    def _dcp_items(self) -> list[tuple[str, TensorRecord]]:
        """(FQN, record) of the checkpoint's DCP items in order, and each FQN's position."""
        if self._dcp_order is None:
            self._dcp_order = [
                (e.record.metadata if isinstance(e.record.metadata, str) else k, e.record)
                for k, e in self.ckpt.tensors.items()
            ]
            self._dcp_position = {name: i for i, (name, _) in enumerate(self._dcp_order)}
        return self._dcp_order

    def iter(self) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
        for entry in self.ckpt.tensors.values():
            yield entry, self.read(entry)

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


DCP_BATCH_BYTES = 64 << 20


def load_dcp_tensors(
    folder: Path, wanted: dict[str, tuple[tuple[int, ...], str]]
) -> dict[str, torch.Tensor]:
    """Some tensors of a DCP folder, by FQN, through torch's own reader and load planner
    (which reassembles tensors sharded over many ranks' files), after our safety check.
    Only tensor items are read: torch's planner unpickles bytes items without restrictions."""
    import torch

    state: dict[str, Any] = {
        fqn: torch.empty(shape, dtype=torch_dtype(dtype)) for fqn, (shape, dtype) in wanted.items()
    }
    load_dcp_into(folder, state, distributed=False)
    return state


def load_dcp_into(folder: Path, state: dict[str, Any], distributed: bool = True) -> None:
    """Fill tensors (FSDP2 DTensor shards too) in place from a DCP folder by FQN, through
    torch's reader and planner after our safety check; distributed, each rank reads only the
    chunks its tensors overlap (all ranks call it together)."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    index = dcp.read_dcp(folder)
    bad = index.survey.names("dangerous")
    if bad:
        raise UnsafeCheckpoint(
            f"{folder}: {bad[0]} (dangerous content in the DCP folder); refused "
            "(run `ckpt scan` on it)"
        )
    try:
        _load_state_dict(
            state,
            storage_reader=_metadata_reader(folder),
            planner=DefaultLoadPlanner(),
            no_dist=not distributed,
        )
    except Exception as exc:  # torch's reader raises many types for a damaged folder
        raise UnreadableCheckpoint(f"{folder}: DCP data could not be read ({exc})") from None


_READERS: dict[tuple[Any, ...], Any] = {}


def _metadata_reader(folder: Path) -> Any:
    """torch's FileSystemReader, reading `.metadata` (already judged safe) once per folder."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    class CachedReader(FileSystemReader):
        _cached: Any = None

        def read_metadata(self) -> Any:
            if self._cached is None:
                self._cached = super().read_metadata()
            return self._cached

    meta = (folder / ".metadata").stat()
    key = (folder.resolve(), meta.st_mtime_ns, meta.st_size, meta.st_ino)
    if key not in _READERS:
        _READERS.clear()  # one folder at a time is enough
        _READERS[key] = CachedReader(str(folder))
    return _READERS[key]


def load_dcp_state_dict(folder: Path) -> dict[str, Any]:
    """All tensors of a DCP folder by FQN (for verification of small outputs)."""
    index = dcp.read_dcp(folder)
    return load_dcp_tensors(folder, {e.key: (e.shape, e.dtype) for e in index.tensors})
