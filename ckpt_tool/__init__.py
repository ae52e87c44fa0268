"""ckpt: inspect and repair PyTorch checkpoints safely.

One function per command (`ckpt_tool.strip_module(path, output=...)`, `convert`, `cast`,
`freeze`, `transplant`, `scan`, ...), each returning its typed report and raising the
CkptError family; `load` and `TensorReader` for reading.
"""

from __future__ import annotations

from importlib import import_module

# not `from typing import TYPE_CHECKING`: this module runs before the `ckpt` entry point's
# Ctrl-C guard, so it imports nothing it can do without (typing took 3 ms of that window)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .api import (
        InspectReport,
        add_module,
        average,
        cast,
        convert,
        count,
        diff,
        drop,
        extract,
        freeze,
        inspect,
        merge_lora,
        rename,
        scan,
        smoke_train,
        strip_module,
        transplant,
    )
    from .apply import apply_freeze
    from .checkpoint import Checkpoint, TensorEntry, load
    from .errors import CkptError
    from .output import Report, WriteReport
    from .scanning import ScanReport
    from .tensors import TensorReader

__version__ = "0.1.0"

# Imported on first use, so `import ckpt_tool` (and the `ckpt` entry point) costs nothing
# until a name is needed, and `import ckpt_tool` stays free of torch.
# Names outside the API package; every other name of __all__ is a command of ckpt_tool.api.
_ELSEWHERE = {
    "Checkpoint": ".checkpoint",
    "TensorEntry": ".checkpoint",
    "load": ".checkpoint",
    "CkptError": ".errors",
    "apply_freeze": ".apply",
    "TensorReader": ".tensors",
    "Report": ".output",
    "WriteReport": ".output",
    "ScanReport": ".scanning",
}
__all__ = [
    "Checkpoint",
    "CkptError",
    "InspectReport",
    "Report",
    "ScanReport",
    "TensorEntry",
    "TensorReader",
    "WriteReport",
    "__version__",
    "add_module",
    "apply_freeze",
    "average",
    "cast",
    "convert",
    "count",
    "diff",
    "drop",
    "extract",
    "freeze",
    "inspect",
    "load",
    "merge_lora",
    "rename",
    "scan",
    "smoke_train",
    "strip_module",
    "transplant",
]


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name, ".api" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'ckpt_tool' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value
