"""The atomic, verified writer: torch zip (.pth/.pt/.bin/.ckpt) or .safetensors.

Output goes to a temporary file in the target folder, is flushed and fsynced, read back and
compared with what was meant to be written (keys, shapes, dtypes, strides, aliasing, and a
CRC-32 of every tensor's bytes), and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ckpt_tool import progress
from ckpt_tool.errors import OutputRefused, UsageError, WriteFailed
from ckpt_tool.formats.pickle_rules import DANGEROUS, NEEDS_CODE
from ckpt_tool.formats.survey import survey_file

from . import pickle_writer
from .chunks import Chunk, ChunkedStream, ChunkPipeline
from .raw import tensor_bytes
from .safe_pickle import DTYPE_SIZES, StorageRef, TensorRecord, contiguous_stride, view_key
from .safetensors_io import TORCH_TO_ST
from .torch_zip import ZipIndex
from .zipwriter import ZipWriter, copy_range

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
TMP_MARK = ".ckpt-tmp-"
ALIASES_META_KEY = "ckpt.aliases"  # same name as checkpoint.ALIASES_META_KEY (no import cycle)


# --- choosing the output path ------------------------------------------------------------------


def output_format(path: Path) -> str:
    """'pth' or 'safetensors' by the output's extension."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in PTH_SUFFIXES:
        return "pth"
    if not path.suffix:
        raise UsageError(
            f"{path}: has no extension; name a file (.pth, .pt, .bin, .ckpt, .safetensors); "
            "a folder output needs a model folder as input, or --to-dcp"
        )
    raise UsageError(
        f"{path}: unsupported output extension {path.suffix!r}; use .pth, .pt, "
        ".bin, .ckpt or .safetensors"
    )


# --- atomic file --------------------------------------------------------------------------------


