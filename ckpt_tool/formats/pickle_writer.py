"""Writes our object model (containers, TensorRecords, inert records) back as a torch pickle.

Protocol 2 opcodes only, the globals torch's own `torch.save` emits for tensors, so the output
loads with `torch.load(weights_only=True)`. Inert records are written back under the names the
input used, so what we did not touch survives; nothing is imported to do it.
"""

from __future__ import annotations

import collections
import struct
from typing import Any

from ckpt_tool.errors import WriteFailed

from .safe_pickle import (
    DTYPE_SIZES,
    NUMPY_DTYPES,
    STORAGE_DTYPES,
    DType,
    Inert,
    NumpyArray,
    QuantParams,
    StorageRef,
    TensorRecord,
    TorchMarker,
)

DTYPE_STORAGES = {v: k for k, v in STORAGE_DTYPES.items() if k != "UntypedStorage"}
NUMPY_CODES = {v: k for k, v in NUMPY_DTYPES.items() if k != "?"}
_PY2_NAMES = {"builtins": "__builtin__", "copyreg": "copy_reg"}


class PickleWriter:
    """Serialises one object graph; storages are numbered in order of first appearance."""

    def __init__(self, keep_device: bool = False) -> None:
        self.keep_device = keep_device
        self.out = bytearray()
        self.memo: dict[int, int] = {}
        self.global_memo: dict[tuple[str, str], int] = {}
        self.next_index = 0
        self.keep: list[Any] = []  # keep memoised objects alive so ids stay unique
        self.storage_keys: dict[int, str] = {}
        self.storages: list[tuple[str, StorageRef]] = []

    # -- primitives
    def _op(self, code: bytes, payload: bytes = b"") -> None:
        self.out += code + payload

    def _put(self, obj: Any) -> None:
        self.memo[id(obj)] = self._put_index()
        self.keep.append(obj)

    def _put_index(self) -> int:
        idx = self.next_index
        self.next_index += 1
        self._op(b"q", bytes([idx])) if idx < 256 else self._op(b"r", struct.pack("<I", idx))
        return idx

    def _get(self, obj: Any) -> bool:
        idx = self.memo.get(id(obj))
        if idx is None:
            return False
        self._binget(idx)
        return True

    def _binget(self, idx: int) -> None:
        self._op(b"h", bytes([idx])) if idx < 256 else self._op(b"j", struct.pack("<I", idx))

    def _global(self, module: str, name: str) -> None:
        # each global written once, then fetched from the memo (as torch.save's pickler does)
        module = _PY2_NAMES.get(module, module)
        idx = self.global_memo.get((module, name))
        if idx is not None:
            self._binget(idx)
            return
        self._op(b"c", f"{module}\n{name}\n".encode())
        self.global_memo[(module, name)] = self._put_index()

    def _int(self, v: int) -> None:
        if 0 <= v < 256:
            self._op(b"K", bytes([v]))
        elif 0 <= v < 65536:
            self._op(b"M", struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            self._op(b"J", struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self._op(b"\x8a", bytes([len(raw)]) + raw)

    def _str(self, v: str) -> None:
        raw = v.encode("utf-8", "surrogatepass")
        self._op(b"X", struct.pack("<I", len(raw)) + raw)

    def _tuple(self, items: tuple[Any, ...] | list[Any]) -> None:
        if not items:
            self._op(b")")
            return
        if len(items) <= 3:
            for x in items:
                self.save(x)
            self._op(b"\x85\x86\x87"[len(items) - 1 : len(items)])
            return
        self._op(b"(")
        for x in items:
            self.save(x)
        self._op(b"t")

    def _setitems(self, items: list[tuple[Any, Any]]) -> None:
        for start in range(0, len(items), 1000):
            self._op(b"(")
            for k, v in items[start : start + 1000]:
                self.save(k)
                self.save(v)
            self._op(b"u")

    def _appends(self, items: list[Any]) -> None:
        for start in range(0, len(items), 1000):
            self._op(b"(")
            for v in items[start : start + 1000]:
                self.save(v)
            self._op(b"e")

    # -- objects
    def save(self, obj: Any) -> None:
        """Append the opcodes that rebuild obj (iterative containers would only add noise)."""
        if obj is None:
            self._op(b"N")
        elif obj is True or obj is False:
            self._op(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            self._op(b"G", struct.pack(">d", obj))
        elif isinstance(obj, str):
            self._str(obj)
        elif self._get(obj):
            return
        elif isinstance(obj, (bytes, bytearray)):
            self._global("_codecs", "encode")
            self._tuple((bytes(obj).decode("latin1"), "latin1"))
            self._op(b"R")
            if isinstance(obj, bytearray):
                raise WriteFailed("bytearray values cannot be written back yet")
            self._put(obj)
        elif isinstance(obj, tuple):
            self._tuple(obj)
            self._put(obj)
        elif isinstance(obj, list):
            self._op(b"]")
            self._put(obj)
            self._appends(obj)
        elif isinstance(obj, collections.OrderedDict):
            self._global("collections", "OrderedDict")
            self._op(b")R")
            self._put(obj)
            self._setitems(list(obj.items()))
            state = getattr(obj, "__dict__", None)
            if state:
                self.save(dict(state))
                self._op(b"b")
        elif isinstance(obj, collections.defaultdict):
            self._global("collections", "defaultdict")
            factory = obj.default_factory
            self._tuple((factory,) if factory is not None else ())
            self._op(b"R")
            self._put(obj)
            self._setitems(list(obj.items()))
        elif isinstance(obj, dict):
            self._op(b"}")
            self._put(obj)
            self._setitems(list(obj.items()))
        elif isinstance(obj, (set, frozenset)):
            self._global("builtins", type(obj).__name__)
            self._op(b"]")
            self._appends(list(obj))
            self._op(b"\x85R")
            self._put(obj)
        elif isinstance(obj, TensorRecord):
            self._tensor(obj)
        elif isinstance(obj, DType):
            self._global("torch", obj.name)
        elif isinstance(obj, TorchMarker):
            self._marker(obj)
        elif isinstance(obj, type) and issubclass(obj, Inert):
            self._global(obj._ckpt_module, obj._ckpt_name)
        elif isinstance(obj, Inert):
            self._inert(obj)
        elif obj in (list, dict, set, frozenset, tuple, int, float, str):
            self._global("builtins", obj.__name__)
        elif isinstance(obj, NumpyArray):
            self._numpy(obj)
        else:
            raise WriteFailed(f"cannot write a {type(obj).__name__} back to a pickle")

    def _marker(self, m: TorchMarker) -> None:
        if m.name == "device":
            self._global("torch", "device")
            self._tuple(m.args)
            self._op(b"R")
        elif m.name in ("strided", "sparse_coo", "sparse_csr"):
            self._global("torch.serialization", "_get_layout")
            self._tuple((f"torch.{m.name}",))
            self._op(b"R")
        else:
            self._global(m.module, m.name)

    def _inert(self, obj: Inert) -> None:
        """Rebuilds it the way the input built it: NEWOBJ (construction, no constructor call),
        copyreg._reconstructor (protocols 0-1), or a call: only a call the input's verdict
        allowed (enum members, dates, paths) reaches here; dangerous inputs are refused."""
        cls = type(obj)
        if obj.kwargs:
            raise WriteFailed(
                f"{cls.qualified_name()} was built with keyword arguments, which cannot be "
                "written back yet"
            )
        made = obj.__dict__.get("made", "call")
        if made == "reconstructor":
            self._global("copyreg", "_reconstructor")
            base_module, _, base_name = (obj.base or "builtins.object").rpartition(".")
            self._global(cls._ckpt_module, cls._ckpt_name)
            self._global(base_module, base_name)
            self.save(obj.args[0] if obj.args else None)
            self._op(b"\x87R")
        else:
            self._global(cls._ckpt_module, cls._ckpt_name)
            self._tuple(obj.args)
            self._op(b"R" if made == "call" else b"\x81")
        self._put(obj)
        if obj.listitems:
            self._appends(obj.listitems)
        if obj.dictitems:
            self._setitems(list(obj.dictitems.items()))
        if obj.state is not None:
            self.save(obj.state)
            self._op(b"b")

    def _numpy(self, arr: NumpyArray) -> None:
        """numpy's own pickle of an array: _reconstruct(ndarray, (0,), b'b'), then its state
        (version, shape, dtype, fortran order, raw bytes), as numpy writes it."""
        self._global(arr.module, "_reconstruct")
        self._global("numpy", "ndarray")
        self._tuple((0,))
        self.save(b"b")
        self._op(b"\x87R")
        self._put(arr)
        code = NUMPY_CODES[arr.dtype]
        self._op(b"(")
        self._int(1)
        self._tuple(arr.shape)
        self._global("numpy", "dtype")
        self._tuple((code, False, True))
        self._op(b"R")
        order = "|" if DTYPE_SIZES[arr.dtype] == 1 else arr.byteorder
        self._tuple((3, order, None, None, None, -1, -1, 0))
        self._op(b"b")
        self._op(b"\x88" if arr.fortran else b"\x89")
        self.save(arr.data)
        self._op(b"tb")

    def _storage_pid(self, storage: StorageRef, untyped: bool = False) -> None:
        key = self.storage_keys.get(id(storage))
        if key is None:
            key = str(len(self.storages))
            self.storage_keys[id(storage)] = key
            self.storages.append((key, storage))
        storage_class = None if untyped else DTYPE_STORAGES.get(storage.dtype)
        if storage.dtype not in DTYPE_SIZES:
            raise WriteFailed(f"dtype {storage.dtype} cannot be written to a .pth file")
        self._op(b"(")
        self._str("storage")
        if storage_class is None:  # fp8, uint16/32/64: an untyped storage, sized in bytes
            self._global("torch.storage", "UntypedStorage")
        else:
            self._global("torch", storage_class)
        self._str(key)
        self._str(storage.location if self.keep_device else "cpu")
        self._int(storage.numel if storage_class is not None else storage.nbytes)
        self._op(b"tQ")

    def _tensor(self, rec: TensorRecord) -> None:
        if rec.storage is None:
            raise WriteFailed("tensor without a storage cannot be pickled (internal)")
        if rec.quant is not None:
            self._qtensor(rec, rec.quant)
            return
        if rec.is_parameter:
            self._global("torch._utils", "_rebuild_parameter")
            self._op(b"(")
        # dtypes without a storage class (fp8, uint16...), and tensors viewing a storage as
        # another dtype, are written as torch writes them: an untyped storage, the dtype named
        untyped = rec.storage.dtype not in DTYPE_STORAGES or rec.storage.dtype != rec.dtype
        self._global("torch._utils", "_rebuild_tensor_v3" if untyped else "_rebuild_tensor_v2")
        self._op(b"(")
        self._storage_pid(rec.storage, untyped)
        self._int(rec.offset)
        self._tuple(rec.shape)
        self._tuple(rec.stride)
        self._op(b"\x88" if rec.requires_grad and not rec.is_parameter else b"\x89")
        self._global("collections", "OrderedDict")
        self._op(b")R")
        if untyped:  # torch's own form for dtypes without a storage class: the dtype named
            self._global("torch", rec.dtype)
        self._op(b"tR")
        if rec.is_parameter:
            self._op(b"\x88" if rec.requires_grad else b"\x89")
            self._global("collections", "OrderedDict")
            self._op(b")R")
            self._op(b"tR")
        self._put(rec)

    def _qtensor(self, rec: TensorRecord, q: QuantParams) -> None:
        """torch._utils._rebuild_qtensor(storage, offset, size, stride, quantizer params,
        requires_grad, hooks), as torch.save writes a quantized tensor."""
        assert rec.storage is not None
        self._global("torch._utils", "_rebuild_qtensor")
        self._op(b"(")
        self._storage_pid(rec.storage)
        self._int(rec.offset)
        self._tuple(rec.shape)
        self._tuple(rec.stride)
        self._op(b"(")
        self._global("torch", q.scheme)
        if q.per_channel:
            self.save(q.scales)
            self.save(q.zero_points)
            self._int(q.axis or 0)
        else:
            self.save(float(q.scale or 0.0))
            self._int(q.zero_point or 0)
        self._op(b"t")
        self._op(b"\x88" if rec.requires_grad else b"\x89")
        self._global("collections", "OrderedDict")
        self._op(b")R")
        self._op(b"tR")
        self._put(rec)


def dumps(root: Any, keep_device: bool = False) -> tuple[bytes, list[tuple[str, StorageRef]]]:
    """Pickle bytes for root and the storages it references, keyed '0', '1', ... in order;
    storages are tagged as CPU storages unless `keep_device`."""
    writer = PickleWriter(keep_device)
    writer._op(b"\x80\x02")
    writer.save(root)
    writer._op(b".")
    return bytes(writer.out), writer.storages
