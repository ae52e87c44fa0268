"""`ckpt scan`: what loading a checkpoint without restrictions would reach, read from the bytes.

Nothing is imported and nothing is called. Every pickle a file holds (all `*.pkl` members of a
zip, every consecutive pickle of a legacy file, DCP `.metadata` and the objects DCP stores as
bytes) is walked opcode by opcode with `pickletools.genops` over a symbolic stack. The stack and
the memo carry only constants (strings, integers, tuples of them), so a STACK_GLOBAL whose module
and name were memoised long before is still named; one whose operands were computed at load time
cannot be named statically and is reported as dangerous in itself. Each global is judged by
`safe_pickle.classify_ref`: safe (our reader's allowlist), unknown (a class whose code a real
load would import and run) or dangerous.

Also reported: BUILD applied to a global itself (an attempt to alter a loader's shared state),
opcodes that load globals by registry code (EXT1/2/4), persistent ids that are not torch
storages, pickles nested in bytes values, zip members whose CRC-32 does not match, duplicate
member names, safetensors headers that break the format rules, sharded indexes that point
outside their folder, and anything our restricted reader refuses.
"""

from __future__ import annotations

import _compat_pickle
import json
import mmap
import os
import pickletools
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import load
from .errors import EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_OK, CkptError
from .formats import dcp
from .formats.legacy import LEGACY_MAGIC
from .formats.safe_pickle import classify_ref
from .formats.safetensors_io import MAX_HEADER, read_header

# Severity, mildest first. safe and unknown leave the exit code at 0; corrupt makes it 1;
# dangerous makes it 3 (and wins over corrupt: it is the one a user must not miss).
SEVERITIES = ("safe", "unknown", "corrupt", "dangerous")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# What a folder scan picks up (`.pth.tar` ends in `.tar`); DCP folders are found by `.metadata`.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl", ".pickle", ".safetensors")
INDEX_SUFFIX = ".index.json"

MAX_NESTING = 4  # pickles inside bytes inside pickles ... scanned this deep
MAX_STACK = 10_000_000  # symbolic stack items; a real checkpoint needs a few thousand
MAX_CONSTANT = 10_000  # longer strings are not kept on the symbolic stack
MAX_TRAILING_PICKLES = 64
_CHUNK = 16 << 20
ZIP_MAGIC = b"PK\x03\x04"
_PROTO0_START = b"(}]cNIJKLFSVXPd"


@dataclass
class Finding:
    """One thing the scan reports, with where in the file it was found."""

    severity: str  # safe | unknown | corrupt | dangerous
    kind: str  # global | unresolvable-global | extension-code | global-tampering | nested-pickle
    # | persistent-id | torchscript | duplicate-member | path-traversal | crc | header | unreadable
    message: str
    name: str | None = None  # module.name of a global
    member: str | None = None  # zip member, pickle number, `.metadata`, nested location
    offset: int | None = None  # byte offset inside member (or inside the file) of the first one
    count: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "name": self.name,
            "member": self.member,
            "offset": self.offset,
            "count": self.count,
            "message": self.message,
        }


@dataclass
class FileScan:
    """The scan of one file or folder (DCP, sharded index)."""

    path: Path
    format: str
    findings: list[Finding] = field(default_factory=list)
    pickles: int = 0
    _by_key: dict[tuple[Any, ...], Finding] = field(default_factory=dict, repr=False)

    def add(self, finding: Finding, key: tuple[Any, ...] | None = None) -> None:
        """Record a finding; findings with the same key are counted once (first offset kept)."""
        if key is not None:
            seen = self._by_key.get(key)
            if seen is not None:
                seen.count += 1
                return
            self._by_key[key] = finding
        self.findings.append(finding)

    def worst(self) -> str:
        return max((f.severity for f in self.findings), key=_RANK.__getitem__, default="safe")

    @property
    def status(self) -> str:
        """clean (only safe and unknown findings), dangerous, or error (damaged, unreadable)."""
        worst = self.worst()
        return {"dangerous": "dangerous", "corrupt": "error"}.get(worst, "clean")

    def as_dict(self) -> dict[str, Any]:
        counts = dict.fromkeys(SEVERITIES, 0)
        for f in self.findings:
            counts[f.severity] += 1
        return {
            "path": str(self.path),
            "format": self.format,
            "status": self.status,
            "pickles": self.pickles,
            "counts": counts,
            "findings": [
                f.as_dict() for f in sorted(self.findings, key=lambda f: -_RANK[f.severity])
            ],
        }