def clean_stale_temps(folder: Path, target_name: str) -> None:
    """Remove temp files of earlier runs that were killed (their process no longer exists)."""
    for p in folder.glob(f".{target_name}{TMP_MARK}*"):
        try:
            pid = int(p.name.split(TMP_MARK, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file beside target; on success the caller calls `commit`, else it is removed."""
    folder = target.parent
    clean_stale_temps(folder, target.name)
    tmp = folder / f".{target.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        if target.exists():  # replacing a file keeps its permissions (a private 0600 stays so)
            os.fchmod(fd, target.stat().st_mode & 0o7777)
    except OSError as exc:
        raise OutputRefused(
            f"{target}: cannot create a file in {folder} ({exc.strerror})"
        ) from None
    f = os.fdopen(fd, "w+b")
    try:
        yield f, tmp
    except BaseException:
        # closing re-raises a failed flush (disk full): the temp file must go regardless
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        if not f.closed:
            f.close()


@contextlib.contextmanager
def atomic_folder(target: Path, create: bool = True) -> Iterator[Path]:
    """A fresh temp folder beside target; when the block succeeds it replaces target (the
    old one moved aside, then removed) and the rename is made durable; else it is removed."""
    if target.exists() and not target.is_dir():
        raise OutputRefused(f"{target}: exists and is not a folder")
    tmp = target.parent / f".{target.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if create:
        tmp.mkdir(parents=True)
    try:
        yield tmp
        old = target.parent / f".{target.name}.ckpt-old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        commit(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit(tmp: Path, target: Path) -> None:
    """Rename the finished temp file over target and make the rename durable."""
    os.replace(tmp, target)
    try:
        dfd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _io_error(target: Path, exc: OSError) -> WriteFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WriteFailed(
            f"{target}: disk full or file too large while writing "
            f"({exc.strerror}); nothing was written"
        )
    return WriteFailed(f"{target}: write failed ({exc.strerror or exc}); nothing was written")


# --- tensor byte sources -------------------------------------------------------------------------


class RecordReader(Protocol):
    """Reads one record's tensor (torch) from its input; closed when the writer is done."""

    def read_record(self, key: str, rec: TensorRecord) -> Any: ...

    def record_ranges(
        self, key: str, rec: TensorRecord, elements: int
    ) -> Iterator[tuple[int, int, int]] | None: ...

    def close(self) -> None: ...


class ByteOrigin(Protocol):
    """What the writers need of an input checkpoint (`checkpoint.Checkpoint` is one): where a
    storage's bytes lie, the zip directory (known CRCs), a reader for tensors that must be
    materialised, the code names it already needs, and its tensors (read back)."""

    @property
    def path(self) -> Path: ...

    @property
    def needs_code(self) -> list[str]: ...

    @property
    def dangerous(self) -> list[str]: ...

    @property
    def zip_index(self) -> ZipIndex | None: ...

    @property
    def tensors(self) -> Mapping[str, Any]: ...  # key -> entry with .record

    def locate(self, storage: StorageRef) -> Any: ...  # .path and .offset of the bytes

    def open_reader(self) -> RecordReader: ...


ReadBack = Callable[[Path, "str | None"], ByteOrigin]  # (written file, weights key) -> reading


@dataclass
class Source:
    """Where an output storage's bytes come from: a file range (kernel copy) or bytes in memory."""

    path: Path | None
    offset: int
    size: int
    crc: int | None = None  # known CRC-32 of exactly these bytes (from the input zip)
    data: bytes | None = None
    stream: Callable[[], Iterator[bytes]] | None = None  # bytes produced on the fly, in order
    chunked: ChunkedStream | None = None  # bytes produced as parallel chunks (casts)

    @property
    def produced(self) -> bool:
        return self.stream is not None or self.chunked is not None


@dataclass
class Sources:
    """Byte sources for the storages of records from one input checkpoint."""

    ckpt: ByteOrigin | None
    extra: dict[int, bytes] = field(default_factory=dict)
    streams: dict[int, Callable[[], Iterator[bytes]]] = field(default_factory=dict)
    chunked: dict[int, ChunkedStream] = field(default_factory=dict)

    def add_stream(self, storage: StorageRef, produce: Callable[[], Iterator[bytes]]) -> None:
        """Bytes of storage are produced by `produce()` in chunks (exactly storage.nbytes)."""
        self.streams[id(storage)] = produce

    def add_chunked(self, storage: StorageRef, stream: ChunkedStream) -> None:
        """Bytes of storage are produced by independent chunk jobs (exactly storage.nbytes)."""
        self.chunked[id(storage)] = stream

    def produce_all(self, storage: StorageRef) -> bytearray | None:
        """All produced bytes of storage, or None when they are not produced (whole-tensor
        writers such as DCP)."""
        chunked = self.chunked.get(id(storage))
        produce = self.streams.get(id(storage))
        if chunked is None and produce is None:
            return None
        out = bytearray()
        with ChunkPipeline([chunked] if chunked else []) as pipeline:
            for chunk in pipeline.take(chunked) if chunked else produce() if produce else ():
                out += chunk  # copied: a chunk is only valid until the next one
        return out

    def pipeline(self, storages: list[StorageRef]) -> ChunkPipeline:
        """Runs the chunked streams among storages ahead of a writer that takes them in order."""
        return ChunkPipeline([self.chunked[id(s)] for s in storages if id(s) in self.chunked])

    def require_ckpt(self) -> ByteOrigin:
        if self.ckpt is None:
            raise WriteFailed("tensor bytes requested without an input checkpoint (internal)")
        return self.ckpt

    def add_tensor(
        self, t: Any, *, requires_grad: bool = False, is_parameter: bool = False
    ) -> TensorRecord:
        """A record for a live torch tensor, its bytes kept in memory until written."""

        c = t.detach().to("cpu").contiguous()
        data = tensor_bytes(c)
        dtype = str(c.dtype).removeprefix("torch.")
        storage = StorageRef(f"mem:{len(self.extra)}", dtype, "cpu", c.numel())
        self.extra[id(storage)] = data
        return TensorRecord(
            storage, 0, tuple(c.shape), tuple(c.stride()), dtype, requires_grad, is_parameter
        )

    def of(self, storage: StorageRef) -> Source:
        if id(storage) in self.streams:
            return Source(None, 0, storage.nbytes, stream=self.streams[id(storage)])
        if id(storage) in self.chunked:
            return Source(None, 0, storage.nbytes, chunked=self.chunked[id(storage)])
        if id(storage) in self.extra:
            data = self.extra[id(storage)]
            return Source(None, 0, len(data), zlib.crc32(data), data)
        if self.ckpt is None:
            raise WriteFailed(f"storage {storage.key} has no bytes (internal)")
        loc = self.ckpt.locate(storage)
        crc = None
        zip_index = self.ckpt.zip_index
        if zip_index is not None:
            info = zip_index.storage_member(storage.key)
            if info is not None and info.file_size == storage.nbytes:
                crc = info.CRC
        return Source(loc.path, loc.offset, storage.nbytes, crc)


def storage_backed(records: dict[str, TensorRecord], sources: Sources) -> dict[str, TensorRecord]:
    """Give records without a file storage (numpy arrays, DCP) one backed by bytes in memory."""
    out: dict[str, TensorRecord] = {}
    reader = None
    for key, rec in records.items():
        if rec.storage is not None:
            out[key] = rec
            continue
        storage = StorageRef(f"mem:{key}", rec.dtype, "cpu", rec.numel)
        if rec.inline is not None:
            sources.extra[id(storage)] = rec.inline
        else:  # DCP: read when the writer gets there, a batch at a time (memory stays flat)
            reader = reader or sources.require_ckpt().open_reader()
            sources.add_stream(storage, _lazy_bytes(reader, rec, key))
        stride = contiguous_stride(rec.shape)
        out[key] = TensorRecord(
            storage, 0, rec.shape, stride, rec.dtype, rec.requires_grad, rec.is_parameter
        )
    return out


# --- checksums ----------------------------------------------------------------------------------


def crc_pread(path: Path, offset: int, size: int) -> int:
    """CRC-32 of a file range read with pread (works on a file still being written)."""
    crc = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < size:
            chunk = os.pread(fd, min(size - done, 8 << 20), offset + done)
            if not chunk:
                raise WriteFailed(f"{path}: output shorter than written")
            crc = zlib.crc32(chunk, crc)
            done += len(chunk)
    finally:
        os.close(fd)
    return crc


def crcs_pread(path: Path, ranges: list[tuple[int, int]]) -> list[int]:
    """CRC-32 of several ranges of one file: one read for a run of small neighbouring ranges."""
    if len(ranges) == 1:
        return [crc_pread(path, *ranges[0])]
    start = min(o for o, _ in ranges)
    end = max(o + n for o, n in ranges)
    if end - start > 4 * (sum(n for _, n in ranges) + (1 << 20)):
        return [crc_pread(path, o, n) for o, n in ranges]  # far apart: one read each
    fd = os.open(path, os.O_RDONLY)
    try:
        span = os.pread(fd, end - start, start)
    finally:
        os.close(fd)
    if len(span) < end - start:
        raise WriteFailed(f"{path}: output shorter than written")
    with memoryview(span) as view:
        return [zlib.crc32(view[o - start : o - start + n]) for o, n in ranges]


def parallel_crcs(jobs: list[tuple[Path, int, int]]) -> list[int]:
    """CRC-32 of many ranges on two threads (the machines we target have few cores)."""
    if len(jobs) <= 1:
        return [crc_pread(*j) for j in jobs]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda j: crc_pread(*j), jobs))


