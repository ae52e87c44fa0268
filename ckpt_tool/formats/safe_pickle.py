"""A restricted pickle reader: nothing a file names is imported or run.

Every GLOBAL goes through `SafeUnpickler.find_class`, which never imports. Names on an exact
allowlist resolve to our own inert implementations (tensor rebuilders return `TensorRecord`s,
storage types become dtype names, containers are real containers built with bounded work).
Every other name becomes an `Inert` subclass: "calling" it only records the arguments, so a
`__reduce__` to `os.system` yields a record of the call, never the call.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import itertools
import math
import pickle
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ckpt_tool.errors import UnreadableCheckpoint, UnsafeCheckpoint
from ckpt_tool.memory import paused_gc

from .pickle_rules import (
    CALL_OK,
    DANGEROUS,
    ERROR,
    NESTED_LOADERS,
    RANK,
    SAFE,
    Use,
    runs_code,
    worst,
)

# --- dtypes -------------------------------------------------------------------------------

# storage class name -> dtype name
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "UntypedStorage": "uint8",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
}

# dtype name -> element size in bytes
DTYPE_SIZES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
    "complex128": 16,
    "complex64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
}

# torch's attribute aliases for dtypes (torch.float is float32 ...)
DTYPE_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}


class _Tampering(pickle.UnpicklingError):
    """BUILD applied to one of our allowlisted stand-ins (a global itself)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"BUILD applied to the global {name}")
        self.name = name


@dataclass(frozen=True)
class DType:
    """A torch dtype named in a pickle (`torch.float32`), kept as its name."""

    def __setstate__(self, state: Any) -> None:
        raise _Tampering(f"torch.{self.name}")

    name: str


@dataclass(frozen=True)
class TorchMarker:
    """Another torch constant (a layout, memory format, device): kept by name, never imported."""

    module: str
    name: str
    args: tuple[Any, ...] = ()

    def __setstate__(self, state: Any) -> None:
        raise _Tampering(f"{self.module}.{self.name}")


# --- tensor records -------------------------------------------------------------------------


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides of a shape (what a contiguous tensor has)."""
    stride: list[int] = []
    acc = 1
    for d in reversed(shape):
        stride.insert(0, acc)
        acc *= d
    return tuple(stride)


@dataclass(eq=False, slots=True)
class StorageRef:
    """A storage named by a persistent id: where its bytes are, not the bytes."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a record we created is refused")

    key: str
    dtype: str
    location: str
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 1)


@dataclass(eq=False)
class QuantParams:
    """How a quantized tensor maps its integers to reals (torch's quantizer parameters)."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a record we created is refused")

    scheme: str  # per_tensor_affine | per_channel_affine | ...
    scale: float | None = None
    zero_point: int | None = None
    scales: TensorRecord | None = None  # per-channel: one scale and zero point per slice
    zero_points: TensorRecord | None = None
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.scales is not None

    def describe(self) -> str:
        if self.per_channel:
            return f"{self.scheme} axis {self.axis}"
        return f"{self.scheme} scale {self.scale:.6g} zero point {self.zero_point}"


@dataclass(eq=False)
class OpaqueTensor:
    """A tensor kind we name but do not read (sparse, nested, meta, wrapper subclasses)."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a record we created is refused")

    rebuild: str
    args: tuple[Any, ...]

    @property
    def kind(self) -> str:
        return _OPAQUE_KINDS.get(self.rebuild, self.rebuild)


_OPAQUE_KINDS = {
    "_rebuild_sparse_tensor": "sparse tensor",
    "_rebuild_nested_tensor": "nested tensor",
    "_rebuild_meta_tensor_no_storage": "meta tensor (no data)",
    "_rebuild_wrapper_subclass": "tensor subclass",
    "_rebuild_device_tensor_from_cpu_tensor": "device tensor",
}


@dataclass(eq=False, slots=True)
class TensorRecord:
    """A tensor as the file describes it: storage view, shape, dtype; never materialised here."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a record we created is refused")

    storage: StorageRef | None
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False
    # bytes held inside the pickle itself (numpy arrays)
    inline: bytes | None = None
    # how the tensor was rebuilt, for the writer to reproduce it
    rebuild: str = "torch._utils._rebuild_tensor_v2"
    metadata: Any = None
    quant: QuantParams | None = None  # quantized tensors (qint8, quint8, qint32)
    # computed once: records are never mutated in shape or dtype (dataclasses.replace makes a
    # new one), and a 100,000-tensor report asks for them several times per tensor
    numel: int = field(init=False, repr=False)
    nbytes: int = field(init=False, repr=False)
    view: tuple[Any, ...] = field(init=False, repr=False)  # see view_key

    def __post_init__(self) -> None:
        self.numel = math.prod(self.shape)
        self.nbytes = self.numel * DTYPE_SIZES.get(self.dtype, 1)
        storage = self.storage
        self.view = (
            (id(self),)
            if storage is None
            else (id(storage), self.offset, self.shape, self.stride, self.dtype)
        )

    @property
    def device(self) -> str:
        return self.storage.location if self.storage is not None else "cpu"


def view_key(rec: TensorRecord) -> tuple[Any, ...]:
    """Records with equal keys are the same tensor (tied weights), even as separate objects."""
    return rec.view


# --- inert records for everything else -------------------------------------------------------


class _SetState:
    """`__setstate__` of inert records (BUILD). Reached on an inert *class*, it is BUILD applied
    to a global itself: recorded as tampering, since a real load would overwrite attributes of
    the loader's shared class object."""

    def __get__(self, obj: Any, cls: Any) -> Callable[[Any], None]:
        if obj is None:

            def tamper(state: Any) -> None:
                cls._ckpt_use.built = True

            return tamper

        def setstate(state: Any) -> None:
            obj.__dict__["state"] = state

        return setstate