@dataclass
class ScanReport:
    """Every file scanned, and the exit code the result calls for."""

    files: list[FileScan]

    @property
    def exit_code(self) -> int:
        statuses = {f.status for f in self.files}
        if "dangerous" in statuses:
            return EXIT_CHECK_FAILED
        if "error" in statuses:
            return EXIT_ERROR
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        summary = {"files": len(self.files), "clean": 0, "dangerous": 0, "error": 0}
        for f in self.files:
            summary[f.status] += 1
        return {
            "files": [f.as_dict() for f in self.files],
            "summary": summary,
            "exit_code": self.exit_code,
        }


# --- byte windows ----------------------------------------------------------------------------


class Window:
    """A read-only, seekable view of part of a buffer (an mmap'ed file or bytes): reads never
    ask for more than the window holds, whatever length a hostile header claims."""

    def __init__(self, buf: Any, base: int = 0, size: int | None = None) -> None:
        self.buf = buf
        self.base = base
        self.size = len(buf) - base if size is None else max(0, min(size, len(buf) - base))
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = max(0, min(n, self.size - self.pos))
        start = self.base + self.pos
        self.pos += n
        return bytes(self.buf[start : start + n])

    def readline(self, limit: int = -1) -> bytes:
        end = self.size if limit is None or limit < 0 else min(self.size, self.pos + limit)
        start = self.base + self.pos
        idx = self.buf.find(b"\n", start, self.base + end)
        stop = (self.base + end) if idx < 0 else idx + 1
        self.pos = stop - self.base
        return bytes(self.buf[start:stop])

    def seek(self, pos: int, whence: int = 0) -> int:
        target = {0: pos, 1: self.pos + pos, 2: self.size + pos}[whence]
        if target < 0:
            raise ValueError("negative seek position")
        self.pos = target
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def slice(self, start: int, size: int) -> Window:
        return Window(self.buf, self.base + start, min(size, max(0, self.size - start)))

    def crc(self) -> int:
        value = 0
        for start in range(0, self.size, _CHUNK):
            chunk = self.buf[self.base + start : self.base + min(self.size, start + _CHUNK)]
            value = zlib.crc32(chunk, value)
        return value


class _MappedFile:
    """A whole file as a Window (mmap'ed; empty files are an empty bytes buffer)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed in close()
        size = os.fstat(self.f.fileno()).st_size
        self.map = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self.window = Window(self.map if self.map is not None else b"")

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        self.f.close()

    def __enter__(self) -> Window:
        return self.window

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the static pickle scanner -----------------------------------------------------------------


class _Unknown:
    """A value only known at load time."""

    def __repr__(self) -> str:
        return "<computed>"


UNKNOWN = _Unknown()


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


_STR_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
     "SHORT_BINSTRING"}
)  # fmt: skip
_BYTES_OPS = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"})
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_NESTED_PICKLE = re.compile(rb"\x80[\x02-\x05]|[(]|c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n", re.S)


@dataclass
class PickleOutcome:
    """How one pickle's scan ended."""

    complete: bool  # reached STOP
    end: int  # stream position after it
    value: Any = None  # the constant left on the stack at STOP, if any
    opcodes: int = 0


class _Scope:
    """Where findings of one pickle go, and how its globals are judged."""

    def __init__(
        self,
        scan: FileScan,
        member: str,
        depth: int = 0,
        judge: Callable[[str, str], tuple[str, str]] | None = None,
        legacy: bool = False,
    ) -> None:
        self.scan = scan
        self.member = member
        self.depth = depth
        self.judge = judge or _judge
        self.legacy = legacy


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The name as pickle (protocols 0-2) and our reader resolve it: py2 names mapped; a py2
    module that was not mapped does not exist in Python 3 and cannot be imported."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _judge(module: str, name: str) -> tuple[str, str]:
    """(severity, why) for a global."""
    kind = classify_ref(*_py3_name(module, name))
    why = {
        "safe": "allowlisted",
        "unknown": "a real load imports and runs its code; inert here",
        "dangerous": "can run commands or code, import modules or load pickles",
    }[kind]
    return kind, why