class RangeChecker:
    """CRC-32 of written ranges, computed on a worker thread while the writing goes on.

    The copy runs in the kernel on one core; checksumming what was just written on the other
    hides most of the verification cost. Small ranges are sent in batches (one flush and one
    task per batch, not per tensor: a 100,000-tensor file has 100,000 of them). Disabled (no
    thread) with --no-verify.
    """

    BATCH_BYTES = 8 << 20
    BATCH_RANGES = 4096

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.futures: dict[str, tuple[Future[list[int]], int]] = {}
        self._batch: list[tuple[str, int, int]] = []
        self._batch_bytes = 0
        self._f: BinaryIO | None = None

    def submit(self, f: BinaryIO, name: str, offset: int, size: int) -> None:
        if self.pool is None:
            return
        self._f = f
        self._batch.append((name, offset, size))
        self._batch_bytes += size
        if self._batch_bytes >= self.BATCH_BYTES or len(self._batch) >= self.BATCH_RANGES:
            self._send()

    def _send(self) -> None:
        if not self._batch or self.pool is None:
            return
        assert self._f is not None
        self._f.flush()  # the worker reads through its own fd
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        future = self.pool.submit(crcs_pread, self.path, [(o, n) for _, o, n in batch])
        for i, (name, _, _) in enumerate(batch):
            self.futures[name] = (future, i)

    def result(self, name: str) -> int:
        if name not in self.futures:
            self._send()
        future, i = self.futures[name]
        return future.result()[i]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class Syncer:
    """Durability off the critical path: while the file is written, a thread keeps flushing
    what is already there (fdatasync every 0.1 s), so the disk works during the copy; at the
    end the final fsync runs on the thread while verification reads from the page cache.
    (sync_file_range instead of fdatasync measured no faster here.)"""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.error: OSError | None = None
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(f.fileno(),), daemon=True)
        self.thread.start()

    def finish(self) -> None:
        """The writing is done: flush the rest (on the thread, which starts at once)."""
        self.f.flush()
        self._done.set()

    def _run(self, fd: int) -> None:
        while not self._done.wait(0.1):
            # errors here surface again in the final fsync
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
        try:
            os.fsync(fd)
        except OSError as exc:
            self.error = exc

    def wait(self) -> None:
        self._done.set()
        self.thread.join()
        if self.error is not None:
            raise self.error


