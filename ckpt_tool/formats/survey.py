"""One reading of a file's bytes, the way `torch.load` reads them, shared by every command.

`survey_file` decides the format by content in torch's own dispatch order (zip by the first
four bytes, then the legacy tar, then a pickle), runs every pickle the file holds through the
one restricted unpickler (`safe_pickle`), and records as findings what each global is used for
and wherever two readers could see different bytes. `ckpt scan` reports the survey; every
other command reads its checkpoint from the same survey, so all of them give one verdict on
one file.
"""

from __future__ import annotations

import ast
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, UnreadableCheckpoint
from ckpt_tool.reports import FindingInfo

from . import torch_zip
from .pickle_rules import DANGEROUS, ERROR, NEEDS_CODE, RANK, SAFE, worst
from .safe_pickle import (
    DTYPE_SIZES,
    STORAGE_DTYPES,
    PickleResult,
    TorchMarker,
    bytes_values,
    read_pickle,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
NPY_MAGIC = b"\x93NUMPY"
MAX_TRAILING_PICKLES = 64
MAX_NPY_HEADER = 1 << 16
# What files that are no checkpoint start with, to say what they are.
OTHER_FORMATS = (
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (run `git lfs pull`)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (extract it first)"),
    (b"\x1f\x8b", "a gzip file (decompress it first)"),
    (b"BZh", "a bzip2 file (decompress it first)"),
    (b"\xfd7zXZ\x00", "an xz file (decompress it first)"),
    (b"\x28\xb5\x2f\xfd", "a zstd file (decompress it first)"),
    (b"Rar!", "a RAR archive (extract it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5?), not a PyTorch checkpoint"),
    (b"GGUF", "a GGUF file (llama.cpp), not a PyTorch checkpoint"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"%PDF", "a PDF document"),
)


@dataclass
class Finding:
    """One thing a survey found, with where: a global and its use, or a fact about the bytes."""

    verdict: str  # safe | needs code | dangerous | error
    why: str  # allowlisted | referenced | constructed | called | computed | tampering |
    # runs-code | extension-code | ambiguous | unreadable | format | torchscript | header |
    # path-traversal | damaged
    message: str
    name: str | None = None  # module.name of a global (py2 names mapped)
    member: str | None = None  # zip member, "pickle 1", ".metadata", "item 'x'"
    offset: int | None = None  # byte offset in member (in the file for plain files)
    opcode: str | None = None  # GLOBAL | STACK_GLOBAL | INST | EXT, for globals
    count: int = 1

    def as_dict(self) -> FindingInfo:
        return {
            "verdict": self.verdict,
            "why": self.why,
            "name": self.name,
            "member": self.member,
            "offset": self.offset,
            "opcode": self.opcode,
            "count": self.count,
            "message": self.message,
        }


@dataclass
class LegacyLayout:
    """Where each storage's bytes lie in a legacy (pre-zip) torch file."""

    offsets: dict[str, int] = field(default_factory=dict)


@dataclass
class NpyArray:
    """A `.npy` array: its header and where its bytes start."""

    dtype: str | None  # our dtype name; None for dtypes we do not read (objects, records)
    descr: str
    shape: tuple[int, ...]
    fortran: bool
    data_offset: int  # -1: not in the file as such (a compressed .npz member): see inline
    big_endian: bool = False
    inline: bytes | None = None  # the array's bytes, for compressed .npz members


@dataclass
class Survey:
    """Everything one reading of a file found: its format, its pickles, its findings."""

    path: Path
    format: str
    findings: list[Finding] = field(default_factory=list)
    pickles: list[tuple[str, PickleResult]] = field(default_factory=list)
    main: PickleResult | None = None  # the pickle torch.load unpickles as the checkpoint
    main_member: str | None = None
    zip: torch_zip.ZipRead | None = None
    legacy: LegacyLayout | None = None
    npy: dict[str, NpyArray] = field(default_factory=dict)
    data_classes: frozenset[str] = frozenset()
    describe: str | None = None  # what a file that is no checkpoint is
    check_crc: bool = False  # also check the CRC-32 of members that are not pickles (tensors)

    @property
    def verdict(self) -> str:
        """safe, needs code or dangerous (a damaged file is judged by what could be read)."""
        return worst(*(f.verdict for f in self.findings if f.verdict in RANK))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == ERROR]

    def names(self, verdict: str) -> list[str]:
        return [f.name or f.message for f in self.findings if f.verdict == verdict]

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def flag(self, verdict: str, why: str, message: str, member: str | None = None,
             offset: int | None = None) -> None:  # fmt: skip
        self.findings.append(Finding(verdict, why, message, None, member, offset))

    def add_pickle(self, member: str, result: PickleResult, buf: Any = None) -> PickleResult:
        """Record one pickle's globals and problems as findings (and, given its bytes, what
        pickles its bytes values hold)."""
        self.pickles.append((member, result))
        if buf is not None and result.complete:
            _nested_payloads(self, member, result, buf)
        for use in result.globals.values():
            if use.payloads:
                use.payloads_safe = len(use.payloads) == use.calls and all(
                    _payload_safe(p, self) for p in use.payloads
                )
                use.payloads.clear()  # judged; the bytes are not kept
        for use, verdict, why, message in result.verdicts(self.data_classes):
            if use.written:
                message += f" (written as {use.written})"
            self.findings.append(
                Finding(verdict, why, message, use.name, member, use.offset, use.opcode, use.count)
            )
        for p in result.problems:
            self.findings.append(Finding(p.verdict, p.why, p.message, None, member, p.offset))
        if result.foreign_pids:
            self.findings.append(
                Finding(
                    NEEDS_CODE,
                    "persistent-id",
                    "persistent ids that are not torch storages: a real load hands them to "
                    "the loader's persistent_load",
                    None,
                    member,
                    count=result.foreign_pids,
                )
            )
        return result