def _record_global(scope: _Scope, module: str, name: str, pos: int) -> None:
    severity, why = scope.judge(module, name)
    mapped = _py3_name(module, name)
    qualified = ".".join(mapped)
    if mapped != (module, name):
        why += f" (written as {module}.{name})"
    scope.scan.add(
        Finding(severity, "global", why, qualified, scope.member, pos),
        ("global", scope.member, qualified),
    )


def _flag(scope: _Scope, severity: str, kind: str, message: str, pos: int | None) -> None:
    scope.scan.add(
        Finding(severity, kind, message, None, scope.member, pos), (kind, scope.member, message)
    )


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return f"{value.module}.{value.name}"
    if isinstance(value, tuple):
        return (
            "(" + ", ".join(_describe(v) for v in value[:5]) + (", ..." if len(value) > 5 else ")")
        )
    if isinstance(value, str):
        return repr(value[:40])
    return repr(value) if isinstance(value, int) else "<computed>"


class _Machine:
    """The symbolic stack: constants are tracked, everything else is UNKNOWN."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def floor(self) -> int:
        return self.marks[-1] if self.marks else 0

    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise _ScanLimit(f"pickle stack grows past {MAX_STACK:,} items")
        self.stack.append(value)

    def pop(self) -> Any:
        # Underflow would stop a real load here; carrying on only reports more, never less.
        return self.stack.pop() if len(self.stack) > self.floor() else UNKNOWN

    def top(self) -> Any:
        return self.stack[-1] if len(self.stack) > self.floor() else UNKNOWN

    def pop_mark(self) -> list[Any]:
        k = self.marks.pop() if self.marks else 0
        items = self.stack[k:]
        del self.stack[k:]
        return items

    def generic(self, op: pickletools.OpcodeInfo) -> None:
        before = op.stack_before
        if pickletools.markobject in before:
            self.pop_mark()
            for _ in range(before.index(pickletools.markobject)):
                self.pop()
        else:
            for _ in before:
                self.pop()
        for item in op.stack_after:
            if item is pickletools.markobject:
                self.marks.append(len(self.stack))
            else:
                self.push(UNKNOWN)


class _ScanLimit(Exception):
    pass


def scan_pickle(stream: Any, scope: _Scope) -> PickleOutcome:
    """Scan one pickle from stream's position to its STOP; findings go to scope."""
    vm = _Machine()
    outcome = PickleOutcome(False, 0)
    pos = stream.tell()
    scope.scan.pickles += 1
    try:
        for op, arg, at in pickletools.genops(stream):
            pos = at if at is not None else pos
            outcome.opcodes += 1
            _step(vm, op, arg, pos, scope)
            if op.name == "STOP":
                top = vm.top()
                outcome.value = top if isinstance(top, (int, str)) else None
                outcome.complete = True
    except _ScanLimit as exc:
        _flag(scope, "corrupt", "unreadable", f"{exc}; not a checkpoint pickle", pos)
    except MemoryError:
        _flag(scope, "corrupt", "unreadable", "pickle asks for more memory than it holds", pos)
    except Exception as exc:  # genops on hostile bytes: truncated, unknown opcode, bad argument
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        _flag(scope, "corrupt", "unreadable", f"pickle is malformed or truncated: {text}", pos)
    outcome.end = stream.tell()
    return outcome


