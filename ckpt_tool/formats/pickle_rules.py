"""The verdict rules: how each global a pickle names is judged, from how the pickle uses it.

Three verdicts, earned by an allowlist, never by a denylist:

- **safe**: on our reader's allowlist, which is what `torch.load(weights_only=True)` permits
  (tensor and storage rebuilds, dtypes, containers) plus numpy's array rebuilds.
- **needs code**: outside the allowlist, but used only the way pickling an ordinary object
  uses a name: a class instantiated by NEWOBJ and given state by BUILD, a function or class
  referenced and never called, or one of the few call shapes real checkpoints hold (enum
  members, `datetime`, `pathlib` paths; `CALL_OK` below). A real load imports the name's
  module and runs that code; `ckpt` keeps an inert record instead.
- **dangerous**: anything else called, any name that runs or loads code even if only
  referenced (`RUNS_CODE_*`), a name computed at load time, a call of what a call returned,
  BUILD applied to a global itself.

The denylists below only ever make a verdict worse: a name missing from them is still
dangerous the moment the pickle calls it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

SAFE = "safe"
NEEDS_CODE = "needs code"
DANGEROUS = "dangerous"
VERDICTS = (SAFE, NEEDS_CODE, DANGEROUS)
ERROR = "error"  # not a verdict: bytes that could not be read (exit 1), never a pass
RANK = {v: i for i, v in enumerate(VERDICTS)}


def worst(*verdicts: str) -> str:
    """The most severe of some verdicts (safe when there are none)."""
    return max(verdicts, key=RANK.__getitem__, default=SAFE)


# Modules whose every name runs commands or code, imports modules, loads pickles or opens
# files or connections.
RUNS_CODE_MODULES = frozenset(
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
# Builtins that run code or reach arbitrary objects; other builtins follow the general rules.
RUNS_CODE_BUILTINS = frozenset(
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
RUNS_CODE_NAMES = frozenset(
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
RUNS_CODE_PREFIXES = (
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
# ... except these inside them, which only return their argument (TorchScript's debug pickles).
BENIGN_PREFIXES = ("torch.jit._pickle.",)

# Classes and functions real checkpoints call with literal arguments (values, or what other
# entries here return): constructing them runs no command and opens nothing.
CALL_OK = frozenset(
    {
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "pathlib._local.Path",
        "pathlib._local.PosixPath",
        "pathlib._local.WindowsPath",
        "pathlib._local.PurePath",
        "pathlib._local.PurePosixPath",
        "pathlib._local.PureWindowsPath",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "collections.deque",
        "types.SimpleNamespace",
        "re._compile",
        "re.RegexFlag",
        "builtins.range",
        # numpy's random states (RandomState, Generator and their bit generators)
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.__RandomState_ctor",
        "numpy.random.mtrand.__RandomState_ctor",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    }
)
# Loaders whose one argument is the bytes they unpickle (plain `pickle.dump` of a tensor
# stores its storage as `_load_from_bytes(torch.save output)`): judged by those bytes.
NESTED_LOADERS = frozenset({"torch.storage._load_from_bytes"})
# Names that only load or run what they are given, whatever package holds them: `load_url`,
# `loads`, `load_state_dict(path, weights_only=False)` ... (the last part of the name).
LOADER_NAMES = frozenset({"load", "loads", "load_url", "load_file", "load_state_dict", "unpickle"})
_STDLIB = frozenset(sys.stdlib_module_names) | {"__builtin__", "copy_reg"}
_BUILTINS = ("builtins", "__builtin__", "__builtins__")


@dataclass
class Use:
    """How one pickle uses one global it names: every way the unpickler touched it."""

    name: str  # module.attr after pickle's py2 name mapping
    module: str
    attr: str  # a dotted attribute path from protocol 4 on (`Grammar.loads`)
    opcode: str  # GLOBAL | STACK_GLOBAL | INST | OBJ | EXT
    offset: int | None  # where the opcode naming it starts (first time), in its pickle
    written: str | None = None  # the name as the file wrote it, when py2 mapping changed it
    count: int = 0  # opcodes naming it
    allowlisted: bool = False
    constructed: int = 0  # NEWOBJ / INST without arguments / copyreg reconstruction
    calls: int = 0  # REDUCE / INST or OBJ with arguments
    nonliteral_calls: int = 0  # calls given anything but literal values
    one_literal_calls: int = 0  # calls given exactly one literal value (enum members)
    result_called: bool = False  # something this returned was itself called
    built: bool = False  # BUILD applied to the global itself
    computed: bool = False  # its module or name string was computed at load time
    payloads: list[bytes] = field(default_factory=list)  # what a NESTED_LOADERS call unpickles
    payloads_safe: bool = False  # every call had a payload, each read the same way and safe

    def judge(self, data_classes: frozenset[str] = frozenset()) -> tuple[str, str, str]:
        """(verdict, why, message): why is one of allowlisted, referenced, constructed,
        called, computed, tampering, runs-code."""
        return judge(self, data_classes)


def runs_code(module: str, attr: str) -> bool:
    """A name that runs commands or code, imports modules or unpickles, even if only referenced.

    A dotted attribute path is judged at every step: `torch` + `serialization.os.system`
    reaches os.system.
    """
    if _runs_code_name(f"{module}.{attr}"):
        return True
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if part.startswith("__") and part.endswith("__"):
            return True  # __class__, __globals__, __builtins__ ... reach anything
        if i < len(parts) - 1 and part.lstrip("_") in RUNS_CODE_MODULES:
            return True  # a module the path passes through (`_os`, `sys`)
        if _runs_code_name(f"{module}.{'.'.join(parts[: i + 1])}"):
            return True
    return parts[-1] in LOADER_NAMES or parts[-1].startswith(("load_", "_load_"))


def _runs_code_name(qualified: str) -> bool:
    module, _, name = qualified.rpartition(".")
    root = module.split(".")[0]
    if root in _BUILTINS:
        return name in RUNS_CODE_BUILTINS
    return (
        qualified in RUNS_CODE_NAMES
        or root in RUNS_CODE_MODULES
        or (qualified.startswith(RUNS_CODE_PREFIXES) and not qualified.startswith(BENIGN_PREFIXES))
    )


def enum_like(use: Use) -> bool:
    """Called only with one literal value each time, as pickle stores enum members
    (`IntervalStrategy('steps')`): a CamelCase class outside the standard library, whose
    classes called that way open files and connections (`logging.FileHandler('x')`)."""
    root = use.module.split(".")[0]
    return (
        use.calls > 0
        and use.one_literal_calls == use.calls
        and "." not in use.attr
        and use.attr.lstrip("_")[:1].isupper()
        and root not in _STDLIB
    )


def judge(use: Use, data_classes: frozenset[str] = frozenset()) -> tuple[str, str, str]:
    """The verdict on one global from how the pickle used it (see the module docstring)."""
    if use.computed:
        return (
            DANGEROUS,
            "computed",
            "its module or name is computed at load time, so a real load may import anything",
        )
    if use.built:
        return (
            DANGEROUS,
            "tampering",
            "BUILD applied to the global itself: a real load overwrites attributes of an object "
            "the loader shares",
        )
    if use.result_called:
        return (
            DANGEROUS,
            "called",
            "what it returned is called again: a real load runs whatever that is",
        )
    if use.allowlisted:
        if use.module.split(".")[0] == "numpy":
            return (
                SAFE,
                "allowlisted",
                "numpy array rebuild (torch.load(weights_only=True) needs "
                "torch.serialization.add_safe_globals for it)",
            )
        return SAFE, "allowlisted", "allowlisted: torch.load(weights_only=True) permits it"
    if use.name in data_classes and use.nonliteral_calls == 0:
        return SAFE, "allowlisted", "a class this kind of file is made of"
    if use.name in NESTED_LOADERS and use.payloads_safe:
        return (
            NEEDS_CODE,
            "loads-safe-bytes",
            "called on bytes that hold a torch file, read the same way and found safe; "
            "torch.load(weights_only=True) refuses the call itself",
        )
    if use.name in CALL_OK and use.nonliteral_calls == 0:
        how = "called with literal values" if use.calls else "referenced"
        return (
            NEEDS_CODE,
            "constructed" if use.calls else "referenced",
            f"{how}; a plain value class (a real load imports {use.module})",
        )
    if runs_code(use.module, use.attr):
        return (
            DANGEROUS,
            "runs-code",
            "runs commands or code, imports modules, loads pickles or opens files: dangerous "
            "even if only referenced",
        )
    if use.calls:
        if enum_like(use):
            return (
                NEEDS_CODE,
                "constructed",
                "called with one literal value, as pickle stores enum members; a real load "
                f"imports {use.module} and runs its code",
            )
        return (
            DANGEROUS,
            "called",
            "called with the pickle's arguments: a real load imports it and runs it "
            "(only allowlisted callables may be called)",
        )
    if use.constructed:
        return (
            NEEDS_CODE,
            "constructed",
            "a class instantiated the ordinary way (NEWOBJ, then its state set); a real load "
            f"imports {use.module} and runs its code",
        )
    return (
        NEEDS_CODE,
        "referenced",
        f"referenced, never called; a real load imports {use.module}",
    )