# --- torch zip ----------------------------------------------------------------------------------


@dataclass
class WriteResult:
    """What was written and how it was checked."""

    path: Path
    format: str
    bytes: int
    tensors: int
    verified: bool
    notes: list[str] = field(default_factory=list)


def write_pth(
    root: Any,
    target: Path,
    sources: Sources,
    *,
    verify: bool = True,
    expect: dict[str, TensorRecord] | None = None,
    weights_key: str | None = None,
    keep_device: bool = False,
    read_back: ReadBack | None = None,
) -> WriteResult:
    """Write root (our object model) as a torch zip file, atomically, then verify it with
    read_back (our reader: records and zip directory), which verify needs."""
    try:
        data_pkl, storages = pickle_writer.dumps(root, keep_device=keep_device)
    except RecursionError:
        raise WriteFailed(f"{target}: the object graph nests too deeply to write") from None
    moved = sorted({s.location for _, s in storages if s.location != "cpu"})
    notes = (
        [f"tensors saved on {', '.join(moved)} written as CPU tensors (--keep-device keeps them)"]
        if moved and not keep_device
        else []
    )
    expected_crcs: dict[str, int] = {}
    try:
        with atomic_file(target) as (f, tmp):
            checker = RangeChecker(tmp, verify)
            syncer = Syncer(f)
            try:
                zw = ZipWriter(f)
                zw.add_bytes("archive/data.pkl", data_pkl)
                zw.add_bytes("archive/.format_version", b"1")
                zw.add_bytes("archive/.storage_alignment", b"64")
                zw.add_bytes("archive/byteorder", b"little")
                _write_storages(zw, storages, sources, expected_crcs, checker)
                zw.add_bytes("archive/version", b"3\n")
                zw.add_bytes(
                    "archive/.data/serialization_id", f"{zlib.crc32(data_pkl):040d}".encode()
                )
                zw.close()
                size = f.tell()
                syncer.finish()
                if verify:
                    if read_back is None:
                        raise WriteFailed(f"{target}: verification needs a reader (internal)")
                    back = _read_back(tmp, target, weights_key, read_back, sources.ckpt)
                    # the read-back surveyed the output's pickles: judge them from it
                    check_output_safety(tmp, target, sources.ckpt, back)
                    verify_pth(tmp, target, expected_crcs, expect, checker, zw, back)
                else:
                    check_output_safety(tmp, target, sources.ckpt)
            finally:
                checker.close()
                syncer.wait()
            commit(tmp, target)
    except OSError as exc:
        raise _io_error(target, exc) from None
    return WriteResult(target, "pth", size, len(expect or {}), verify, notes)