def _step(vm: _Machine, op: pickletools.OpcodeInfo, arg: Any, pos: int, scope: _Scope) -> None:
    name = op.name
    if name in _STR_OPS:
        if isinstance(arg, str):
            _maybe_nested(arg, pos, scope)
            vm.push(arg if len(arg) <= MAX_CONSTANT else UNKNOWN)
        else:
            vm.push(UNKNOWN)
    elif name in _BYTES_OPS:
        if isinstance(arg, (bytes, bytearray)):
            _maybe_nested(bytes(arg), pos, scope)
        vm.push(UNKNOWN)  # bytes are never module names; not kept, so memory stays flat
    elif name in _INT_OPS:
        vm.push(arg if isinstance(arg, int) else UNKNOWN)
    elif name == "MARK":
        vm.marks.append(len(vm.stack))
    elif name == "MEMOIZE":
        vm.memo[len(vm.memo)] = vm.top()
    elif name in _PUT_OPS:
        vm.memo[int(arg)] = vm.top()
    elif name in _GET_OPS:
        vm.push(vm.memo.get(int(arg), UNKNOWN))
    elif name == "DUP":
        vm.push(vm.top())
    elif name == "GLOBAL":
        module, _, gname = str(arg).partition(" ")
        _record_global(scope, module, gname, pos)
        vm.push(_Global(module, gname))
    elif name == "INST":
        module, _, gname = str(arg).partition(" ")
        _record_global(scope, module, gname, pos)
        vm.pop_mark()
        vm.push(UNKNOWN)
    elif name == "STACK_GLOBAL":
        gname, module = vm.pop(), vm.pop()
        if isinstance(module, str) and isinstance(gname, str):
            _record_global(scope, module, gname, pos)
            vm.push(_Global(module, gname))
        else:
            _flag(
                scope,
                "dangerous",
                "unresolvable-global",
                "STACK_GLOBAL whose module or name is computed while loading "
                f"(module {_describe(module)}, name {_describe(gname)}): it can name anything",
                pos,
            )
            vm.push(UNKNOWN)
    elif name in ("EXT1", "EXT2", "EXT4"):
        _flag(
            scope,
            "dangerous",
            "extension-code",
            f"{name} loads a global by copyreg extension code {arg}, which no static scan can name",
            pos,
        )
        vm.push(UNKNOWN)
    elif name == "BUILD":
        vm.pop()
        target = vm.top()
        if isinstance(target, _Global):
            _flag(
                scope,
                "dangerous",
                "global-tampering",
                f"BUILD sets state on {target.module}.{target.name} itself, not on an instance: "
                "an attempt to alter a loader's shared state",
                pos,
            )
    elif name == "TUPLE":
        vm.push(tuple(vm.pop_mark()))
    elif name in _TUPLE_N:
        items = [vm.pop() for _ in range(_TUPLE_N[name])]
        vm.push(tuple(reversed(items)))
    elif name == "EMPTY_TUPLE":
        vm.push(())
    elif name == "PERSID":
        _persistent_id(scope, str(arg), pos)
        vm.push(UNKNOWN)
    elif name == "BINPERSID":
        _persistent_id(scope, vm.pop(), pos)
        vm.push(UNKNOWN)
    elif name == "STOP":
        pass
    else:
        vm.generic(op)


def _persistent_id(scope: _Scope, pid: Any, pos: int) -> None:
    if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
        if isinstance(pid[1], _Global):
            return  # the storage class itself was judged where the pickle named it
    elif scope.legacy and isinstance(pid, tuple) and pid and pid[0] == "module":
        return  # legacy torch files record module sources this way
    _flag(
        scope,
        "unknown",
        "persistent-id",
        f"persistent id {_describe(pid)} is not a torch storage; torch refuses it, other "
        "loaders hand it to their own persistent_load",
        pos,
    )


def _maybe_nested(value: str | bytes, pos: int, scope: _Scope) -> None:
    """A bytes (or latin-1 string) value that is itself a pickle or a torch zip: scan it too."""
    if len(value) < 8:
        return
    if isinstance(value, str):
        if value[:1] not in ("\x80", "(", "c", "P"):
            return
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError:
            return
    else:
        data = value
    is_zip = data.startswith(ZIP_MAGIC)
    if not is_zip and not (_NESTED_PICKLE.match(data) and data.rstrip()[-1:] == b"."):
        return
    where = f"{scope.member} > bytes@{pos}"
    if scope.depth + 1 > MAX_NESTING:
        _flag(
            scope,
            "dangerous",
            "nested-pickle",
            f"pickles nested more than {MAX_NESTING} levels deep; not scanned further",
            pos,
        )
        return
    inner = FileScan(scope.scan.path, "nested")
    if is_zip:
        _scan_zip(Window(data), inner, where, scope.depth + 1, check_crc=True)
    else:
        outcome = scan_pickle(Window(data), _Scope(inner, where, scope.depth + 1))
        if not outcome.complete:
            return  # bytes that only start like a pickle: data, not a payload
    globals_found = [f for f in inner.findings if f.kind != "unreadable"]
    if not globals_found:
        return
    worst = max((f.severity for f in globals_found), key=_RANK.__getitem__)
    severity = "dangerous" if worst == "dangerous" else "unknown"
    what = "torch zip" if is_zip else "pickle"
    _flag(
        scope,
        severity,
        "nested-pickle",
        f"a bytes value of {len(data)} bytes is itself a {what}; code that unpickles it would "
        "reach the globals listed under this location",
        pos,
    )
    _merge(scope.scan, inner)