class Inert:
    """An instance of a class the file names but we do not import: its name and state only.

    Each read makes its own subclasses (`inert_class`), each holding the `Use` it reports to,
    so every way the unpickler touches a name is recorded: NEWOBJ reaches `__new__` only, a
    call (REDUCE, INST or OBJ with arguments) reaches `__init__` too, BUILD reaches
    `__setstate__`, and calling an instance is a call of what a call returned.
    """

    _ckpt_module: ClassVar[str] = ""
    _ckpt_name: ClassVar[str] = ""
    _ckpt_use: ClassVar[Use]

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        obj.__dict__.update(
            {
                "args": args,
                "kwargs": kwargs,
                "state": None,
                "listitems": [],
                "dictitems": {},
                "made": "new",  # new (NEWOBJ) | call | reconstructor
                "base": None,  # copyreg._reconstructor's base class name, if not object
            }
        )
        use = cls.__dict__.get("_ckpt_use")
        if use is not None:
            use.constructed += 1
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Reached by a call, not by NEWOBJ (cls.__new__ only): the writer repeats it.
        self.__dict__["made"] = "call"
        use = type(self).__dict__.get("_ckpt_use")
        if use is not None:
            use.constructed -= 1
            use.calls += 1
            values = (*args, *kwargs.values())
            if use.name in NESTED_LOADERS and len(values) == 1 and isinstance(args[0], bytes):
                use.payloads.append(args[0])
            if not all(is_literal(v) for v in values):
                use.nonliteral_calls += 1
            elif len(values) == 1 and not kwargs:
                use.one_literal_calls += 1

    __setstate__ = _SetState()

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        use = type(self).__dict__.get("_ckpt_use")
        if use is not None:
            use.result_called = True
        return _RESULT(*args, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["dictitems"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["listitems"].append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.__dict__["listitems"].extend(values)

    @classmethod
    def qualified_name(cls) -> str:
        return f"{cls._ckpt_module}.{cls._ckpt_name}"

    def __repr__(self) -> str:
        return f"<{self.qualified_name()} (not loaded)>"

    # Every attribute access is on the instance dict; no lookups fall through to magic.
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    listitems: list[Any]
    dictitems: dict[Any, Any]
    made: str
    base: str | None


def inert_class(module: str, name: str, use: Use | None = None) -> type[Inert]:
    """A fresh Inert subclass standing for `module.name`, reporting to `use`."""
    body: dict[str, Any] = {"_ckpt_module": module, "_ckpt_name": name}
    body["__module__"] = "ckpt_tool.inert"
    if use is not None:
        body["_ckpt_use"] = use
    return type(name if name.isidentifier() else "Inert", (Inert,), body)


# What calling an inert instance gives back: already dangerous, so one shared, unreported class.
_RESULT = inert_class("<result>", "<result>")


def global_name(obj: Any) -> str | None:
    """`module.name` of an inert class or instance, else None."""
    if isinstance(obj, type) and issubclass(obj, Inert):
        return obj.qualified_name()
    if isinstance(obj, Inert):
        return type(obj).qualified_name()
    return None


def children(obj: Any) -> Iterator[Any]:
    """Direct children of a container or inert record, for iterative walks."""
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, Inert):
        yield from obj.args
        yield from obj.kwargs.values()
        yield obj.state
        yield from obj.listitems
        yield from obj.dictitems.keys()
        yield from obj.dictitems.values()
    elif isinstance(obj, TensorRecord) and obj.storage is not None:
        yield obj.storage


_LEAVES = frozenset({str, int, float, bool, type(None), bytes, bytearray, complex})


def walk(root: Any) -> Iterator[Any]:
    """Every object reachable from root, once each, without recursion (cycles are fine)."""
    seen: set[int] = set()
    queue: deque[Any] = deque([root])
    pop, extend, leaves = queue.popleft, queue.extend, _LEAVES
    while queue:
        obj = pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if type(obj) in leaves:
            continue  # most objects of a large pickle: keys, shapes, numbers
        if type(obj) is TensorRecord:
            if obj.storage is not None:
                queue.append(obj.storage)
        else:
            extend(children(obj))


def bytes_values(root: Any) -> list[bytes | bytearray]:
    """Every bytes or bytearray value reachable from root (as `walk` would find them), without
    visiting the leaves and tensor records that make up most of a large pickle."""
    out: list[bytes | bytearray] = []
    seen: set[int] = set()
    stack: list[Any] = [root]
    pop, extend = stack.pop, stack.extend
    skip = (str, int, float, bool, type(None), complex, TensorRecord, StorageRef)
    while stack:
        obj = pop()
        t = type(obj)
        if t in skip or id(obj) in seen:
            continue
        seen.add(id(obj))
        if t is bytes or t is bytearray:
            out.append(obj)
        elif isinstance(obj, dict):
            extend(obj.keys())
            extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            extend(obj)
        elif isinstance(obj, (bytes, bytearray)):
            out.append(obj)
        else:
            extend(children(obj))
    return out


MAX_LITERAL_ITEMS = 64


def is_literal(value: Any, depth: int = 0) -> bool:
    """A value written in the pickle itself (numbers, strings, bytes, small tuples of them), or
    what a call with such values built: what enum members and dates are called with."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, DType)):
        return True
    if isinstance(value, (NumpyArray, NumpyDType)):
        return True  # arrays and dtypes the allowlist rebuilt: data
    if isinstance(value, Inert):
        return (
            value.made == "call" and depth < 3 and all(is_literal(a, depth + 1) for a in value.args)
        )
    if isinstance(value, type) and issubclass(value, Inert):
        return value.qualified_name() in CALL_OK  # numpy's RNG constructors name each other
    if isinstance(value, (tuple, list, frozenset, set)) and depth < 3:
        return len(value) <= MAX_LITERAL_ITEMS and all(is_literal(v, depth + 1) for v in value)
    return False


# --- allowlisted implementations ----------------------------------------------------------------

MAX_CONTAINER_FROM_ITERABLE = 10_000_000


def _bounded(iterable: Any) -> Any:
    # Containers may only be built from containers the pickle already materialised; a `range`
    # or generator argument would let a tiny file ask for unbounded work.
    if isinstance(iterable, (list, tuple, dict, set, frozenset, str, bytes, bytearray)):
        return iterable
    raise pickle.UnpicklingError(f"refused container argument of type {type(iterable).__name__}")


def _make_container(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if not args:
            return kind()
        if len(args) != 1:
            raise pickle.UnpicklingError(f"{kind.__name__}() takes one argument here")
        return kind(_bounded(args[0]))

    build.__name__ = kind.__name__
    return build


def _make_scalar(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        for a in args:
            if not isinstance(a, (int, float, str, bytes, bool, complex)) or (
                isinstance(a, (str, bytes)) and len(a) > 10_000
            ):
                raise pickle.UnpicklingError(f"refused {kind.__name__} argument")
        return kind(*args)

    return build


def _bytes_like(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if not args:
            return kind()
        first = args[0]
        if isinstance(first, int):  # bytearray(2**40) would allocate it
            raise pickle.UnpicklingError(f"refused {kind.__name__}(int)")
        if isinstance(first, str):
            return kind(first, *[a for a in args[1:2] if a in ("latin1", "latin-1", "utf-8")])
        return kind(_bounded(first))

    return build


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> Any:
    # torch.save writes bytes as _codecs.encode(text, 'latin1'). Other codecs (rot13 turns
    # text into other text) are not run: the value stays unknown, so a STACK_GLOBAL fed with
    # it fails as a computed name.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        return _RESULT()
    return obj.encode(encoding)


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    if not args:  # every tensor's backward_hooks
        return collections.OrderedDict()
    return collections.OrderedDict(*(_bounded(a) for a in args))


def _default_dict(*args: Any) -> collections.defaultdict[Any, Any]:
    factory = args[0] if args else None
    safe_factory = factory if factory in (list, dict, int, float, set, str) else None
    d: collections.defaultdict[Any, Any] = collections.defaultdict(safe_factory)
    if len(args) > 1:
        d.update(_bounded(args[1]))
    return d


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is tuple:  # the common case, without a generator per tensor
        for v in value:
            if type(v) is not int:
                break
        else:
            return value
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise pickle.UnpicklingError(f"tensor {what} is not a tuple of integers")
    return tuple(value)


def _tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    dtype: str | None = None,
    requires_grad: Any = False,
    metadata: Any = None,
    rebuild: str = "",
) -> Any:
    if isinstance(storage, Inert):
        return _RESULT()  # a storage some call returned (pickle.dump of a tensor): opaque here
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    shape = _int_tuple(size, "shape")
    if shape and min(shape) < 0:
        raise pickle.UnpicklingError(f"tensor shape {list(shape)} has a negative dimension")
    if not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("tensor storage offset is not a non-negative integer")
    return TensorRecord(
        storage=storage,
        offset=offset,
        shape=shape,
        stride=_int_tuple(stride, "stride"),
        dtype=dtype or storage.dtype,
        requires_grad=bool(requires_grad),
        metadata=metadata,
        rebuild=rebuild,
    )


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> Any:
    return _tensor(storage, offset, size, stride, rebuild="torch._utils._rebuild_tensor")


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Any:
    return _tensor(
        storage,
        offset,
        size,
        stride,
        requires_grad=requires_grad,
        metadata=metadata,
        rebuild="torch._utils._rebuild_tensor_v2",
    )


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    dtype: Any = None,
    metadata: Any = None,
) -> Any:
    name = dtype.name if isinstance(dtype, DType) else None
    return _tensor(
        storage,
        offset,
        size,
        stride,
        dtype=name,
        requires_grad=requires_grad,
        metadata=metadata,
        rebuild="torch._utils._rebuild_tensor_v3",
    )


QSCHEMES = (
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)


def _quant_params(params: Any) -> QuantParams:
    if not isinstance(params, tuple) or not params or not isinstance(params[0], TorchMarker):
        raise pickle.UnpicklingError("malformed quantizer parameters")
    scheme = params[0].name
    if scheme in ("per_tensor_affine", "per_tensor_symmetric") and len(params) == 3:
        scale, zero_point = params[1], params[2]
        if isinstance(scale, (int, float)) and isinstance(zero_point, int):
            return QuantParams(scheme, float(scale), zero_point)
    elif scheme.startswith("per_channel") and len(params) == 4:
        scales, zero_points, axis = params[1], params[2], params[3]
        if (
            isinstance(scales, TensorRecord)
            and isinstance(zero_points, TensorRecord)
            and isinstance(axis, int)
        ):
            return QuantParams(scheme, scales=scales, zero_points=zero_points, axis=axis)
    raise pickle.UnpicklingError(f"unsupported quantizer parameters for {scheme}")


def _rebuild_qtensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    quantizer_params: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
) -> Any:
    rec = _tensor(
        storage,
        offset,
        size,
        stride,
        requires_grad=requires_grad,
        rebuild="torch._utils._rebuild_qtensor",
    )
    if isinstance(rec, TensorRecord):
        rec.quant = _quant_params(quantizer_params)
    return rec


def _opaque(name: str) -> Callable[..., OpaqueTensor]:
    def build(*args: Any) -> OpaqueTensor:
        return OpaqueTensor(name, args)

    return build


def _tensor_from_numpy(
    data: Any, dtype: Any, device: Any = None, requires_grad: Any = False
) -> Any:
    # XLA/TPU checkpoints: the bytes are a numpy array in the pickle itself
    if not isinstance(data, NumpyArray):
        raise pickle.UnpicklingError("_rebuild_device_tensor_from_numpy of a non-array")
    rec = data.as_record()
    rec.requires_grad = bool(requires_grad)
    return rec


def _rebuild_parameter(
    data: Any, requires_grad: Any, backward_hooks: Any = None, state: Any = None
) -> Any:
    if isinstance(data, TensorRecord):
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not callable(func) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("malformed _rebuild_from_type_v2")
    result = func(*args)
    if (
        isinstance(result, TensorRecord)
        and isinstance(new_type, TorchMarker)
        and new_type.name == "Parameter"
    ):
        result.is_parameter = True
    return result


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor(cls, base, state): base.__new__(cls, state) (protocols 0 and 1).
    if isinstance(cls, type) and issubclass(cls, Inert):
        obj = cls.__new__(cls) if state is None else cls.__new__(cls, state)
        obj.__dict__["made"] = "reconstructor"
        base_name = getattr(base, "ckpt_name", None) or global_name(base) or "builtins.object"
        obj.__dict__["base"] = base_name
        return obj
    if getattr(cls, "ckpt_name", None) == "collections.OrderedDict":
        return collections.OrderedDict()
    raise pickle.UnpicklingError("copyreg._reconstructor of a non-inert class")


def _newobj(cls: Any, *args: Any) -> Any:
    # copyreg.__newobj__(cls, *args) is cls.__new__(cls, *args): construction, not a call
    if isinstance(cls, type) and issubclass(cls, Inert):
        return cls.__new__(cls, *args)
    raise pickle.UnpicklingError("copyreg.__newobj__ of a non-inert class")


class NumpyArray:
    """A numpy array from a plain pickle, kept as dtype, shape and raw bytes."""

    def __init__(self, *args: Any) -> None:
        self.module = "numpy.core.multiarray"  # where its _reconstruct was named
        self.shape: tuple[int, ...] = ()
        self.dtype = "uint8"
        self.byteorder = "<"
        self.data = b""
        self.fortran = False

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, rawdata)
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("malformed numpy array state")
        _, shape, dtype, fortran, raw = state
        self._fill(raw, dtype, shape, bool(fortran))

    def _fill(self, raw: Any, dtype: Any, shape: Any, fortran: bool) -> None:
        self.shape = _int_tuple(shape, "shape")
        if not isinstance(dtype, NumpyDType) or dtype.name == "object":
            raise pickle.UnpicklingError("numpy arrays of this dtype are not supported")
        self.dtype, self.byteorder = dtype.name, dtype.byteorder
        self.fortran = fortran
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy object arrays are not supported")
        numel = 1
        for d in self.shape:
            numel *= d
        if numel * DTYPE_SIZES[self.dtype] != len(raw):
            raise pickle.UnpicklingError("numpy array data does not match its shape")
        self.data = bytes(raw)

    def as_record(self) -> TensorRecord:
        """A tensor record in C order and little-endian bytes, as torch.from_numpy would give."""
        size = DTYPE_SIZES[self.dtype]
        data = self.data
        if self.byteorder == ">" and size > 1:
            data = b"".join(data[i : i + size][::-1] for i in range(0, len(data), size))
        if self.fortran and len(self.shape) > 1:
            data = fortran_to_c(data, self.shape, size)
        return TensorRecord(
            None,
            0,
            self.shape,
            contiguous_stride(self.shape),
            self.dtype,
            inline=data,
            rebuild="numpy",
        )


def fortran_to_c(data: bytes, shape: tuple[int, ...], size: int) -> bytes:
    """Reorder column-major element bytes into row-major order."""
    import numpy as np  # only for Fortran-ordered arrays

    elements = np.frombuffer(data, dtype=f"V{size}").reshape(shape, order="F")
    return bytes(np.ascontiguousarray(elements).tobytes())


def _numpy_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> NumpyArray:
    # protocol 5: numpy.core.numeric._frombuffer(PickleBuffer, dtype, shape, order)
    arr = NumpyArray()
    arr._fill(
        bytes(buf) if isinstance(buf, (bytes, bytearray)) else buf, dtype, shape, order == "F"
    )
    return arr


NUMPY_DTYPES = {
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
    "?": "bool",
    "c8": "complex64",
    "c16": "complex128",
}


class NumpyDType:
    """A numpy dtype ('f4' ...) named by a pickle."""

    def __init__(self, code: Any = "u1", *args: Any) -> None:
        self.name = NUMPY_DTYPES.get(str(code), "object")
        self.byteorder = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
            self.byteorder = ">"


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> NumpyArray:
    return NumpyArray()


def _numpy2_reconstruct(subtype: Any, shape: Any, dtype: Any) -> NumpyArray:
    arr = NumpyArray()
    arr.module = "numpy._core.multiarray"  # written back under the name numpy 2 uses
    return arr


def _numpy_scalar(dtype: Any, raw: Any = b"") -> Any:
    if isinstance(dtype, NumpyDType) and isinstance(raw, bytes) and len(raw) <= 16:
        import struct

        fmt = {"float64": "d", "float32": "f", "int64": "q", "int32": "i", "bool": "?"}
        if dtype.name in fmt and len(raw) == struct.calcsize(fmt[dtype.name]):
            return struct.unpack("<" + fmt[dtype.name], raw)[0]
    return None


def _torch_size(*args: Any) -> tuple[int, ...]:
    return _int_tuple(args[0] if args else (), "size")


def _device(*args: Any) -> TorchMarker:
    return TorchMarker("torch", "device", tuple(a for a in args if isinstance(a, (str, int))))


def _get_layout(name: Any) -> TorchMarker:
    return TorchMarker("torch", str(name))


def _same(data: Any, *_: Any) -> Any:
    return data


def _tensor_from_id(data: Any) -> Any:
    return data if isinstance(data, int) else None


# TorchScript's own pickles (constants, debug info) call these; each returns its argument.
TORCHSCRIPT_HELPERS = {
    "torch.jit._pickle.build_intlist": _same,
    "torch.jit._pickle.build_tensorlist": _same,
    "torch.jit._pickle.build_doublelist": _same,
    "torch.jit._pickle.build_boollist": _same,
    "torch.jit._pickle.build_tensor_from_id": _tensor_from_id,
    "torch.jit._pickle.restore_type_tag": _same,
}


def _build_allowlist() -> dict[str, Any]:
    allow: dict[str, Any] = {
        "collections.OrderedDict": _ordered_dict,
        "collections.defaultdict": _default_dict,
        "builtins.set": _make_container(set),
        "builtins.frozenset": _make_container(frozenset),
        "builtins.list": _make_container(list),
        "builtins.tuple": _make_container(tuple),
        "builtins.dict": _make_container(dict),
        "builtins.int": _make_scalar(int),
        "builtins.float": _make_scalar(float),
        "builtins.complex": _make_scalar(complex),
        "builtins.bool": _make_scalar(bool),
        "builtins.str": _make_scalar(str),
        "builtins.bytes": _bytes_like(bytes),
        "builtins.bytearray": _bytes_like(bytearray),
        "builtins.slice": _make_scalar(slice),
        "builtins.object": object,
        "_codecs.encode": _codecs_encode,
        "copyreg._reconstructor": _reconstructor,
        "copyreg.__newobj__": _newobj,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Size": _torch_size,
        "torch.device": _device,
        "torch.serialization._get_layout": _get_layout,
        "torch.Tensor": TorchMarker("torch", "Tensor"),
        "torch.nn.parameter.Parameter": TorchMarker("torch.nn.parameter", "Parameter"),
        "numpy.core.multiarray._reconstruct": _numpy_reconstruct,
        "numpy._core.multiarray._reconstruct": _numpy2_reconstruct,
        "numpy.ndarray": NumpyArray,
        "numpy.dtype": NumpyDType,
        "numpy.core.multiarray.scalar": _numpy_scalar,
        "numpy.core.numeric._frombuffer": _numpy_frombuffer,
        "numpy._core.numeric._frombuffer": _numpy_frombuffer,
        "numpy._core.multiarray.scalar": _numpy_scalar,
    }
    allow.update(TORCHSCRIPT_HELPERS)
    allow["torch._utils._rebuild_qtensor"] = _rebuild_qtensor
    allow["torch._utils._rebuild_device_tensor_from_numpy"] = _tensor_from_numpy
    for name in _OPAQUE_KINDS:
        allow[f"torch._utils.{name}"] = _opaque(name)
    for scheme in QSCHEMES:
        allow[f"torch.{scheme}"] = TorchMarker("torch", scheme)
    for storage in STORAGE_DTYPES:
        allow[f"torch.{storage}"] = TorchMarker("torch", storage)
        allow[f"torch.storage.{storage}"] = TorchMarker("torch", storage)
    for dtype in list(DTYPE_SIZES) + list(DTYPE_ALIASES):
        allow[f"torch.{dtype}"] = DType(DTYPE_ALIASES.get(dtype, dtype))
    for layout in (
        "strided",
        "sparse_coo",
        "sparse_csr",
        "contiguous_format",
        "channels_last",
        "preserve_format",
    ):
        allow[f"torch.{layout}"] = TorchMarker("torch", layout)
    return allow


ALLOWLIST = _build_allowlist()


class SafeCallable:
    """An allowlisted function as one pickle sees it: callable, but BUILD cannot touch it.

    Strings it returns are remembered as computed: a STACK_GLOBAL naming a module with one of
    them names something no scanner can know in advance.
    """

    __slots__ = ("_computed", "_made", "ckpt_name", "fn")

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        computed: dict[int, Any] | None = None,
        made: list[TensorRecord] | None = None,
    ) -> None:
        self.fn = fn
        self.ckpt_name = name
        self._computed = computed
        self._made = made

    def __call__(self, *args: Any) -> Any:
        result = self.fn(*args)
        if type(result) is TensorRecord:
            if self._made is not None:
                self._made.append(result)
        elif isinstance(result, str) and self._computed is not None:
            self._computed[id(result)] = result
        return result

    def __setstate__(self, state: Any) -> None:
        raise _Tampering(self.ckpt_name)


def _fresh(
    name: str, value: Any, computed: dict[int, Any], made: list[TensorRecord] | None = None
) -> Any:
    """A per-read stand-in for an allowlist entry, so a hostile BUILD (which sets attributes on
    whatever object is on the stack) can never alter state shared with later reads."""
    if isinstance(value, DType):
        return DType(value.name)
    if isinstance(value, TorchMarker):
        return TorchMarker(value.module, value.name, value.args)
    if value is object:  # only meaningful as copyreg._reconstructor's base argument
        return inert_class("builtins", "object")
    if isinstance(value, type):
        return type(value.__name__, (value,), {"__module__": value.__module__})
    return SafeCallable(value, name, computed, made)


# --- the unpickler ------------------------------------------------------------------------------


@dataclass
class Problem:
    """Something about a pickle that is not a global: a read that broke off, a name the
    unpickler computed, an extension code."""

    verdict: str  # needs code | dangerous | error
    why: str
    message: str
    offset: int | None = None


@dataclass
class PickleResult:
    """What a restricted read produced: the object graph, every global used and how."""

    root: Any
    globals: dict[str, Use] = field(default_factory=dict)
    storages: dict[str, StorageRef] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    failure: str | None = None  # why the read broke off (None: it reached STOP)
    start: int = 0  # where in its buffer the pickle began, and where reading ended
    end: int = 0
    foreign_pids: int = 0  # persistent ids that are not torch storages
    # every tensor record an allowlisted rebuild returned (a superset of those reachable from
    # root: the pickle cannot make a record any other way), so checks need no walk
    records: list[TensorRecord] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failure is None

    def verdicts(
        self, data_classes: frozenset[str] = frozenset()
    ) -> list[tuple[Use, str, str, str]]:
        """(use, verdict, why, message) for every global, in the order first named."""
        return [(u, *u.judge(data_classes)) for u in self.globals.values()]

    def verdict(self, data_classes: frozenset[str] = frozenset()) -> str:
        return worst(
            *(v for _, v, _, _ in self.verdicts(data_classes)),
            *(p.verdict for p in self.problems if p.verdict in RANK),
        )

    def names(self, verdict: str, data_classes: frozenset[str] = frozenset()) -> list[str]:
        return [u.name for u, v, _, _ in self.verdicts(data_classes) if v == verdict]


def _storage_dtype(storage_type: Any) -> str:
    if isinstance(storage_type, TorchMarker) and storage_type.name in STORAGE_DTYPES:
        return STORAGE_DTYPES[storage_type.name]
    if isinstance(storage_type, DType):
        return storage_type.name
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")


class BufferStream:
    """A read-only stream over bytes or an mmap, without `peek`: CPython's unpickler then asks
    for exactly the bytes each opcode needs, so `tell()` says where it is."""

    def __init__(self, buf: Any, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.size = len(buf)

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        data = bytes(self.buf[self.pos : end])
        self.pos = max(self.pos, end)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        stop = self.size if limit is None or limit < 0 else min(self.size, self.pos + limit)
        idx = self.buf.find(b"\n", self.pos, stop)
        end = stop if idx < 0 else idx + 1
        data = bytes(self.buf[self.pos : end])
        self.pos = end
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.size + pos}[whence]
        return self.pos


class PeekStream(BufferStream):
    """A stream that lets the unpickler look ahead, as a buffered file does."""

    def peek(self, n: int = 0) -> bytes:
        return bytes(self.buf[self.pos : self.pos + max(n, 1)])


class SafeUnpickler(pickle.Unpickler):
    """CPython's own unpickler (the one `torch.load(weights_only=False)` and `pickle.load` run,
    so it accepts exactly what they accept), whose find_class never imports and records how each
    name is used, and whose persistent ids are storages."""

    def __init__(self, stream: Any, buf: Any) -> None:
        super().__init__(stream, encoding="latin1")
        self.stream = stream
        self.buf = buf
        self.result = PickleResult(root=None)
        self._inert_types: dict[str, type[Inert]] = {}
        self._fresh: dict[str, Any] = {}
        self._computed: dict[int, Any] = {}

    def _is_computed(self, value: Any) -> bool:
        return self._computed.get(id(value)) is value

    def find_class(self, module: str, name: str) -> Any:
        computed = self._is_computed(module) or self._is_computed(name)
        written_parts = (module, name)
        written = f"{module}.{name}"
        # py2 names as torch maps them (e.g. __builtin__.set); the new names do not exist in py2,
        # so mapping unconditionally only ever judges more, never less.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        use = self.result.globals.get(qualified)
        if use is None:
            opcode, offset = self._where(*written_parts)
            use = Use(qualified, module, name, opcode, offset)
            use.written = written if written != qualified else None
            use.allowlisted = qualified in ALLOWLIST
            self.result.globals[qualified] = use
        use.count += 1
        use.computed = use.computed or computed
        if use.allowlisted:
            if qualified not in self._fresh:
                self._fresh[qualified] = _fresh(
                    qualified, ALLOWLIST[qualified], self._computed, self.result.records
                )
            return self._fresh[qualified]
        cls = self._inert_types.get(qualified)
        if cls is None:
            cls = self._inert_types[qualified] = inert_class(module, name, use)
        return cls

    def _where(self, module: str, name: str) -> tuple[str, int | None]:
        """The opcode that named a global, and its offset, from where the reader stands now.

        Exact unless the pickle is framed (protocol 4+), when the unpickler has read the whole
        frame: then the offset is where the name is written.
        """
        pos, buf = self.stream.tell(), self.buf
        if pos >= 1 and buf[pos - 1] == 0x93:
            return "STACK_GLOBAL", pos - 1
        raw = f"{module}\n{name}\n".encode("utf-8", "surrogateescape")
        start = pos - len(raw) - 1
        if start >= 0 and buf[start + 1 : pos] == raw:
            op = buf[start : start + 1]
            return {b"c": "GLOBAL", b"i": "INST"}.get(bytes(op), "GLOBAL"), start
        for n, code in ((1, 0x82), (2, 0x83), (4, 0x84)):
            if pos - n - 1 >= 0 and buf[pos - n - 1] == code:
                return "EXT", pos - n - 1
        found = buf.rfind(raw, 0, pos)
        if found > 0:
            return "GLOBAL", found - 1
        found = buf.rfind(name.encode("utf-8", "surrogateescape"), 0, pos)
        return "STACK_GLOBAL", found if found >= 0 else None

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 5 and pid[0] == "storage":
            # torch.save's ('storage', type, key, location, numel): the common case, first
            _, storage_type, key, location, numel = pid
            if type(key) is str and type(location) is str and type(numel) is int and numel >= 0:
                storages = self.result.storages
                ref = storages.get(key)
                if ref is None:
                    ref = storages[key] = StorageRef(
                        key, _storage_dtype(storage_type), location, numel
                    )
                return ref
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        if pid[0] != "storage":
            # legacy torch files also pickle module sources ("module", type, file, source)
            self.result.foreign_pids += 1
            return Inert()
        if len(pid) < 5:
            raise pickle.UnpicklingError("storage persistent id too short")
        _, storage_type, key, location, numel = pid[:5]
        key = str(key)
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key} has an invalid size {numel!r:.40}")
        existing = self.result.storages.get(key)
        if existing is not None:
            return existing
        ref = StorageRef(key, _storage_dtype(storage_type), str(location), numel)
        self.result.storages[key] = ref
        return ref

    def tampered(self, name: str) -> None:
        """BUILD on an allowlisted stand-in: record it on the global it stands for."""
        use = self.result.globals.get(name)
        if use is not None:
            use.built = True
        else:
            self.result.problems.append(
                Problem(DANGEROUS, "tampering", f"BUILD applied to the global {name}")
            )


def read_pickle(
    buf: Any, start: int = 0, data_classes: frozenset[str] = frozenset()
) -> PickleResult:
    """Run one pickle starting at `start` of a buffer (bytes or mmap) through the restricted
    unpickler; never raises for what the bytes hold: a read that breaks off is recorded."""
    result = _run(buf, start, peek=False)
    if result.failure is not None:
        # Readers with a peeking stream (pickle.loads, pickle.load on a file, torch's legacy
        # loader) read on where a plain stream stops (a FRAME shorter than its opcodes).
        other = _run(buf, start, peek=True)
        if other.complete or len(other.globals) > len(result.globals):
            result = other
    if result.failure is not None:
        _explain_failure(result, result.failure, result.end)
        _judge_failure(result, buf, data_classes)
    return result


def _run(buf: Any, start: int, peek: bool) -> PickleResult:
    stream: Any = (
        PeekStream(buf)
        if peek
        else io.BytesIO(buf)
        if isinstance(buf, bytes)
        else BufferStream(buf)
    )
    stream.seek(start)
    unpickler = SafeUnpickler(stream, buf)
    result = unpickler.result
    result.start = start
    try:
        with paused_gc():
            result.root = unpickler.load()
    except RecursionError:
        result.failure = "pickle nests too deeply to read"
    except MemoryError:
        result.failure = "pickle asks for more memory than it holds"
    except _Tampering as exc:
        unpickler.tampered(exc.name)
        result.failure = str(exc)
    except Exception as exc:  # any failure inside the VM is a corrupt or hostile file
        result.failure = _short(exc)
    result.end = stream.tell()
    return result


def _explain_failure(result: PickleResult, text: str, pos: int) -> None:
    """Failures that only a real load gets past, because it has the real objects."""
    if "STACK_GLOBAL requires str" in text:
        result.problems.append(
            Problem(
                DANGEROUS,
                "computed",
                "STACK_GLOBAL with a module or name computed at load time: a real load may "
                "import anything",
                pos,
            )
        )
    elif "extension code" in text:
        result.problems.append(
            Problem(
                DANGEROUS,
                "extension-code",
                "an EXT opcode names a global by a number the loading process's copyreg "
                "registry resolves: a real load may import anything",
                pos,
            )
        )


def _judge_failure(result: PickleResult, buf: Any, data_classes: frozenset[str]) -> None:
    """A read that broke off is never a pass. If the bytes name code-running globals anywhere
    (a real load may read on where this reader stopped), it is dangerous; otherwise an error:
    after naming classes outside the allowlist (a real load may already have imported them),
    or plain damage."""
    if any(p.verdict == DANGEROUS for p in result.problems):
        return
    named = names_in_bytes(buf, result.start, min(len(buf), result.start + MAX_NAME_SEARCH))
    hostile = [n for n in named if runs_code(*n.split(":"))]
    if hostile:
        shown = ", ".join(n.replace(":", ".") for n in hostile[:3])
        result.problems.append(
            Problem(
                DANGEROUS,
                "unreadable",
                f"the pickle breaks off ({result.failure}) and its bytes name {shown}",
                result.end,
            )
        )
        return
    unsafe = [u.name for u in result.globals.values() if u.judge(data_classes)[0] != SAFE]
    if unsafe:
        message = (
            f"the pickle breaks off ({result.failure}) after naming {', '.join(unsafe[:3])}: "
            "a real load may already have imported it"
        )
    else:
        message = f"not a readable pickle ({result.failure})"
    result.problems.append(Problem(ERROR, "unreadable", message, result.end))


MAX_NAME_SEARCH = 64 << 20
_TEXT_GLOBAL = re.compile(rb"[ci]([A-Za-z_][\w.]{0,200})\n([A-Za-z_][\w.]{0,200})\n")
_STRING_TOKEN = re.compile(rb"\x8c([\x01-\xff])|X([\x01-\xff]\x00\x00\x00)|V([A-Za-z_][\w.]*)\n")


def names_in_bytes(buf: Any, start: int, end: int) -> list[str]:
    """`module:name` pairs a broken pickle's bytes spell (text GLOBALs, and consecutive string
    literals as STACK_GLOBAL takes them): a second look that can only raise alarms."""
    data = bytes(buf[start:end])
    found = [f"{m.decode('latin1')}:{n.decode('latin1')}" for m, n in _TEXT_GLOBAL.findall(data)]
    tokens: list[str] = []
    for m in _STRING_TOKEN.finditer(data):
        if m.group(3) is not None:
            text = m.group(3)
        else:
            size = m.group(1)[0] if m.group(1) is not None else int.from_bytes(m.group(2), "little")
            text = data[m.end() : m.end() + size]
        word = text.decode("latin1")
        if word.replace(".", "").replace("_", "a").isalnum():
            tokens.append(word)
    found += [f"{a}:{b}" for a, b in itertools.pairwise(tokens)]
    return found


def safe_loads(data: bytes, what: str) -> PickleResult:
    """Read one pickle with the restricted reader; refuse one that does not read to its end."""
    return raise_unreadable(read_pickle(data), what)


def raise_unreadable(result: PickleResult, what: str) -> PickleResult:
    """The result, if the read reached STOP; else the one-line error for it."""
    if result.failure is None:
        return result
    if result.verdict() == DANGEROUS:
        names = ", ".join(result.names(DANGEROUS)[:3]) or "load-time code"
        raise UnsafeCheckpoint(
            f"{what}: reaches dangerous callables ({names}) and is not a readable pickle "
            f"({result.failure}); refused. Nothing was run. See `ckpt scan` for details"
        )
    raise UnreadableCheckpoint(f"{what}: not a readable pickle ({result.failure})")


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