_NESTED_MARKS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
MAX_NESTING = 3


def _nested_payloads(survey: Survey, member: str, result: PickleResult, buf: Any) -> None:
    """A bytes value holding a pickle or torch zip is data: loading the file never unpickles
    it. What it names is reported (needs code at worst) so that nobody unpickles it blindly."""
    depth = member.count(" > bytes")
    if depth >= MAX_NESTING:
        return
    start, end = result.start + 2, result.end
    if not any(buf.find(m, start, end) >= 0 for m in _NESTED_MARKS):
        return
    for obj in bytes_values(result.root):
        if bytes(obj[:4]).startswith(_NESTED_MARKS):
            inner = Survey(survey.path, "bytes")
            survey_buffer(bytes(obj), inner)
            for f in inner.findings:
                if f.verdict in (DANGEROUS, NEEDS_CODE) and f.name is not None:
                    survey.add(
                        Finding(
                            NEEDS_CODE,
                            "nested-pickle",
                            f"a bytes value holds a pickle that names {f.name} ({f.verdict}): "
                            "loading this file does not run it; unpickling that value would",
                            f.name,
                            f"{member} > bytes",
                            f.offset,
                            f.opcode,
                        )
                    )


def survey_nested(data: bytes, parent: Survey, label: str) -> None:
    """A whole file inside another (a torch zip in a zip member): its findings, labelled."""
    if label.count(" > ") >= MAX_NESTING:
        parent.flag(ERROR, "unreadable", "files nested too deeply to read", label)
        return
    inner = Survey(parent.path, "nested")
    survey_buffer(data, inner)
    parent.pickles.extend((f"{label} > {m}", r) for m, r in inner.pickles)
    for f in inner.findings:
        f.member = f"{label} > {f.member}"
        parent.findings.append(f)


def _payload_safe(payload: bytes, parent: Survey) -> bool:
    inner = Survey(parent.path, "bytes")
    survey_buffer(payload, inner)
    return inner.verdict == SAFE and not inner.errors


# --- files ---------------------------------------------------------------------------------