# --- consecutive pickles: plain pickle files, legacy torch files ---------------------------------


def _merge(into: FileScan, other: FileScan) -> None:
    into.pickles += other.pickles
    for f in other.findings:
        into.add(f, (f.kind, f.member, f.name, f.message))


def _scan_pickles(win: Window, scan: FileScan, label: str, depth: int = 0) -> bool:
    """Scan a plain pickle or a legacy torch file (five pickles, then raw storage bytes).

    Returns False when the bytes are not a pickle at all: the first pickle neither completes
    nor names anything. Globals named before a pickle breaks are kept: a real load would
    already have called them when it reached the broken part.
    """
    trial = FileScan(scan.path, scan.format)
    first = scan_pickle(win, _Scope(trial, label.strip() or "pickle", depth, legacy=True))
    if not first.complete and all(f.kind == "unreadable" for f in trial.findings):
        return False
    if first.complete and first.value == LEGACY_MAGIC:
        for f in trial.findings:
            f.member = f"{label}pickle 1 (magic number)"
    _merge(scan, trial)
    if not first.complete:
        return True
    if first.value == LEGACY_MAGIC:
        scan.format = "torch-legacy" if scan.format == "pickle" else scan.format
        for i, what in enumerate(("protocol", "sys_info", "main", "storage keys"), start=2):
            outcome = scan_pickle(
                win, _Scope(scan, f"{label}pickle {i} ({what})", depth, legacy=True)
            )
            if not outcome.complete:
                return True
        return True  # raw storage bytes follow: torch never unpickles them
    # Bytes after a plain pickle: pickle.load stops at STOP, but code calling it again would read
    # the next pickle, so further complete pickles are scanned too.
    for i in range(2, 2 + MAX_TRAILING_PICKLES):
        if win.tell() >= win.size:
            break
        start = win.tell()
        trial = FileScan(scan.path, "trailing")
        outcome = scan_pickle(win, _Scope(trial, f"{label}pickle {i}", depth))
        if not outcome.complete and any(f.severity == "dangerous" for f in trial.findings):
            _merge(scan, trial)  # a partial pickle that calls something before it breaks
            break
        if not outcome.complete:
            _flag(
                _Scope(scan, label or "file"),
                "safe",
                "trailing-data",
                f"{win.size - start} bytes after the last pickle are not a pickle "
                "(pickle.load ignores them)",
                start,
            )
            break
        _merge(scan, trial)
    return True


# --- zip archives --------------------------------------------------------------------------------


def _member_bytes(win: Window, info: zipfile.ZipInfo) -> tuple[Window | None, str | None]:
    """The stored data of a member (as a window into the archive), or why it cannot be had."""
    header = win.slice(info.header_offset, 30).read()
    if len(header) != 30 or header[:4] != ZIP_MAGIC:
        return None, "its local header is missing or damaged"
    name_len, extra_len = struct.unpack("<2H", header[26:30])
    local_name = win.slice(info.header_offset + 30, name_len).read()
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if local_name.decode(encoding, "replace") != info.orig_filename:
        return None, f"its local header names {local_name[:80]!r}; readers may disagree"
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > win.size:
        return None, "its data runs past the end of the archive (truncated file?)"
    return win.slice(start, info.compress_size), None


