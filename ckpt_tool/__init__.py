"""ckpt: inspect and repair PyTorch checkpoints safely."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .apply import apply_freeze
    from .checkpoint import Checkpoint, TensorEntry, load
    from .errors import CkptError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "CkptError", "TensorEntry", "__version__", "apply_freeze", "load"]

# Imported on first use, so `import ckpt_tool` (and the `ckpt` entry point) costs nothing
# until a name is needed, and `import ckpt_tool` stays free of torch.
_LAZY = {
    "Checkpoint": ".checkpoint",
    "TensorEntry": ".checkpoint",
    "load": ".checkpoint",
    "CkptError": ".errors",
    "apply_freeze": ".apply",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpt_tool' has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)
