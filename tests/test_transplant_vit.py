"""Transplant between ViTs of different image or patch sizes: position embeddings resampled to
the target's grid, patch kernels with --resize-patch, checked bitwise against timm's own
resample_abs_pos_embed / resample_patch_embed and its checkpoint filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from conftest import run_json
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from ckpt_tool.surgery.transplant import Grid, Meta, plan
from ckpt_tool.transplanting import position_grids

SMALL = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # vit_tiny's layout, two blocks


def _vit(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **SMALL, **kwargs)


def _args(**kwargs: Any) -> list[str]:
    pairs = {**SMALL, **kwargs}
    return [a for k, v in pairs.items() for a in ("--arch-arg", f"{k}={v}")]


def _save(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _transplant(src: Path, into: str, out: Path, *extra: str) -> dict[str, Any]:
    code, report = run_json(["transplant", str(src), "--into", into, "-o", str(out), *extra])
    assert code == 0, report
    return report  # type: ignore[no-any-return]


def _row(report: dict[str, Any], key: str) -> dict[str, Any]:
    return next(k for k in report["keys"] if k["key"] == key)


def test_image_size_resamples_pos_embed_as_timm(tmp_path: Path) -> None:
    src = _save(_vit("vit_tiny_patch16_224"), tmp_path / "vit224.pth")
    out = tmp_path / "vit384.pth"
    report = _transplant(src, "timm/vit_tiny_patch16_224", out, *_args(img_size=384))
    row = _row(report, "pos_embed")
    assert row["status"] == "adapted"
    assert row["source_shape"] == [1, 197, 48] and row["shape"] == [1, 577, 48]
    assert row["resampled"] == {
        "what": "position_embedding", "from": [14, 14], "to": [24, 24], "prefix_tokens": 1,
    }  # fmt: skip
    assert "14×14 → 24×24" in row["detail"]
    assert report["totals"]["coverage_pct"] == 100.0
    written = torch.load(out, weights_only=True)
    source = torch.load(src, weights_only=True)
    expected = resample_abs_pos_embed(source["pos_embed"], [24, 24], num_prefix_tokens=1)
    assert torch.equal(written["pos_embed"], expected)
    target = _vit("vit_tiny_patch16_224", img_size=384)
    filtered = checkpoint_filter_fn(dict(source), target)
    for key, value in written.items():
        assert torch.equal(value, filtered[key]), key
    target.load_state_dict(written, strict=True)
    # every other tensor is the source's, untouched
    assert all(torch.equal(written[k], source[k]) for k in source if k != "pos_embed")


def test_non_square_grid_and_prefixless_embedding(tmp_path: Path) -> None:
    src = _save(_vit("vit_tiny_patch16_224"), tmp_path / "vit.pth")
    report = _transplant(
        src, "timm/vit_tiny_patch16_224", tmp_path / "wide.pth", *_args(img_size="(224, 320)")
    )
    assert _row(report, "pos_embed")["resampled"]["to"] == [14, 20]
    target = _vit("vit_tiny_patch16_224", img_size=(224, 320))
    filtered = checkpoint_filter_fn(dict(torch.load(src, weights_only=True)), target)
    written = torch.load(tmp_path / "wide.pth", weights_only=True)
    assert torch.equal(written["pos_embed"], filtered["pos_embed"])
    # deit3: the class token is not in pos_embed (no_embed_class), so no prefix token is kept
    src3 = _save(_vit("deit3_small_patch16_224"), tmp_path / "deit3.pth")
    report = _transplant(
        src3, "timm/deit3_small_patch16_224", tmp_path / "d384.pth", *_args(img_size=384)
    )
    assert _row(report, "pos_embed")["resampled"]["prefix_tokens"] == 0
    target3 = _vit("deit3_small_patch16_224", img_size=384)
    filtered3 = checkpoint_filter_fn(dict(torch.load(src3, weights_only=True)), target3)
    written3 = torch.load(tmp_path / "d384.pth", weights_only=True)
    assert torch.equal(written3["pos_embed"], filtered3["pos_embed"])
    target3.load_state_dict(written3, strict=True)


def test_patch_size_needs_resize_patch(tmp_path: Path) -> None:
    src = _save(_vit("vit_tiny_patch16_224"), tmp_path / "p16.pth")
    into = "timm/vit_tiny_patch16_224"
    report = _transplant(src, into, tmp_path / "plain.pth", *_args(patch_size=8))
    kernel = _row(report, "patch_embed.proj.weight")
    assert kernel["status"] == "shape_mismatch" and "--resize-patch" in kernel["detail"]
    assert _row(report, "pos_embed")["resampled"]["to"] == [28, 28]  # the grid still follows

    report = _transplant(src, into, tmp_path / "p8.pth", *_args(patch_size=8), "--resize-patch")
    kernel = _row(report, "patch_embed.proj.weight")
    assert kernel["status"] == "adapted"
    assert kernel["resampled"] == {
        "what": "patch_kernel", "from": [16, 16], "to": [8, 8], "prefix_tokens": 0,
    }  # fmt: skip
    source = torch.load(src, weights_only=True)
    written = torch.load(tmp_path / "p8.pth", weights_only=True)
    expected = resample_patch_embed(source["patch_embed.proj.weight"], [8, 8])
    assert torch.equal(written["patch_embed.proj.weight"], expected)
    target = _vit("vit_tiny_patch16_224", patch_size=8)
    filtered = checkpoint_filter_fn(dict(source), target)
    for key, value in written.items():
        assert torch.equal(value, filtered[key]), key
    target.load_state_dict(written, strict=True)


def test_resampled_patch_kernel_keeps_outputs_on_resized_patches(tmp_path: Path) -> None:
    """FlexiViT's property: going to a larger patch, the new kernel on a patch upsized from
    8×8 to 16×16 gives exactly the old kernel's output on the 8×8 patch."""
    src = _save(_vit("vit_tiny_patch16_224", patch_size=8), tmp_path / "p8.pth")
    _transplant(
        src, "timm/vit_tiny_patch16_224", tmp_path / "p16.pth",
        *_args(patch_size=16), "--resize-patch",
    )  # fmt: skip
    old = torch.load(src, weights_only=True)["patch_embed.proj.weight"]
    new = torch.load(tmp_path / "p16.pth", weights_only=True)["patch_embed.proj.weight"]
    assert new.shape == (48, 3, 16, 16)
    small = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    big = torch.nn.functional.interpolate(small, size=(16, 16), mode="bicubic", antialias=True)
    out_old = torch.einsum("ochw,bchw->bo", old.double(), small.double())
    out_new = torch.einsum("ochw,bchw->bo", new.double(), big.double())
    assert torch.allclose(out_old, out_new, rtol=1e-4, atol=1e-4)


