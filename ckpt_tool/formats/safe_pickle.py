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
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ckpt_tool.errors import UnreadableCheckpoint, UnsafeCheckpoint

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


@dataclass(frozen=True)
class DType:
    """A torch dtype named in a pickle (`torch.float32`), kept as its name."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a record we created is refused")

    name: str


@dataclass(frozen=True)
class TorchMarker:
    """Another torch constant (a layout, memory format, device): kept by name, never imported."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on a record we created is refused")

    module: str
    name: str
    args: tuple[Any, ...] = ()


# --- tensor records -------------------------------------------------------------------------


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides of a shape (what a contiguous tensor has)."""
    stride: list[int] = []
    acc = 1
    for d in reversed(shape):
        stride.insert(0, acc)
        acc *= d
    return tuple(stride)


@dataclass(eq=False)
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

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 1)

    @property
    def device(self) -> str:
        return self.storage.location if self.storage is not None else "cpu"


# --- inert records for everything else -------------------------------------------------------


class Inert:
    """An instance of a class the file names but we do not import: its name and state only."""

    _ckpt_module: ClassVar[str] = ""
    _ckpt_name: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        obj.__dict__.update(
            {"args": args, "kwargs": kwargs, "state": None, "listitems": [], "dictitems": {}}
        )
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Reached by REDUCE (a call), not by NEWOBJ (cls.__new__ only): the writer repeats it.
        self.__dict__["called"] = True

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

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


def inert_class(module: str, name: str) -> type[Inert]:
    """A fresh Inert subclass standing for `module.name`."""
    return type(
        name if name.isidentifier() else "Inert",
        (Inert,),
        {"_ckpt_module": module, "_ckpt_name": name, "__module__": "ckpt_tool.inert"},
    )


def global_name(obj: Any) -> str | None:
    """`module.name` of an inert class or instance, else None."""
    if isinstance(obj, type) and issubclass(obj, Inert):
        return obj.qualified_name()
    if isinstance(obj, Inert):
        return type(obj).qualified_name()
    return None


# --- classification ----------------------------------------------------------------------------

DANGEROUS_MODULES = frozenset(
    [
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "runpy",
        "importlib",
        "pickle",
        "_pickle",
        "cPickle",
        "marshal",
        "socket",
        "shutil",
        "ctypes",
        "pty",
        "code",
        "codeop",
        "multiprocessing",
        "webbrowser",
        "urllib",
        "urllib2",
        "requests",
        "http",
        "httplib",
        "ftplib",
        "telnetlib",
        "smtplib",
        "asyncio",
        "signal",
        "types",
        "pip",
        "setuptools",
        "distutils",
        "pkgutil",
        "zipimport",
        "site",
        "imp",
        "pdb",
        "bdb",
        "timeit",
        "trace",
        "profile",
        "cProfile",
        "idlelib",
        "commands",
        "popen2",
        "platform",
        "tempfile",
        "io",
        "_io",
        "pathlib",
        "glob",
        "fileinput",
        "dill",
        "joblib",
        "cloudpickle",
        "operator",
        "functools",
        "_operator",
        "_functools",
        "inspect",
        "threading",
        "_thread",
        "gc",
        "weakref",
        "sysconfig",
        "ensurepip",
        "venv",
        "linecache",
        "tarfile",
        "zipfile",
        "sqlite3",
        "mmap",
        "fcntl",
        "resource",
        "selectors",
        "ssl",
        "xmlrpc",
        "paramiko",
        # found missing while writing `ckpt scan`: each runs code, loads libraries or pickles
        "pydoc",
        "copyreg",
        "copy_reg",
        "_ctypes",
        "_imp",
        "_frozen_importlib",
        "_frozen_importlib_external",
        "_posixsubprocess",
        "_winapi",
        "msvcrt",
        "winreg",
        "_socket",
        "_ssl",
        "_signal",
        "_multiprocessing",
        "_posixshmem",
        "_sqlite3",
        "shelve",
        "dbm",
        "tkinter",
        "_tkinter",
        "mailcap",
        "socketserver",
        "wsgiref",
        "imaplib",
        "poplib",
        "nntplib",
        "concurrent",
        "atexit",
        "zipapp",
        "yaml",
    ]
)
DANGEROUS_BUILTINS = frozenset(
    [
        "eval",
        "exec",
        "compile",
        "getattr",
        "setattr",
        "delattr",
        "__import__",
        "open",
        "input",
        "breakpoint",
        "globals",
        "locals",
        "vars",
        "execfile",
        "file",
        "reload",
        "apply",
        "__build_class__",
        "memoryview",
        "help",
        "exit",
        "quit",
    ]
)
# Loaders and code paths inside otherwise-trusted packages that run or load code.
DANGEROUS_NAMES = frozenset(
    {
        "torch.load",
        "torch.jit.load",
        "torch.jit._script.RecursiveScriptModule",
        "torch.serialization.load",
        "torch._C._jit_load_from_buffer",
        "torch.hub.load",
        "torch.hub.load_state_dict_from_url",
        "torch.package.PackageImporter",
        "torch.utils.cpp_extension.load",
        "torch.utils.cpp_extension.load_inline",
        "torch._dynamo.eval_frame.disable",
        "torch.fx.graph_module.reduce_graph_module",
        "torch.fx.graph_module._deserialize_graph_module",
        "numpy.load",
        "numpy.loadtxt",
        "numpy.fromfile",
        "numpy.testing._private.utils.runstring",
        "numpy.f2py.crackfortran.myeval",
        "numpy.distutils.exec_command.exec_command",
        "numpy.lib.npyio.load",
        "_codecs.decode",
        "torch.storage._load_from_bytes",  # torch.load(weights_only=False) of its argument
        "torch.ops.load_library",
        "torch.classes.load_library",
        "numpy.loads",
        "numpy.core.multiarray.loads",
        "numpy.core.numeric.loads",
        "numpy.lib._npyio_impl.load",
        "numpy.lib.format.read_array",
        "numpy.lib.format.open_memmap",
        "numpy.memmap",
        "numpy.save",
        "numpy.savez",
        "numpy.savetxt",
        "pandas.read_pickle",
        "pandas.eval",
    }
)
# Whole subtrees that compile, load or run code (checked after the allowlist).
DANGEROUS_PREFIXES = (
    "torch.jit.",
    "torch._inductor.",
    "torch.package.",
    "torch.hub.",
    "torch.utils.cpp_extension.",
    "torch._dynamo.",
    "torch.fx.",
    "torch.export.",
    "torch.distributed.rpc.",
    "torch.serialization.",
    "torch.multiprocessing.",
    "torch.ops.",
    "torch._ops.",
    "torch.classes.",
    "torch._C._jit",
    "numpy.f2py.",
    "numpy.distutils.",
    "numpy.testing.",
    "numpy.ctypeslib.",
    "logging.config.",
    "pandas.io.pickle.",
    "pandas.core.computation.",
)
# ... except these inside them, which only return their argument (TorchScript's debug pickles).
BENIGN_PREFIXES = ("torch.jit._pickle.",)
# Classes that carry plain data: recorded inert like any unknown class, but not worth a flag.
KNOWN_DATA = frozenset(
    {
        "argparse.Namespace",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "uuid.UUID",
        "enum.Enum",
        "fractions.Fraction",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.nn.Parameter",
        "torch.serialization._get_layout",
        "torch.device",
        "torch.Size",
    }
)


def classify_global(qualified: str) -> str:
    """'safe', 'unknown' or 'dangerous' for a `module.name` a pickle references."""
    if qualified in ALLOWLIST or qualified in KNOWN_DATA:
        return "safe"
    module, _, name = qualified.rpartition(".")
    root = module.split(".")[0]
    if (
        qualified in DANGEROUS_NAMES
        or root in DANGEROUS_MODULES
        or (qualified.startswith(DANGEROUS_PREFIXES) and not qualified.startswith(BENIGN_PREFIXES))
    ):
        return "dangerous"
    if root in ("builtins", "__builtin__", "__builtins__") and (
        name in DANGEROUS_BUILTINS or name.startswith("_")
    ):
        return "dangerous"
    if name.startswith("__") and name.endswith("__"):
        return "dangerous"
    if root in ("builtins", "__builtin__", "__builtins__"):
        # Any builtin not on the allowlist is a function we will not emulate: treat as hostile.
        return "dangerous"
    return "unknown"


def classify_ref(module: str, name: str) -> str:
    """classify_global for a GLOBAL's (module, name) pair.

    From protocol 4 on, pickle resolves a dotted name as an attribute path from the module, so
    `torch` + `serialization.os.system` is os.system: every step of the path is judged too.
    """
    kind = classify_global(f"{module}.{name}")
    if kind == "safe" or "." not in name:
        return kind
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("__") and part.endswith("__"):
            return "dangerous"
        if i < len(parts) - 1 and part.lstrip("_") in DANGEROUS_MODULES:
            return "dangerous"  # a module the path passes through (`_os`, `sys`)
        if classify_global(f"{module}.{'.'.join(parts[: i + 1])}") == "dangerous":
            return "dangerous"
    return kind


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


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError("refused _codecs.encode arguments")
    return obj.encode(encoding)


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    return collections.OrderedDict(*(_bounded(a) for a in args))


def _default_dict(*args: Any) -> collections.defaultdict[Any, Any]:
    factory = args[0] if args else None
    safe_factory = factory if factory in (list, dict, int, float, set, str) else None
    d: collections.defaultdict[Any, Any] = collections.defaultdict(safe_factory)
    if len(args) > 1:
        d.update(_bounded(args[1]))
    return d


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
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
) -> TensorRecord:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    shape = _int_tuple(size, "shape")
    if any(d < 0 for d in shape):
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


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRecord:
    return _tensor(storage, offset, size, stride, rebuild="torch._utils._rebuild_tensor")


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> TensorRecord:
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
) -> TensorRecord:
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
    # copyreg._reconstructor(cls, object, None): object.__new__(cls) for our inert classes only.
    if isinstance(cls, type) and issubclass(cls, Inert):
        return cls()
    if cls is collections.OrderedDict:
        return collections.OrderedDict()
    raise pickle.UnpicklingError("copyreg._reconstructor of a non-inert class")


def _newobj(cls: Any, *args: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, Inert):
        return cls(*args)
    raise pickle.UnpicklingError("copyreg.__newobj__ of a non-inert class")


class NumpyArray:
    """A numpy array from a plain pickle, kept as dtype, shape and raw bytes."""

    def __init__(self, *args: Any) -> None:
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
            data = _fortran_to_c(data, self.shape, size)
        return TensorRecord(
            None,
            0,
            self.shape,
            contiguous_stride(self.shape),
            self.dtype,
            inline=data,
            rebuild="numpy",
        )


def _fortran_to_c(data: bytes, shape: tuple[int, ...], size: int) -> bytes:
    """Reorder column-major element bytes into row-major order."""
    import itertools

    fstride = [1]
    for d in shape[:-1]:
        fstride.append(fstride[-1] * d)
    out = bytearray()
    for idx in itertools.product(*(range(d) for d in shape)):
        pos = sum(i * st for i, st in zip(idx, fstride, strict=True)) * size
        out += data[pos : pos + size]
    return bytes(out)


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
        "numpy._core.multiarray._reconstruct": _numpy_reconstruct,
        "numpy.ndarray": NumpyArray,
        "numpy.dtype": NumpyDType,
        "numpy.core.multiarray.scalar": _numpy_scalar,
        "numpy.core.numeric._frombuffer": _numpy_frombuffer,
        "numpy._core.numeric._frombuffer": _numpy_frombuffer,
        "numpy._core.multiarray.scalar": _numpy_scalar,
    }
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
_RESOLVE = ALLOWLIST


class SafeCallable:
    """An allowlisted function as one pickle sees it: callable, but BUILD cannot touch it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("BUILD on an allowlisted function is refused")