class Mapped:
    """A whole file memory-mapped read-only (an empty file is an empty buffer)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UnreadableCheckpoint(f"{path}: not a regular file")
        self.f = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = os.fstat(self.f.fileno()).st_size
        self.map: mmap.mmap | None = (
            mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        )
        self.buf: Any = self.map if self.map is not None else b""

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        self.f.close()

    def __enter__(self) -> Any:
        return self.buf

    def __exit__(self, *exc: object) -> None:
        self.close()


def survey_file(
    path: Path, data_classes: frozenset[str] = frozenset(), check_crc: bool = False
) -> Survey:
    """Read a file the way torch.load would and judge every pickle in it; never raises for what
    the bytes hold (an unreadable part is an `error` finding). Tensor bytes are not read unless
    `check_crc`."""
    survey = Survey(path, "unknown", data_classes=data_classes, check_crc=check_crc)
    try:
        with Mapped(path) as buf:
            survey_buffer(buf, survey)
    except OSError as exc:
        survey.flag(ERROR, "unreadable", f"cannot read ({exc.strerror or exc})", "file")
    except CkptError as exc:
        survey.flag(ERROR, "unreadable", exc.message, "file")
    return survey


def survey_buffer(buf: Any, survey: Survey) -> None:
    """Survey bytes (an mmap or bytes), in torch.load's dispatch order."""
    if len(buf) == 0:
        survey.flag(ERROR, "unreadable", "empty file, not a checkpoint", "file")
        return
    head = bytes(buf[:64])
    if head[:4] == torch_zip.ZIP_MAGIC:
        _survey_zip(buf, survey)
    elif head[:6] == NPY_MAGIC:
        survey.format = "numpy"
        _survey_npy(buf, survey, "tensor", 0)
    elif safetensors_header_len(buf) is not None:
        survey.format = "safetensors"
        _polyglot_pickle(buf, survey, "safetensors")
    elif _is_tar(buf):
        survey.format = "torch-legacy-tar"
        _survey_tar(buf, survey)
    else:
        _survey_pickles(buf, survey)


def safetensors_header_len(buf: Any, strict: bool = True) -> int | None:
    """The header length if the bytes start like a safetensors file: a length that fits the
    file and a JSON object right after it (a pickle whose byte 8 is `{` is not one). Not
    strict: any length, for bytes that are no pickle either."""
    if len(buf) < 10 or buf[8:9] != b"{":
        return None
    (n,) = struct.unpack_from("<Q", buf, 0)
    if strict and (n < 2 or n > len(buf) - 8 or n > 100_000_000):
        return None
    return int(n)


def _is_tar(buf: Any) -> bool:
    """Whether torch's legacy loader would take the file for a tar archive (it tries first)."""
    if len(buf) < 512:
        return False
    import tarfile  # the legacy format only: not worth every start-up's import

    try:
        with tarfile.open(fileobj=_stream(buf), mode="r:"):  # type: ignore[call-overload]
            return True
    except (tarfile.TarError, ValueError, OSError, EOFError):
        return False


def _stream(buf: Any) -> Any:
    from .safe_pickle import BufferStream

    return BufferStream(buf)


# --- plain pickles and legacy torch files ---------------------------------------------------


def _survey_pickles(buf: Any, survey: Survey) -> None:
    first = read_pickle(buf, 0, survey.data_classes)
    head = bytes(buf[:512])
    if (
        first.failure is not None
        and not first.globals
        and (first.end <= 16 or any(head.startswith(m) for m, _ in OTHER_FORMATS))
    ):
        if safetensors_header_len(buf, strict=False) is not None:
            survey.format = "safetensors"  # a broken one: its header check says what is wrong
            return
        what = describe_bytes(head)
        survey.format = "unknown"
        survey.describe = what
        survey.flag(ERROR, "format", f"{what}, not a checkpoint format we know", "file", 0)
        if any(p.verdict == DANGEROUS for p in first.problems):
            survey.add_pickle("pickle 1", first)
        return
    survey.format = "pickle"
    _check_appended_zip(buf, survey)
    if first.complete and first.root == LEGACY_MAGIC:
        survey.format = "torch-legacy"
        survey.add_pickle("magic number", first)
        _survey_legacy(buf, survey, first.end)
        return
    survey.add_pickle("pickle 1", first, buf)
    survey.main, survey.main_member = first, "pickle 1"
    if first.complete:
        _trailing_pickles(buf, survey, first.end, 2)