def test_torchvision_vit_image_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"patch_size": 16, "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
    model = torchvision.models.VisionTransformer(image_size=224, **kwargs)
    src = _save(model, tmp_path / "tv.pth")
    factory = tmp_path / "tvvit.py"
    factory.write_text(
        "import torchvision\n\n"
        "def vit(image_size=224):\n"
        f"    return torchvision.models.VisionTransformer(image_size=image_size, **{kwargs!r})\n"
    )
    report = _transplant(
        src, f"{factory}:vit", tmp_path / "tv384.pth", "--arch-arg", "image_size=384"
    )
    row = _row(report, "encoder.pos_embedding")
    assert row["status"] == "adapted" and row["resampled"]["to"] == [24, 24]
    assert row["resampled"]["prefix_tokens"] == 1
    target = torchvision.models.VisionTransformer(image_size=384, **kwargs)
    written = torch.load(tmp_path / "tv384.pth", weights_only=True)
    target.load_state_dict(written, strict=True)
    source = torch.load(src, weights_only=True)["encoder.pos_embedding"]
    expected = resample_abs_pos_embed(source, [24, 24], num_prefix_tokens=1)
    assert torch.equal(written["encoder.pos_embedding"], expected)


class _Plain(nn.Module):
    """A ViT-like module that declares nothing: the grid comes from the token count alone."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.pos_embedding = nn.Parameter(torch.zeros(1, tokens, 8))


def test_grid_from_token_count_when_the_model_says_nothing() -> None:
    grids, patch = position_grids(_Plain(1 + 12 * 12))
    assert grids == {"pos_embedding": Grid((12, 12), 1)}
    assert patch == "proj.weight"
    grids, _ = position_grids(_Plain(64))
    assert grids == {"pos_embedding": Grid((8, 8), 0)}


@pytest.mark.parametrize(
    ("source_tokens", "status"),
    [(1 + 14 * 14, "adapted"), (1 + 14 * 15, "shape_mismatch"), (1 + 24 * 24, "copied")],
)
def test_plan_resamples_only_square_grids_that_differ(source_tokens: int, status: str) -> None:
    """A source whose grid is not square (after the prefix) is not guessed at: it stays a
    shape mismatch, reported, and initialised by the architecture."""
    source = {"pos_embed": Meta((1, source_tokens, 8), "float32")}
    target = {"pos_embed": Meta((1, 1 + 24 * 24, 8), "float32")}
    p = plan(source, target, grids={"pos_embed": Grid((24, 24), 1)})
    assert p.keys[0].status == status