def _fresh(value: Any) -> Any:
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
    return SafeCallable(value)


# --- the unpickler ------------------------------------------------------------------------------


@dataclass
class GlobalRef:
    """A global a pickle referenced, with our verdict on it."""

    name: str
    kind: str  # safe | unknown | dangerous
    count: int = 1


@dataclass
class PickleResult:
    """What a restricted read produced: the object graph and what it referenced."""

    root: Any
    globals: dict[str, GlobalRef] = field(default_factory=dict)
    storages: dict[str, StorageRef] = field(default_factory=dict)

    @property
    def refused(self) -> list[GlobalRef]:
        return [g for g in self.globals.values() if g.kind != "safe"]

    @property
    def dangerous(self) -> list[GlobalRef]:
        return [g for g in self.globals.values() if g.kind == "dangerous"]


def _storage_dtype(storage_type: Any) -> str:
    if isinstance(storage_type, TorchMarker) and storage_type.name in STORAGE_DTYPES:
        return STORAGE_DTYPES[storage_type.name]
    if isinstance(storage_type, DType):
        return storage_type.name
    raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class never imports and whose persistent ids are storages."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream, encoding="latin1")
        self.result = PickleResult(root=None)
        self._inert_types: dict[str, type[Inert]] = {}
        self._fresh: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # py2 names as torch maps them (e.g. __builtin__.set); the new names do not exist in py2,
        # so mapping unconditionally is harmless.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        ref = self.result.globals.get(qualified)
        if ref is None:
            self.result.globals[qualified] = GlobalRef(qualified, classify_ref(module, name))
        else:
            ref.count += 1
        if qualified in _RESOLVE:
            if qualified not in self._fresh:
                self._fresh[qualified] = _fresh(_RESOLVE[qualified])
            return self._fresh[qualified]
        if qualified not in self._inert_types:
            self._inert_types[qualified] = inert_class(module, name)
        return self._inert_types[qualified]

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        if pid[0] != "storage":
            # legacy torch files also pickle module sources ("module", type, file, source)
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


