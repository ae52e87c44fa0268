"""ckpt: inspect and repair PyTorch checkpoints safely."""

from .checkpoint import Checkpoint, TensorEntry, load
from .errors import CkptError

__version__ = "0.1.0"
__all__ = ["Checkpoint", "CkptError", "TensorEntry", "__version__", "load"]
