"""The bytes of a live torch tensor, in C order, as a file stores them."""

from __future__ import annotations

from typing import Any


def tensor_bytes(t: Any) -> bytes:
    """A tensor's bytes (copied to CPU and made contiguous first); b"" when it is empty."""
    import torch

    c = t.detach().to("cpu").contiguous().reshape(-1)
    return bytes(c.view(torch.uint8).numpy().tobytes()) if c.numel() else b""
