"""Executing a transplant: a built model and a plan in, the target's state_dict out.

The plan (`surgery.transplant.plan`) is pure; this half touches torch modules. Copied tensors
keep their exact bytes (the source's records reused, or read through TensorReader);
everything else comes from the model, initialised as the plan says.
"""

from __future__ import annotations

import collections
import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckpt_tool.edit import Output
from ckpt_tool.errors import SurgeryError
from ckpt_tool.formats.raw import tensor_bytes
from ckpt_tool.formats.safe_pickle import StorageRef, TensorRecord, contiguous_stride
from ckpt_tool.surgery.transplant import (
    METHOD_LABELS,
    ONES,
    TRANSFERRED,
    ZEROS,
    Grid,
    Meta,
    Resample,
    TransplantPlan,
    plan,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ckpt_tool.archs import Built
    from ckpt_tool.checkpoint import Checkpoint


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def source_metas(ckpt: Checkpoint) -> dict[str, Meta]:
    return {k: Meta(e.shape, e.dtype, e.kind) for k, e in ckpt.tensors.items()}


def target_metas(model: nn.Module) -> dict[str, Meta]:
    """The target's state_dict as metadata: shapes, dtypes, parameter or buffer."""
    import torch

    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out: dict[str, Meta] = {}
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise SurgeryError(
                f"the target's state_dict holds a non-tensor entry {k!r} (extra state); "
                "transplant supports tensor state only"
            )
        out[k] = Meta(tuple(v.shape), dtype_name(v.dtype), "parameter" if k in params else "buffer")
    return out


def norm_weights(model: nn.Module) -> set[str]:
    """Keys of normalisation layers' weights (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)."""
    from torch import nn

    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return {
        f"{name}.weight" if name else "weight"
        for name, m in model.named_modules()
        if isinstance(m, kinds) and getattr(m, "weight", None) is not None
    }


def input_conv_key(model: nn.Module) -> str | None:
    from ckpt_tool.archs import first_conv

    found = first_conv(model)
    return None if found is None else (f"{found[0]}.weight" if found[0] else "weight")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-conv weight for in_chans inputs, as timm's adapt_input_conv does.

    One channel: the sum over the source's input channels. More: the source channels repeated
    ceil(in_chans / n) times, cut to in_chans, and scaled by n / in_chans (n = 3 for RGB).
    """
    import torch

    work = weight if weight.dtype == torch.float64 else weight.float()
    n = work.shape[1]
    if in_chans == 1:
        work = work.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / n)
        work = work.repeat(1, reps, *([1] * (work.dim() - 2)))[:, :in_chans] * (n / in_chans)
    return work.to(weight.dtype).contiguous()


def resample_position_embedding(
    embed: torch.Tensor, old: tuple[int, int], new: tuple[int, int], prefix_tokens: int
) -> torch.Tensor:
    """(1, prefix + old grid, dim) -> (1, prefix + new grid, dim): the grid part resized
    bicubic with antialiasing in float32, prefix tokens (class, distillation) kept as they are;
    the arithmetic of timm's resample_abs_pos_embed."""
    import torch
    from torch.nn import functional as F

    prefix, grid = embed[:, :prefix_tokens], embed[:, prefix_tokens:]
    dim = grid.shape[-1]
    work = grid.float().reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    work = F.interpolate(work, size=new, mode="bicubic", antialias=True, align_corners=False)
    out = work.permute(0, 2, 3, 1).reshape(1, -1, dim).to(embed.dtype)
    return torch.cat([prefix, out], dim=1) if prefix_tokens else out


def resample_patch_kernel(kernel: torch.Tensor, new: tuple[int, int]) -> torch.Tensor:
    """A patch-embedding kernel for another patch size: the pseudo-inverse of the bicubic
    resize of its inputs (FlexiViT), so the new kernel on resized patches gives the old
    kernel's outputs; the arithmetic of timm's resample_patch_embed."""
    import torch
    from torch.nn import functional as F

    out_ch, in_ch, h, w = kernel.shape
    basis = torch.eye(h * w, dtype=torch.float32).reshape(h * w, 1, h, w)
    resized = F.interpolate(basis, size=new, mode="bicubic", antialias=True, align_corners=False)
    matrix = resized.squeeze(1).permute(1, 2, 0).reshape(new[0] * new[1], h * w)
    pinv = torch.linalg.pinv(matrix)
    work = kernel.reshape(out_ch, in_ch, -1).float() @ pinv
    result: torch.Tensor = work.reshape(out_ch, in_ch, *new).to(kernel.dtype)
    return result


def apply_resample(value: torch.Tensor, how: Resample) -> torch.Tensor:
    if how.what == "patch_kernel":
        return resample_patch_kernel(value, how.new).contiguous()
    return resample_position_embedding(value, how.old, how.new, how.prefix_tokens).contiguous()


POSITION_NAMES = ("pos_embed", "pos_embedding", "position_embeddings", "absolute_pos_embed")


def position_grids(model: nn.Module) -> tuple[dict[str, Grid], str | None]:
    """The target's absolute position embeddings (by name, 3-D, one row) with their token
    grid, and its patch-embedding weight: the first convolution whose stride is its kernel.

    The grid is what the model says (timm's patch_embed.grid_size and num_prefix_tokens),
    else the input size it declares over the patch stride, the rest of the tokens prefix.
    """
    from ckpt_tool.archs import declared_image_size, first_conv

    found = first_conv(model)
    patch_key: str | None = None
    stride: tuple[int, int] | None = None
    if found is not None:
        conv = found[1]
        kernel = tuple(getattr(conv, "kernel_size", ()))
        if len(kernel) == 2 and tuple(getattr(conv, "stride", ())) == kernel and kernel[0] > 1:
            patch_key = f"{found[0]}.weight" if found[0] else "weight"
            stride = (int(kernel[0]), int(kernel[1]))
    image = declared_image_size(model)
    grids: dict[str, Grid] = {}
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf not in POSITION_NAMES or param.dim() != 3 or param.shape[0] != 1:
            continue
        module = model.get_submodule(owner) if owner else model
        tokens = int(param.shape[1])
        grid = _declared_grid(module, tokens)
        if grid is None and image is not None and stride is not None:
            rows, cols = image[0] // stride[0], image[1] // stride[1]
            if 0 <= tokens - rows * cols <= 8:
                grid = Grid((rows, cols), tokens - rows * cols)
        if grid is None:  # a square grid after the fewest prefix tokens
            for prefix in range(0, 9):
                side = math.isqrt(max(tokens - prefix, 0))
                if side > 1 and side * side == tokens - prefix:
                    grid = Grid((side, side), prefix)
                    break
        if grid is not None:
            grids[name] = grid
    return grids, patch_key


def _declared_grid(module: nn.Module, tokens: int) -> Grid | None:
    """timm's VisionTransformer family: patch_embed.grid_size, num_prefix_tokens, no_embed_class."""
    size = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        return None
    rows, cols = int(size[0]), int(size[1])
    prefix = 0 if getattr(module, "no_embed_class", False) else tokens - rows * cols
    return Grid((rows, cols), prefix) if prefix >= 0 and tokens == prefix + rows * cols else None


def _initialise(t: torch.Tensor, how: str) -> None:
    from torch import nn

    if how == ZEROS:
        nn.init.zeros_(t)
    elif how == ONES:
        nn.init.ones_(t)
    elif how == METHOD_LABELS["kaiming"]:
        nn.init.kaiming_normal_(t)
    elif how == METHOD_LABELS["xavier"]:
        nn.init.xavier_normal_(t)
    elif how == METHOD_LABELS["normal"]:
        nn.init.normal_(t, 0.0, 0.01)


def tensor_record(t: torch.Tensor) -> TensorRecord:
    """A record for a live tensor, its bytes held inline until the writer streams them."""

    c = t.detach().to("cpu").contiguous()
    data = tensor_bytes(c)
    stride = tuple(c.stride())
    return TensorRecord(None, 0, tuple(c.shape), stride, dtype_name(c.dtype), inline=data)


def _whole_storage(rec: TensorRecord) -> bool:
    """The record is exactly its storage (offset 0, contiguous, every element): reuse its bytes."""
    s = rec.storage
    if s is None or rec.inline is not None or rec.offset != 0 or s.dtype != rec.dtype:
        return False
    if rec.numel != s.numel:
        return False
    return rec.numel <= 1 or contiguous_stride(rec.shape) == rec.stride


def _cpu(storage: StorageRef) -> StorageRef:
    """The same bytes (located by key), to be loaded on CPU whatever device saved them."""
    if storage.location == "cpu":
        return storage
    return StorageRef(storage.key, storage.dtype, "cpu", storage.numel)


def execute(ckpt: Checkpoint, model: nn.Module, plan_: TransplantPlan) -> Output:
    """The target state_dict the plan describes, ready for the writer (model init is modified)."""
    import torch

    from ckpt_tool.tensors import TensorReader, torch_dtype

    state = model.state_dict()
    with torch.no_grad():
        for k in plan_.keys:
            if k.status not in TRANSFERRED and k.init is not None:
                _initialise(state[k.key], k.init)
    records: dict[str, TensorRecord] = {}
    on_cpu: dict[int, StorageRef] = {}  # the output is for a new model: its tensors load on CPU
    with TensorReader(ckpt) as reader:
        for k in plan_.keys:
            if k.status not in TRANSFERRED:
                records[k.key] = tensor_record(state[k.key])
                continue
            assert k.source_key is not None
            entry = ckpt.tensors[k.source_key]
            rec = entry.record
            if k.status != "adapted" and k.dtype == rec.dtype and _whole_storage(rec):
                assert rec.storage is not None
                storage = on_cpu.setdefault(id(rec.storage), _cpu(rec.storage))
                records[k.key] = TensorRecord(storage, 0, rec.shape, rec.stride, rec.dtype)
                continue
            value = reader.read(entry)
            if k.resample is not None:
                value = apply_resample(value, k.resample)
            elif k.status == "adapted":
                assert plan_.in_chans is not None
                value = adapt_input_conv(value, plan_.in_chans)
            records[k.key] = tensor_record(value.to(torch_dtype(k.dtype)))
    root: collections.OrderedDict[str, Any] = collections.OrderedDict(records)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        root._metadata = copy.deepcopy(meta)  # type: ignore[attr-defined]
    return Output(root=root, weights=dict(records), weights_key=None, whole_container=False)


def transplant(
    ckpt: Checkpoint,
    built: Built,
    *,
    maps: Sequence[str] = (),
    match: str = "exact",
    init: str = "default",
    seed: int = 0,
    keep_dtype: bool = False,
    resize_patch: bool = False,
) -> tuple[TransplantPlan, Output]:
    """Plan and execute a transplant of ckpt's weights into a built architecture."""
    model = built.model
    try:
        p = _plan_for(ckpt, built, maps, match, init, seed, keep_dtype, resize_patch)
    except SurgeryError as exc:
        raise SurgeryError(f"{ckpt.path}: {exc.message}") from None
    p.notes = [*built.notes, *p.notes]
    return p, execute(ckpt, model, p)


def _plan_for(
    ckpt: Checkpoint,
    built: Built,
    maps: Sequence[str],
    match: str,
    init: str,
    seed: int,
    keep_dtype: bool,
    resize_patch: bool,
) -> TransplantPlan:
    model = built.model
    grids, patch_kernel = position_grids(model)
    return plan(
        source_metas(ckpt),
        target_metas(model),
        maps=maps,
        match=match,
        num_classes=built.num_classes,
        in_chans=built.in_chans,
        input_conv=input_conv_key(model),
        init=init,
        seed=seed,
        keep_dtype=keep_dtype,
        norms=norm_weights(model),
        grids=grids,
        patch_kernel=patch_kernel,
        resize_patch=resize_patch,
    )