def _trailing_pickles(buf: Any, survey: Survey, pos: int, number: int) -> None:
    """Pickles after the first STOP: torch never reads them, `pickle.load` in a loop does."""
    for n in range(number, number + MAX_TRAILING_PICKLES):
        if pos >= len(buf):
            return
        result = read_pickle(buf, pos, survey.data_classes)
        if result.failure is not None and not result.globals:
            if any(p.verdict == DANGEROUS for p in result.problems):
                survey.add_pickle(f"pickle {n} (after the first STOP)", result)
            else:
                survey.flag(
                    SAFE,
                    "trailing-data",
                    f"{len(buf) - pos} bytes after the last pickle that are not a pickle",
                    f"pickle {n}",
                    pos,
                )
            return
        survey.add_pickle(f"pickle {n} (after the first STOP)", result, buf)
        if not result.complete or result.end <= pos:
            return
        pos = result.end


_LEGACY_PARTS = ("protocol", "sys_info", "main pickle", "storage keys")


def _survey_legacy(buf: Any, survey: Survey, pos: int) -> None:
    """torch's pre-zip format: magic, protocol, sys_info, the main pickle, the storage keys,
    then each storage's bytes (an 8-byte element count, then the elements)."""
    parts: dict[str, PickleResult] = {}
    for part in _LEGACY_PARTS:
        result = survey.add_pickle(part, read_pickle(buf, pos, survey.data_classes), buf)
        parts[part] = result
        if not result.complete:
            return
        pos = result.end
    if parts["protocol"].root != 1001:
        survey.flag(ERROR, "format", f"unsupported legacy protocol {parts['protocol'].root!r:.20}")
        return
    main, keys = parts["main pickle"], parts["storage keys"].root
    survey.main, survey.main_member = main, "main pickle"
    if not isinstance(keys, list):
        survey.flag(ERROR, "unreadable", "the storage key list is missing", "storage keys")
        return
    layout = LegacyLayout()
    for key in keys:
        ref = main.storages.get(str(key))
        if ref is None or pos + 8 > len(buf):
            survey.flag(ERROR, "unreadable", f"storage {key} is missing or truncated", "storages")
            return
        (numel,) = struct.unpack_from("<q", buf, pos)
        nbytes = numel * DTYPE_SIZES.get(ref.dtype, 1)
        if numel < 0 or numel != ref.numel or pos + 8 + nbytes > len(buf):
            survey.flag(
                ERROR,
                "unreadable",
                f"storage {key} claims {numel} elements but the file is too short",
                "storages",
            )
            return
        layout.offsets[str(key)] = pos + 8
        pos += 8 + nbytes
    survey.legacy = layout
    _trailing_pickles(buf, survey, pos, 6)


def _check_appended_zip(buf: Any, survey: Survey) -> None:
    at = torch_zip.embedded_zip(buf)
    if at is not None:
        survey.flag(
            DANGEROUS,
            "ambiguous",
            f"a zip archive starts at offset {at} of a file that starts as a pickle: torch "
            "reads the pickle, zip-based tools read the archive",
            "file",
            at,
        )


def _polyglot_pickle(buf: Any, survey: Survey, kind: str) -> None:
    """A file of another format that also reads as a pickle naming something from offset 0."""
    result = read_pickle(buf, 0, survey.data_classes)
    if any(u.judge()[0] != SAFE for u in result.globals.values()):
        survey.flag(
            DANGEROUS,
            "ambiguous",
            f"the file is both {kind} and a pickle that names code: torch.load reads the pickle",
            "file",
            0,
        )
        survey.add_pickle("pickle at offset 0", result)


# --- zip archives ------------------------------------------------------------------------------