def _write_storages(
    zw: ZipWriter,
    storages: list[tuple[str, StorageRef]],
    sources: Sources,
    expected_crcs: dict[str, int],
    checker: RangeChecker,
) -> None:
    fds: dict[Path, int] = {}
    pending: list[tuple[str, Path, int, int]] = []
    pipeline = sources.pipeline([s for _, s in storages])
    try:
        for key, storage in progress.track(storages, "writing tensors", len(storages)):
            name = f"archive/data/{key}"
            src = sources.of(storage)
            if src.data is not None:
                m = zw.add_bytes(name, src.data)
                expected_crcs[name] = m.crc
                checker.submit(zw.f, name, m.data_offset, m.size)
                continue
            if src.produced:
                offset, _ = zw.begin_stream(name, src.size)
                produced = _write_stream(zw.f, src, name, pipeline)
                m = zw.end_stream(name, offset, src.size, produced)
                expected_crcs[name] = produced
                checker.submit(zw.f, name, m.data_offset, m.size)
                continue
            assert src.path is not None
            if src.path not in fds:
                fds[src.path] = os.open(src.path, os.O_RDONLY)
            crc = src.crc
            if crc is None:
                # Not known from the input: computed from the source range after copying,
                # then both the header and the verification use it.
                pending.append((name, src.path, src.offset, src.size))
                crc = 0
            m = zw.add_copy(name, fds[src.path], src.offset, src.size, crc)
            expected_crcs[name] = crc
            checker.submit(zw.f, name, m.data_offset, m.size)
        if pending:
            crcs = parallel_crcs([(p, o, s) for _, p, o, s in pending])
            by_name = {m.name: m for m in zw.members}
            for (name, *_), crc in zip(pending, crcs, strict=True):
                member = by_name[name]
                member.crc = crc
                expected_crcs[name] = crc
                end = zw.f.tell()
                zw.f.seek(member.header_offset + 14)
                zw.f.write(struct.pack("<I", crc))
                zw.f.seek(end)
    finally:
        pipeline.close()
        for fd in fds.values():
            os.close(fd)


def _record_signature(rec: TensorRecord) -> tuple[Any, ...]:
    return (
        rec.shape,
        rec.stride,
        rec.offset,
        rec.dtype,
        rec.is_parameter,
        rec.requires_grad if rec.is_parameter else False,
    )