def _inflate(data: Window, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """Decompress a deflated member piece by piece, never past the size it declares."""
    d = zlib.decompressobj(-15)
    produced = 0
    while True:
        chunk = data.read(_CHUNK)
        out = d.decompress(chunk, _CHUNK) if chunk else d.flush()
        while True:
            produced += len(out)
            if produced > info.file_size:
                raise ValueError("decompresses to more bytes than it declares")
            if out:
                yield out
            if not d.unconsumed_tail:
                break
            out = d.decompress(d.unconsumed_tail, _CHUNK)
        if not chunk:
            return


def _is_pickle_member(name: str) -> bool:
    return name.endswith((".pkl", ".debug_pkl"))


def _scan_zip(win: Window, scan: FileScan, label: str, depth: int, check_crc: bool) -> None:
    """Scan every pickle member of a zip (torch's or TorchScript's) and check every CRC."""
    prefix = f"{label}:" if label else ""
    try:
        zf = zipfile.ZipFile(win)  # type: ignore[arg-type]  # a Window is a seekable binary file
        infos = zf.infolist()
    except Exception as exc:  # zipfile raises many types on damaged directories
        _flag(
            _Scope(scan, label or "zip"),
            "corrupt",
            "unreadable",
            f"damaged zip archive ({str(exc)[:120] or type(exc).__name__}); the file is "
            "probably truncated or corrupt",
            None,
        )
        return
    names: set[str] = set()
    torchscript = False
    for info in infos:
        member = f"{prefix}{info.filename}"
        scope = _Scope(scan, member, depth)
        if info.filename in names:
            _flag(
                scope,
                "dangerous",
                "duplicate-member",
                f"the zip holds {info.filename!r} more than once; readers disagree on which "
                "one counts, which is a way to show a scanner one pickle and a loader another",
                info.header_offset,
            )
        names.add(info.filename)
        if "/code/" in f"/{info.filename}" or info.filename.endswith("constants.pkl"):
            torchscript = True
        data, problem = _member_bytes(win, info)
        if data is None:
            _flag(scope, "corrupt", "unreadable", f"member {info.filename!r}: {problem}", None)
            continue
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                _flag(scope, "corrupt", "unreadable", "stored member with two sizes", None)
                continue
            crc = data.crc() if check_crc else info.CRC
            content = data.slice(0, data.size) if _is_pickle_member(info.filename) else None
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            want = _is_pickle_member(info.filename)
            crc, parts = 0, []
            try:
                for piece in _inflate(data, info):
                    crc = zlib.crc32(piece, crc)
                    if want:
                        parts.append(piece)
            except (zlib.error, ValueError) as exc:
                _flag(scope, "corrupt", "unreadable", f"cannot be decompressed ({exc})", None)
                continue
            content = Window(b"".join(parts)) if want else None
        else:
            _flag(
                scope,
                "corrupt",
                "unreadable",
                f"compressed with method {info.compress_type}, which torch cannot read",
                None,
            )
            continue
        if crc != info.CRC:
            _flag(
                scope,
                "corrupt",
                "crc",
                f"CRC-32 mismatch (directory says {info.CRC:08x}, bytes give {crc:08x}): the "
                "member is damaged",
                None,
            )
        if content is not None and not _scan_pickles(content, scan, f"{member} ", depth):
            _flag(scope, "corrupt", "unreadable", "member named .pkl is not a pickle", 0)
    if torchscript:
        scan.format = "torchscript"
        _flag(
            _Scope(scan, label or "zip"),
            "unknown",
            "torchscript",
            "TorchScript archive: torch.jit.load compiles and runs its code/ members "
            "(torch.load with weights_only=True refuses it); load it only if you trust it",
            None,
        )


# --- safetensors, sharded indexes, DCP -----------------------------------------------------------


def _scan_safetensors(path: Path, scan: FileScan) -> None:
    try:
        header = read_header(path)
    except CkptError as exc:
        _flag(_Scope(scan, "header"), "corrupt", "header", exc.message, 0)
        return
    scan.add(
        Finding(
            "safe",
            "header",
            f"header valid: {len(header.tensors)} tensors, no code (safetensors holds no pickle)",
            member="header",
            offset=0,
        )
    )


def _scan_index(path: Path, scan: FileScan) -> list[Path]:
    """Check a sharded index; returns the shards that are inside its folder and present."""
    scope = _Scope(scan, "index")
    try:
        if path.stat().st_size > MAX_HEADER:
            raise ValueError("larger than 100 MB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _flag(scope, "corrupt", "header", f"index is not valid JSON ({str(exc)[:120]})", None)
        return []
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        _flag(scope, "corrupt", "header", "index has no weight_map of key -> shard file", None)
        return []
    folder = path.parent.resolve()
    shards: list[Path] = []
    for shard in sorted(set(weight_map.values())):
        target = (folder / shard).resolve()
        if (
            not shard
            or "/" in shard
            or "\\" in shard
            or shard in (".", "..")
            or Path(shard).is_absolute()
            or target.parent != folder
        ):
            _flag(
                scope,
                "dangerous",
                "path-traversal",
                f"shard {shard!r} points outside the index's folder: a loader following it "
                "reads a file the checkpoint does not ship",
                None,
            )
        elif not target.is_file():
            _flag(scope, "corrupt", "unreadable", f"shard {shard!r} is missing", None)
        else:
            shards.append(folder / shard)
    if scan.worst() == "safe" and shards and all(s.suffix == ".safetensors" for s in shards):
        _load_check(path, scan)  # every key in its shard, headers valid
    return shards


def _dcp_judge(module: str, name: str) -> tuple[str, str]:
    qualified = f"{module}.{name}"
    if qualified in dcp.DCP_METADATA_CLASSES:
        return "safe", "a class genuine DCP metadata uses"
    severity, why = _judge(module, name)
    if severity == "safe":
        return severity, why
    return (
        "dangerous",
        "no DCP metadata names this, and torch's DCP reader unpickles .metadata without "
        "restrictions",
    )


def _scan_dcp(folder: Path, scan: FileScan, depth: int) -> None:
    meta = folder / ".metadata"
    try:
        with _MappedFile(meta) as win:
            outcome = scan_pickle(win, _Scope(scan, ".metadata", depth, judge=_dcp_judge))
    except OSError as exc:
        _flag(_Scope(scan, ".metadata"), "corrupt", "unreadable", f"cannot read ({exc})", None)
        return
    if not outcome.complete:
        return
    try:
        index = dcp.read_dcp(folder)
    except CkptError as exc:
        _flag(_Scope(scan, ".metadata"), "corrupt", "unreadable", exc.message, None)
        return
    storage = dcp.fields(index.pickle.root).get("storage_data")
    if not isinstance(storage, dict):
        return
    for key, info in storage.items():
        _scan_dcp_item(folder, scan, dcp.fields(key).get("fqn"), dcp.fields(info), depth)


def _scan_dcp_item(
    folder: Path, scan: FileScan, fqn: Any, info: dict[str, Any], depth: int
) -> None:
    """A DCP item's bytes: torch.save output, which torch reads back with torch.load (for
    non-tensor items with weights_only=False)."""
    rel, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
    where = f"item {str(fqn)!r}"
    if isinstance(rel, str) and isinstance(offset, int):
        where += f" ({rel}@{offset})"
    scope = _Scope(scan, where, depth)
    if not isinstance(rel, str) or not rel or "/" in rel or "\\" in rel or rel in (".", ".."):
        _flag(
            scope,
            "dangerous",
            "path-traversal",
            f"data file {str(rel)!r} is outside the DCP folder: torch's reader would open it",
            None,
        )
        return
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        _flag(scope, "corrupt", "unreadable", "invalid offset or length in .metadata", None)
        return
    if info.get("transform_descriptors"):
        _flag(scope, "unknown", "unreadable", "stored transformed (compressed); not scanned", None)
        return
    path = folder / rel
    if not path.is_file():
        _flag(scope, "corrupt", "unreadable", f"data file {rel!r} is missing", None)
        return
    with _MappedFile(path) as win:
        if offset + length > win.size:
            _flag(scope, "corrupt", "unreadable", f"runs past the end of {rel}", None)
            return
        item = win.slice(offset, length)
        label = where
        if item.read(4) == ZIP_MAGIC:
            item.seek(0)
            _scan_zip(item, scan, label, depth + 1, check_crc=True)
        else:
            item.seek(0)
            _scan_pickles(item, scan, f"{label} ", depth + 1)


# --- files -------------------------------------------------------------------------------------


def _load_check(path: Path, scan: FileScan) -> None:
    """What our restricted reader (used by every other command) says about the file."""
    try:
        load(path)
    except CkptError as exc:
        _flag(_Scope(scan, "file"), "corrupt", "unreadable", exc.message, None)


def _sniff(path: Path, head: bytes) -> str:
    if head[:4] == ZIP_MAGIC:
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" or (head[:1] and head[:1] in _PROTO0_START):
        return "pickle"
    if path.suffix == ".safetensors":
        return "safetensors"
    return "unknown"


def scan_file(path: Path, depth: int = 0) -> tuple[FileScan, list[Path]]:
    """Scan one file; also returns shard files an index names (to be scanned next)."""
    if path.name.endswith(INDEX_SUFFIX):
        scan = FileScan(path, "sharded index")
        return scan, _scan_index(path, scan)
    scan = FileScan(path, "unknown")
    try:
        with _MappedFile(path) as win:
            if win.size == 0:
                _flag(_Scope(scan, "file"), "corrupt", "unreadable", "empty file", None)
                return scan, []
            head = win.slice(0, 16).read()
            scan.format = _sniff(path, head)
            if scan.format == "torch-zip":
                _scan_zip(win, scan, "", depth, check_crc=True)
            elif scan.format == "safetensors":
                _scan_safetensors(path, scan)
                return scan, []
            else:
                scan.format = "pickle"
                if not _scan_pickles(win, scan, "", depth):
                    scan.format = "unknown"
                    _flag(
                        _Scope(scan, "file"),
                        "corrupt",
                        "unreadable",
                        "not a checkpoint format we know (not a torch zip, legacy torch file, "
                        "pickle or safetensors)",
                        0,
                    )
                    return scan, []
    except OSError as exc:
        _flag(_Scope(scan, "file"), "corrupt", "unreadable", f"cannot read ({exc})", None)
        return scan, []
    if scan.worst() != "corrupt" and scan.format != "torchscript":
        _load_check(path, scan)  # TorchScript: torch.load refuses it, our reader has no use for it
    return scan, []


def scan_dcp_folder(folder: Path) -> FileScan:
    scan = FileScan(folder, "dcp")
    _scan_dcp(folder, scan, 0)
    return scan


def _natural(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def targets(path: Path) -> list[Path]:
    """The files and DCP folders a path names: itself, or everything in a folder tree."""
    if not path.is_dir():
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        here = Path(root)
        if ".metadata" in files:
            found.append(here)
        for name in files:
            if name.endswith(INDEX_SUFFIX) or name.endswith(CHECKPOINT_SUFFIXES):
                found.append(here / name)
    return sorted(found, key=_natural)


def scan_paths(paths: list[Path]) -> ScanReport:
    """Scan files and folders; never raises for anything a file contains."""
    results: list[FileScan] = []
    done: set[Path] = set()
    queue = list(paths)
    while queue:
        path = queue.pop(0)
        if not path.exists() and not path.is_symlink():
            scan = FileScan(path, "missing")
            _flag(_Scope(scan, "file"), "corrupt", "unreadable", "no such file or folder", None)
            results.append(scan)
            continue
        found = targets(path)
        if path.is_dir() and not found:
            scan = FileScan(path, "folder")
            _flag(
                _Scope(scan, "folder"),
                "corrupt",
                "unreadable",
                "folder holds no checkpoint files (" + " ".join(CHECKPOINT_SUFFIXES) + ", "
                "*.index.json, DCP folders)",
                None,
            )
            results.append(scan)
            continue
        extra: list[Path] = []
        for target in found:
            key = target.resolve()
            if key in done:
                continue
            done.add(key)
            if target.is_dir():
                results.append(scan_dcp_folder(target))
            else:
                scan, shards = scan_file(target)
                results.append(scan)
                extra.extend(s for s in shards if s.resolve() not in done)
        queue[:0] = extra
    return ScanReport(results)
