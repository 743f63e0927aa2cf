"""Exact parameter counts of the papers' configurations (ViT, DeiT), equal to timm 1.0.31's models of the same
names, built on the meta device so even ViT-H costs nothing, plus the closed form of the ViT paper's architecture."""

import pytest
import torch

import vitkit

# name -> parameters with the 1000-class head (timm 1.0.31's model of that name, built on the meta device)
REFERENCE = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_small_patch32_224": 22_878_952,
    "vit_base_patch32_224": 88_224_232,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch16_384": 86_859_496,
    "vit_base_patch8_224": 86_576_872,
    "vit_large_patch16_224": 304_326_632,
    "vit_large_patch32_224": 306_535_400,
    "vit_huge_patch14_224": 632_045_800,
    "vit_base_r50_s16_224": 98_659_112,
    "vit_base_r50_s16_384": 98_950_952,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
}
# 21,843-class heads (ImageNet-21k pre-training)
REFERENCE_21K = {
    "vit_tiny_patch16_224": 9_740_115,
    "vit_small_patch16_224": 30_075_219,
    "vit_base_patch16_224": 102_595_923,
}


def count(name: str, **kw) -> int:
    with torch.device("meta"):
        model = vitkit.create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_param_counts(name):
    assert count(name) == REFERENCE[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_21K))
def test_reference_param_counts_21k_head(name):
    assert count(name, num_classes=21843) == REFERENCE_21K[name]


@pytest.mark.parametrize("name", vitkit.list_models("vit_*_patch*"))
def test_closed_form(name):
    """ViT = patch conv (p²·C·d + d) + cls d + pos (N+1)·d + L·block + final LN 2d + head (d·K + K),
    block = attention (4d² + 4d) + MLP (2rd² + rd + d) + two LNs (4d), i.e. 12d² + 13d for r = 4."""
    with torch.device("meta"):
        model = vitkit.create_model(name)
    c = model.config
    d, L, K, C, p, r = c.embed_dim, c.depth, c.num_classes, c.in_chans, c.patch_size, int(c.mlp_ratio)
    n = model.patch_embed.num_patches
    block = 4 * d * d + 4 * d + 2 * r * d * d + r * d + d + 4 * d
    if r == 4:
        assert block == 12 * d * d + 13 * d
    expected = p * p * C * d + d + d + (n + 1) * d + L * block + 2 * d + d * K + K
    assert sum(q.numel() for q in model.parameters()) == expected


def test_mnist_model_is_small():
    # the CPU model for 28x28 digits: a few hundred thousand parameters at most
    assert 50_000 < count("vit_micro_patch4_28") < 300_000