def _alias_groups(records: dict[str, TensorRecord]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for k, r in records.items():
        if r.storage is not None:
            groups.setdefault(id(r.storage), []).append(k)
    return sorted(g for g in groups.values() if len(g) > 1)


def check_output_safety(
    tmp: Path, target: Path, source: ByteOrigin | None, judged: ByteOrigin | None = None
) -> None:
    """Re-scan a written pickle: never dangerous, and never naming code its input did not.

    Runs even with --no-verify: it reads only the output's pickles. `judged` is the output
    already read back (its survey judged the same pickles), so they are not read twice.
    """
    if judged is not None:
        dangerous, needs_code = list(judged.dangerous), list(judged.needs_code)
    else:
        back = survey_file(tmp)
        dangerous, needs_code = back.names(DANGEROUS), back.names(NEEDS_CODE)
    if dangerous:
        raise WriteFailed(
            f"{target}: the output would be dangerous ({'; '.join(dangerous[:3])}); "
            "nothing was written"
        )
    allowed = set(source.needs_code) if source is not None else set()
    new = [n for n in needs_code if n not in allowed]
    if new:
        raise WriteFailed(
            f"{target}: the output would name code its input does not ({', '.join(new[:3])}); "
            "nothing was written"
        )


def _read_back(
    tmp: Path, target: Path, weights_key: str | None, read_back: ReadBack, source: ByteOrigin | None
) -> ByteOrigin:
    """The written file, read by our reader; a failure is the safety check's, then ours."""
    try:
        return read_back(tmp, weights_key)
    except Exception as exc:
        check_output_safety(tmp, target, source)
        raise WriteFailed(
            f"{target}: verification could not read the output back ({exc})"
        ) from None


def verify_pth(
    tmp: Path,
    target: Path,
    expected_crcs: dict[str, int],
    expect: dict[str, TensorRecord] | None,
    checker: RangeChecker,
    zw: ZipWriter,
    back: ByteOrigin,
) -> None:
    """Compare the written file, read back with our reader, with the plan."""
    zip_index = back.zip_index
    assert zip_index is not None
    written = {m.name: m for m in zw.members}
    for name, crc in expected_crcs.items():
        info = zip_index.members.get(name)
        if (
            info is None
            or crc != info.CRC
            or zip_index.data_offset(info) != written[name].data_offset
            or info.file_size != written[name].size
        ):
            raise WriteFailed(f"{target}: verification failed: record {name} missing or wrong")
        if crc != checker.result(name):
            raise WriteFailed(
                f"{target}: verification failed: bytes of {name} do not match their checksum "
                "(if the input's stored checksum is wrong, the input is corrupt: ckpt scan it)"
            )
    if expect is not None:
        got = {k: e.record for k, e in back.tensors.items()}
        if list(got) != list(expect):
            raise WriteFailed(f"{target}: verification failed: keys read back differ")
        for k, rec in expect.items():
            if _record_signature(got[k]) != _record_signature(rec):
                raise WriteFailed(
                    f"{target}: verification failed: tensor {k!r} differs "
                    "(shape, dtype, layout or requires_grad)"
                )
        if _alias_groups(got) != _alias_groups(expect):
            raise WriteFailed(f"{target}: verification failed: shared tensors differ")


# --- safetensors --------------------------------------------------------------------------------


def write_safetensors(
    records: dict[str, TensorRecord],
    target: Path,
    sources: Sources,
    metadata: dict[str, str],
    *,
    verify: bool = True,
) -> WriteResult:
    """Write tensors as safetensors: header computed up front, bytes copied tensor by tensor."""
    notes: list[str] = []
    plan: list[tuple[str, TensorRecord]] = []
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for key, rec in records.items():
        if rec.dtype not in TORCH_TO_ST:
            raise WriteFailed(
                f"{target}: tensor {key!r} has dtype {rec.dtype}, which safetensors cannot store"
            )
        view = view_key(rec)
        if rec.storage is not None and view in seen:
            aliases[key] = seen[view]
            continue
        seen[view] = key
        plan.append((key, rec))
    meta = dict(metadata)
    meta.setdefault("format", "pt")
    if aliases:
        meta[ALIASES_META_KEY] = json.dumps(aliases)
        notes.append(
            f"{len(aliases)} shared tensor(s) written once; aliases recorded in "
            f"__metadata__[{ALIASES_META_KEY!r}]"
        )
    header: dict[str, Any] = {"__metadata__": meta}
    cursor = 0
    for key, rec in plan:
        header[key] = {
            "dtype": TORCH_TO_ST[rec.dtype],
            "shape": list(rec.shape),
            "data_offsets": [cursor, cursor + rec.nbytes],
        }
        cursor += rec.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)
    data_start = 8 + len(raw)
    expected: list[tuple[str, int, int, int]] = []  # key, out offset, size, crc
    try:
        with atomic_file(target) as (f, tmp):
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            checker = RangeChecker(tmp, verify)
            syncer = Syncer(f)
            try:
                expected = _write_st_data(f, plan, sources, data_start, checker)
                size = f.tell()
                syncer.finish()
                if verify:
                    verify_safetensors(tmp, target, plan, expected, checker)
            finally:
                checker.close()
                syncer.wait()
            commit(tmp, target)
    except OSError as exc:
        raise _io_error(target, exc) from None
    return WriteResult(target, "safetensors", size, len(records), verify, notes)


def _contiguous_range(rec: TensorRecord) -> tuple[int, int] | None:
    """(byte offset in storage, size) when the tensor is one contiguous run of its storage."""
    if rec.storage is None or (rec.stride != contiguous_stride(rec.shape) and rec.numel > 1):
        return None
    return rec.offset * DTYPE_SIZES[rec.dtype], rec.nbytes


class _CheckedList(list[tuple[str, int, int, int]]):
    """Written (key, offset, size, crc) entries; each append queues the read-back checksum."""

    def __init__(self, f: BinaryIO, checker: RangeChecker, data_start: int) -> None:
        super().__init__()
        self.f, self.checker, self.data_start = f, checker, data_start

    def append(self, item: tuple[str, int, int, int]) -> None:
        super().append(item)
        key, off, size, _ = item
        self.checker.submit(self.f, key, self.data_start + off, size)