def _survey_zip(buf: Any, survey: Survey) -> None:
    read = torch_zip.read_zip(buf, survey.path)
    survey.zip = read
    index = read.index
    for message, offset in read.ambiguities:
        survey.flag(DANGEROUS, "ambiguous", message, "zip", offset)
    for message, member in read.damage:
        survey.flag(ERROR, "damaged", message, member)
    names = list(index.members)
    if names and all(n.endswith(".npy") for n in names):
        survey.format = "numpy-zip"
        for name in names:
            _npz_member(buf, survey, read, index.members[name])
        return
    survey.format = "torch-zip"
    if torch_zip.is_torchscript(index):
        survey.format = "torchscript"
        survey.flag(
            NEEDS_CODE,
            "torchscript",
            "TorchScript archive: torch.jit.load compiles and runs its code/ members "
            "(torch.load(weights_only=True) refuses it); ckpt reads its weights without them",
            f"{index.prefix}/code",
        )
    elif torch_zip.is_torch_export(index):
        survey.format = "torch-export"
    main_name = f"{index.prefix}/data.pkl"
    records = f"{index.prefix}/data/"
    for info in read.infos:
        # tensor records (nearly every member of a large file) are raw bytes, never pickles
        name = info.filename
        record = name.startswith(records) and not name.endswith(PICKLE_SUFFIXES)
        kind = None if record else _pickle_member(index, info, buf)
        if kind is None:
            if survey.check_crc:
                _check_member_crc(buf, survey, read, info)
            continue
        try:
            data, crc_ok = torch_zip.member_bytes(buf, read, info)
        except CkptError as exc:
            survey.flag(ERROR, "damaged", exc.message, info.filename)
            continue
        if not crc_ok:
            survey.flag(
                ERROR,
                "crc",
                "fails its CRC-32 check: the member is damaged (torch does not check, so its "
                "pickle is judged all the same)",
                info.filename,
            )
        if kind == "zip":
            survey_nested(data, survey, info.filename)
            continue
        result = read_pickle(data, 0, survey.data_classes)
        looked_like = not (result.complete and result.globals) and result.verdict() != DANGEROUS
        if kind == "maybe" and looked_like:
            continue  # bytes that only looked like a pickle
        survey.add_pickle(info.filename, result, data)
        if info.filename == main_name and survey.main is None:
            survey.main, survey.main_member = result, main_name
        if result.complete and result.end < len(data):
            _trailing_in_member(data, survey, info.filename, result.end)
    if read.trailing:
        tail = bytes(buf[read.end :])
        result = read_pickle(tail, 0, survey.data_classes)
        if result.globals:
            survey.flag(
                DANGEROUS,
                "ambiguous",
                f"a pickle follows the archive at offset {read.end}: zip readers ignore it, "
                "pickle readers do not",
                "file",
                read.end,
            )
            survey.add_pickle("pickle after the archive", result)


def _check_member_crc(
    buf: Any, survey: Survey, read: torch_zip.ZipRead, info: torch_zip.Member
) -> None:
    start = read.index.offsets.get(info.filename)
    if start is None or info.compress_type != torch_zip.STORED:
        return
    crc, step = 0, 16 << 20
    with memoryview(buf) as view:
        for at in range(start, start + info.compress_size, step):
            crc = zlib.crc32(view[at : min(at + step, start + info.compress_size)], crc)
    if crc != info.CRC:
        survey.flag(
            ERROR,
            "crc",
            f"CRC-32 mismatch (directory says {info.CRC:08x}, bytes give {crc:08x}): the "
            "member is damaged",
            info.filename,
        )


def _trailing_in_member(data: bytes, survey: Survey, member: str, pos: int) -> None:
    result = read_pickle(data, pos, survey.data_classes)
    if result.globals or any(p.verdict == DANGEROUS for p in result.problems):
        survey.add_pickle(f"{member} (after its STOP)", result)


PICKLE_SUFFIXES = (".pkl", ".debug_pkl", ".pickle")
_PICKLE_STARTS = frozenset(b"\x80(}]cNIJKLFSVXPdGiUlTBCe)")


def _pickle_member(index: torch_zip.ZipIndex, info: torch_zip.Member, buf: Any) -> str | None:
    """How to treat a member: "pickle" (`*.pkl`, or starts with a protocol 2+ header), "maybe"
    (small and starts with a pickle opcode: kept only if it names something), or None (tensor
    storage records, which torch reads as raw bytes, never as pickles)."""
    name = info.filename
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle"
    rest = name[len(index.prefix) + 1 :] if name.startswith(f"{index.prefix}/") else name
    if rest.startswith(("data/", "constants/", "code/")) or info.file_size < 2:
        return None  # storage records (raw bytes); TorchScript source (judged as such)
    offset = index.offsets.get(name)
    if offset is None or info.file_size > 1 << 26:
        return None
    if info.compress_type != torch_zip.STORED:
        return "maybe"
    head = bytes(buf[offset : offset + 4])
    if head == torch_zip.ZIP_MAGIC:
        return "zip"  # a torch file inside (.pt2 weights and sample inputs: torch.load'ed)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "maybe" if head[0] in _PICKLE_STARTS else None