def safe_loads(data: bytes, what: str) -> PickleResult:
    """Read one pickle with the restricted reader; `what` names it in error messages."""
    return safe_load_stream(io.BytesIO(data), what)


def safe_load_stream(stream: Any, what: str) -> PickleResult:
    """Read one pickle from a binary stream positioned at it (legacy files hold several)."""
    unpickler = SafeUnpickler(stream)
    try:
        root = unpickler.load()
    except RecursionError:
        raise UnreadableCheckpoint(f"{what}: pickle nests too deeply to read") from None
    except MemoryError:
        raise UnreadableCheckpoint(f"{what}: pickle asks for more memory than it holds") from None
    except Exception as exc:  # any failure inside the VM is a corrupt or hostile file
        dangerous = unpickler.result.dangerous
        if dangerous:  # hostile, not merely damaged: say so, and where to look
            names = ", ".join(g.name for g in dangerous[:3])
            raise UnsafeCheckpoint(
                f"{what}: refers to dangerous callables ({names}) and is not a readable pickle "
                f"({_short(exc)}); refused. Nothing was run. See `ckpt scan` for details"
            ) from None
        raise UnreadableCheckpoint(f"{what}: not a readable pickle ({_short(exc)})") from None
    unpickler.result.root = root
    return unpickler.result


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
