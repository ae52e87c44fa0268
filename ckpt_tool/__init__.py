"""ckpt: inspect and repair PyTorch checkpoints safely."""

from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint, TensorEntry, load
from .errors import CkptError

if TYPE_CHECKING:
    from .apply import apply_freeze

__version__ = "0.1.0"
__all__ = ["Checkpoint", "CkptError", "TensorEntry", "__version__", "apply_freeze", "load"]


def __getattr__(name: str) -> Any:
    # apply_freeze is imported on first use, so `import ckpt_tool` stays free of torch
    if name == "apply_freeze":
        from .apply import apply_freeze

        return apply_freeze
    raise AttributeError(f"module 'ckpt_tool' has no attribute {name!r}")