# --- numpy ---------------------------------------------------------------------------------------

_NPY_DTYPES = {
    "f8": "float64",
    "f4": "float32",
    "f2": "float16",
    "i8": "int64",
    "i4": "int32",
    "i2": "int16",
    "i1": "int8",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "b1": "bool",
    "c8": "complex64",
    "c16": "complex128",
}


def parse_npy_header(buf: Any, start: int, where: str) -> NpyArray:
    """A `.npy` header (format versions 1-3): a Python dict literal after the magic."""
    head = bytes(buf[start : start + 12])
    if head[:6] != NPY_MAGIC or len(head) < 10:
        raise UnreadableCheckpoint(f"{where}: not a .npy array")
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack_from("<H", head, 8)
        body = start + 10
    elif major in (2, 3) and len(head) >= 12:
        (hlen,) = struct.unpack_from("<I", head, 8)
        body = start + 12
    else:
        raise UnreadableCheckpoint(f"{where}: .npy format version {major} is not supported")
    if hlen > MAX_NPY_HEADER or body + hlen > len(buf):
        raise UnreadableCheckpoint(f"{where}: .npy header is truncated or too long")
    text = bytes(buf[body : body + hlen]).decode("utf-8" if major == 3 else "latin1", "replace")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise UnreadableCheckpoint(f"{where}: .npy header is not a dict literal") from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= header.keys():
        raise UnreadableCheckpoint(f"{where}: .npy header lacks descr, fortran_order or shape")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UnreadableCheckpoint(f"{where}: .npy shape {shape!r:.40} is not valid")
    descr = header["descr"]
    dtype = None
    big = False
    if isinstance(descr, str) and len(descr) >= 2:
        order, code = descr[0], descr[1:]
        if order in "<>|=" and code in _NPY_DTYPES:
            dtype = _NPY_DTYPES[code]
            big = order == ">" and DTYPE_SIZES[dtype] > 1
    return NpyArray(dtype, str(descr), shape, bool(header["fortran_order"]), body + hlen, big)


def _holds_objects(descr: str) -> bool:
    return "O" in descr


def _survey_npy(buf: Any, survey: Survey, key: str, start: int, member: str = "array") -> None:
    try:
        arr = parse_npy_header(buf, start, f"{survey.path} {member}")
    except CkptError as exc:
        survey.flag(ERROR, "unreadable", exc.message, member)
        return
    if _holds_objects(arr.descr):
        # numpy.load(allow_pickle=True) unpickles what follows the header
        survey.add_pickle(
            f"{member} (object array)", read_pickle(buf, arr.data_offset, survey.data_classes)
        )
        return
    survey.npy[key] = arr
    survey.flag(
        SAFE, "allowlisted", f"numpy array {arr.descr} {list(arr.shape)}: no pickle", member
    )


def _npz_member(buf: Any, survey: Survey, read: torch_zip.ZipRead, info: torch_zip.Member) -> None:
    """One array of an `.npz`: read in place when stored, inflated when compressed (whose
    bytes then cannot be read in place: its data offset is -1)."""
    key = info.filename[: -len(".npy")]
    if info.compress_type == torch_zip.STORED and info.filename in read.index.offsets:
        _survey_npy(buf, survey, key, read.index.offsets[info.filename], info.filename)
        return
    try:
        data, crc_ok = torch_zip.member_bytes(buf, read, info)
    except CkptError as exc:
        survey.flag(ERROR, "damaged", exc.message, info.filename)
        return
    if not crc_ok:
        survey.flag(ERROR, "crc", "fails its CRC-32 check: the member is damaged", info.filename)
    _survey_npy(data, survey, key, 0, info.filename)
    if key in survey.npy:
        arr = survey.npy[key]
        arr.inline, arr.data_offset = data[arr.data_offset :], -1