def _write_st_data(
    f: BinaryIO,
    plan: list[tuple[str, TensorRecord]],
    sources: Sources,
    data_start: int,
    checker: RangeChecker,
) -> list[tuple[str, int, int, int]]:
    out = _CheckedList(f, checker, data_start)
    crc_jobs: list[tuple[Path, int, int]] = []
    crc_slots: list[int] = []
    fds: dict[Path, int] = {}
    reader = None
    pipeline = sources.pipeline([r.storage for _, r in plan if r.storage is not None])
    try:
        for key, rec in progress.track(plan, "writing tensors", len(plan)):
            pos = f.tell()
            span = _contiguous_range(rec)
            assert rec.storage is not None
            src = sources.of(rec.storage)
            if span is not None and src.data is None and src.path is not None:
                start, size = span
                if src.path not in fds:
                    fds[src.path] = os.open(src.path, os.O_RDONLY)
                f.flush()
                os.lseek(f.fileno(), pos, os.SEEK_SET)
                copy_range(fds[src.path], f.fileno(), src.offset + start, size)
                f.seek(pos + size)
                whole = start == 0 and size == src.size
                if whole and src.crc is not None:
                    out.append((key, pos - data_start, size, src.crc))
                else:
                    crc_jobs.append((src.path, src.offset + start, size))
                    crc_slots.append(len(out))
                    out.append((key, pos - data_start, size, 0))
                continue
            if src.produced and span == (0, src.size):
                crc = _write_stream(f, src, key, pipeline)
                out.append((key, pos - data_start, src.size, crc))
                continue
            if span is not None and src.data is not None:
                start, size = span
                chunk = src.data[start : start + size]
            else:
                reader = reader or sources.require_ckpt().open_reader()
                chunk = _materialise(reader, rec, key)
            f.write(chunk)
            out.append((key, pos - data_start, len(chunk), zlib.crc32(chunk)))
        for slot, crc in zip(crc_slots, parallel_crcs(crc_jobs), strict=True):
            key, off, size, _ = out[slot]
            out[slot] = (key, off, size, crc)
    finally:
        pipeline.close()
        for fd in fds.values():
            os.close(fd)
        if reader is not None:
            reader.close()
    return out


def _write_stream(f: BinaryIO, src: Source, what: str, pipeline: ChunkPipeline) -> int:
    """Write a produced byte stream, checking its length; returns its CRC-32."""
    if src.chunked is not None:
        chunks: Iterator[Chunk] = pipeline.take(src.chunked)
    else:
        assert src.stream is not None
        chunks = src.stream()
    crc = 0
    written = 0
    for chunk in chunks:
        f.write(chunk)
        crc = zlib.crc32(chunk, crc)
        written += len(chunk)
    if written != src.size:
        raise WriteFailed(f"{what}: produced {written} bytes, expected {src.size} (internal)")
    return crc


def _lazy_bytes(reader: Any, rec: TensorRecord, key: str) -> Callable[[], Iterator[bytes]]:
    def produce() -> Iterator[bytes]:
        ranges = reader.record_ranges(key, rec, LAZY_CHUNK_ELEMENTS)
        if ranges is None:
            yield _materialise(reader, rec, key)
            return
        for fd, offset, size in ranges:  # bytes that lie in files plainly: no torch
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise WriteFailed(f"{key}: the input ended inside the tensor")
            yield data

    return produce


LAZY_CHUNK_ELEMENTS = 1 << 21  # per read of a tensor copied from a DCP data file


def _materialise(reader: Any, rec: TensorRecord, key: str) -> bytes:
    """The tensor's bytes in C order (DCP items are found by key)."""

    return tensor_bytes(reader.read_record(key, rec))


def verify_safetensors(
    tmp: Path,
    target: Path,
    plan: list[tuple[str, TensorRecord]],
    expected: list[tuple[str, int, int, int]],
    checker: RangeChecker,
) -> None:
    """Re-read the header and the bytes of every tensor; compare with what was planned."""
    from .safetensors_io import read_header

    try:
        header = read_header(tmp)
    except Exception as exc:
        raise WriteFailed(
            f"{target}: verification could not read the output back ({exc})"
        ) from None
    got = {t.name: t for t in header.tensors}
    if list(got) != [k for k, _ in plan]:
        raise WriteFailed(f"{target}: verification failed: tensor names read back differ")
    for key, rec in plan:
        t = got[key]
        if t.shape != rec.shape or t.dtype != rec.dtype:
            raise WriteFailed(f"{target}: verification failed: tensor {key!r} differs")
    for key, _, _, want in expected:
        if want != checker.result(key):
            raise WriteFailed(
                f"{target}: verification failed: bytes of {key!r} differ from what was read "
                "(if the input's stored checksum is wrong, the input is corrupt: ckpt scan it)"
            )
