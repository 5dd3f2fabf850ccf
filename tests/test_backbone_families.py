"""Patch tokens of every timm family a user would pick, on tiny random-init models of each kind.

A token model's prefix tokens (class, DINOv2's registers, DeiT's distillation token) are set to
1e4 and the LayerNorms around the blocks become identities, so a prefix token keeps that
magnitude to the output while patch tokens stay small: any prefix token among the patches shows.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from sact.extract.backbone import PatchFeatures, load_backbone

TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}
PREFIX_MARK = 1e4
PREFIX_PARAMETERS = ("cls_token", "reg_token", "dist_token")

# family: (timm name, tiny overrides, input px, prefix tokens, (h, w), D)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", {**TINY_VIT, "img_size": 64}, 64, 1, (4, 4), 32),
    "dinov2-registers": (
        "vit_small_patch14_reg4_dinov2",
        {**TINY_VIT, "img_size": 56},
        56,
        5,
        (4, 4),
        32,
    ),
    "clip-pre-norm": ("vit_base_patch16_clip_224", {**TINY_VIT, "img_size": 64}, 64, 1, (4, 4), 32),
    "deit-distilled": (
        "deit_tiny_distilled_patch16_224",
        {**TINY_VIT, "img_size": 64},
        64,
        2,
        (4, 4),
        32,
    ),
    "siglip-no-class-token": (
        "vit_base_patch16_siglip_224",
        {**TINY_VIT, "img_size": 64},
        64,
        0,
        (4, 4),
        32,
    ),
    "eva02": ("eva02_tiny_patch14_224", {**TINY_VIT, "img_size": 56}, 56, 1, (4, 4), 32),
    "hybrid-resnet-vit": ("vit_tiny_r_s16_p8_224", {**TINY_VIT, "img_size": 64}, 64, 1, (2, 2), 32),
    "convnext": (
        "convnext_atto",
        {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)},
        64,
        0,
        (2, 2),
        32,
    ),
    "swin-nhwc": (
        "swin_tiny_patch4_window7_224",
        {
            "depths": (1, 1, 1, 1),
            "embed_dim": 8,
            "num_heads": (1, 1, 1, 1),
            "img_size": 64,
            "window_size": 4,
        },
        64,
        0,
        (2, 2),
        64,
    ),
    "resnet": ("resnet10t", {}, 64, 0, (2, 2), 512),
}


def tiny_model(name: str, overrides: dict) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=0, **overrides)
    for parameter in PREFIX_PARAMETERS:
        tokens = getattr(model, parameter, None)
        if tokens is not None:
            tokens.data.fill_(PREFIX_MARK)
    for norm in ("norm_pre", "norm"):
        if isinstance(getattr(model, norm, None), nn.LayerNorm):
            setattr(model, norm, nn.Identity())
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_tokens_of_each_family(family: str, one_torch_thread: None) -> None:
    name, overrides, size, prefix, (height, width), dim = FAMILIES[family]
    model = tiny_model(name, overrides)
    assert int(getattr(model, "num_prefix_tokens", 0)) == prefix
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        raw = model.forward_features(images)
        patches = PatchFeatures(model=model)(images)  # (B, P, D)
    assert patches.shape == (2, height * width, dim)
    assert patches.abs().max() < PREFIX_MARK / 100  # no prefix token among the patches
    if prefix:
        assert raw.shape[1] == prefix + height * width
        assert raw[:, :prefix].abs().amax(dim=-1).min() > PREFIX_MARK / 2  # marked, and present
        torch.testing.assert_close(patches, raw[:, prefix:], rtol=0, atol=0)


def test_weights_file_of_the_default_size_runs_at_another(tmp_path: Path) -> None:
    """A published checkpoint holds the position embeddings of the model's default size (384 px
    here, DINOv2's 518): `--weights FILE --size S` resamples them to S as timm's hub load does."""
    name = "vit_tiny_patch16_384"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source = timm.create_model(name, pretrained=False, num_classes=0)
    path = tmp_path / "vit-384.safetensors"
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(path))

    loaded = load_backbone(name, weights_file=path, size=64)
    assert loaded.grid == (4, 4) and loaded.dim == 192
    reference = timm.create_model(
        name,
        pretrained=True,
        num_classes=0,
        img_size=64,
        pretrained_cfg_overlay={"file": str(path)},
    ).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = reference.forward_features(images)[:, 1:]  # (B, 16, D): class token dropped
        got = loaded.features(images)
    torch.testing.assert_close(got, expected)


def test_readme_backbone_table_is_what_the_models_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """README's table of recommended backbones is docs/backbones.py's output, row for row."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("backbones_doc", root / "docs" / "backbones.py")
    assert spec is not None and spec.loader is not None
    doc = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, doc)  # dataclasses look their module up there
    spec.loader.exec_module(doc)
    rows = [doc.describe(*recommended) for recommended in doc.RECOMMENDED]
    by_name = {(row.name, row.size_option): row for row in rows}
    assert by_name[("resnet50.tv_in1k", None)].grid == (7, 7)
    assert by_name[("vit_base_patch14_reg4_dinov2.lvd142m", 224)].grid == (16, 16)
    assert by_name[("vit_base_patch16_clip_224.openai", None)].dim == 768
    readme = (root / "README.md").read_text(encoding="utf-8").splitlines()
    for line in doc.markdown_rows(rows, doc.ssv2_otam_videos()):
        assert line in readme, line