# --- legacy tar ----------------------------------------------------------------------------------


def _survey_tar(buf: Any, survey: Survey) -> None:
    """torch's oldest format, which torch.load still tries first: its `storages`, `tensors` and
    `pickle` members are unpickled (weights_only=True refuses the format altogether)."""
    survey.flag(
        NEEDS_CODE,
        "format",
        "legacy tar checkpoint: torch.load(weights_only=True) refuses this format, so loading "
        "it takes weights_only=False",
        "file",
    )
    _polyglot_tar(buf, survey)
    import tarfile

    try:
        with tarfile.open(fileobj=_stream(buf), mode="r:") as tar:  # type: ignore[call-overload]
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for name in ("storages", "tensors", "pickle"):
                m = members.get(name)
                if m is None:
                    survey.flag(ERROR, "unreadable", f"tar member {name!r} is missing", name)
                    continue
                start, size = m.offset_data, m.size
                data = bytes(buf[start : start + size])
                if name == "storages":
                    _tar_storages(data, survey)
                elif name == "tensors":
                    _tar_tensors(data, survey)
                else:
                    survey.main = survey.add_pickle("pickle", read_pickle(data, 0))
                    survey.main_member = "pickle"
            for name, m in members.items():
                if name in ("storages", "tensors", "pickle"):
                    continue
                data = bytes(buf[m.offset_data : m.offset_data + min(m.size, 1 << 26)])
                result = read_pickle(data, 0, survey.data_classes)
                if result.globals:
                    survey.add_pickle(name, result)
    except (tarfile.TarError, ValueError, OSError, EOFError) as exc:
        survey.flag(ERROR, "unreadable", f"damaged tar archive ({exc})", "file")


def _polyglot_tar(buf: Any, survey: Survey) -> None:
    result = read_pickle(buf, 0, survey.data_classes)
    if result.complete:
        survey.flag(
            DANGEROUS,
            "ambiguous",
            "the file is both a tar archive and a pickle: torch.load reads the tar's members, "
            "pickle readers and most scanners read the pickle at offset 0",
            "file",
            0,
        )
        survey.add_pickle("pickle at offset 0", result)


def _tar_storages(data: bytes, survey: Survey) -> None:
    count = survey.add_pickle("storages (count)", read_pickle(data, 0))
    if not count.complete or not isinstance(count.root, int) or count.root < 0:
        return
    pos = count.end
    for n in range(count.root):
        args = survey.add_pickle(f"storages (storage {n})", read_pickle(data, pos))
        if not args.complete:
            return
        root = args.root
        storage_type = root[2] if isinstance(root, tuple) and len(root) == 3 else None
        dtype = (
            STORAGE_DTYPES.get(storage_type.name) if isinstance(storage_type, TorchMarker) else None
        )
        if dtype is None or args.end + 8 > len(data):
            survey.flag(ERROR, "unreadable", "tar storages member is malformed", "storages")
            return
        (numel,) = struct.unpack_from("<q", data, args.end)
        pos = args.end + 8 + max(0, numel) * DTYPE_SIZES[dtype]
    survey.add_pickle("storages (views)", read_pickle(data, pos))


def _tar_tensors(data: bytes, survey: Survey) -> None:
    count = survey.add_pickle("tensors (count)", read_pickle(data, 0))
    if not count.complete or not isinstance(count.root, int) or count.root < 0:
        return
    pos = count.end
    for n in range(count.root):
        args = survey.add_pickle(f"tensors (tensor {n})", read_pickle(data, pos))
        if not args.complete or args.end + 8 > len(data):
            return
        (ndim,) = struct.unpack_from("<i", data, args.end)
        pos = args.end + 8 + 16 * max(0, ndim) + 8


# --- describing bytes ----------------------------------------------------------------------------


def describe_bytes(head: bytes) -> str:
    """What a file that is no checkpoint looks like it is."""
    for magic, what in OTHER_FORMATS:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return (
            "binary data of no format we know (not a torch zip, legacy torch file, pickle, "
            "numpy or safetensors file)"
        )
    if text.lstrip().startswith(("{", "[")):
        return "a JSON or text file"
    return "a text file"
