"""Parity of vitkit's ResNetV2 backbone with timm's R50+ViT hybrid backbone (random weights, no downloads)."""

import pytest
import torch
from torch import nn

from vitkit.models.resnetv2 import ResNetV2

timm = pytest.importorskip("timm")
from timm.models.vision_transformer_hybrid import _resnetv2  # noqa: E402

# Parameter count of timm's vit_base_r50_s16_224 / _384 backbone (patch_embed.backbone).
R50_S16_NUM_PARAMS = 11_894_848


def _timm_backbone(layers, stem_type="same"):
    """timm's backbone exactly as ``vit_base_r50_s16_*`` builds it (``_resnetv2``), with random GroupNorm."""
    torch.manual_seed(0)
    ref = _resnetv2(tuple(layers), padding_same=stem_type == "same")
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, mean=1.0, std=0.5)
                nn.init.normal_(m.bias, mean=0.0, std=0.5)
    return ref.eval()


def _ours_from(ref, layers, stem_type="same"):
    ours = ResNetV2(layers=layers, stem_type=stem_type)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval()


@pytest.mark.parametrize(
    "layers, stem_type, size",
    [
        ((1, 1, 1), "same", (224, 224)),
        ((2, 2, 2), "same", (384, 384)),
        ((2, 2, 2), "same", (160, 224)),
        ((1, 1, 1), "same", (97, 131)),  # odd sizes: asymmetric "SAME" padding at every stride-2 op
        ((1, 1, 1), "", (97, 131)),  # symmetric PyTorch padding variant
        ((1, 1, 1, 1), "same", (128, 96)),  # 4 stages (R50 of the ViT-L/32 hybrids): stride 32
    ],
)
def test_matches_timm(layers, stem_type, size):
    ref = _timm_backbone(layers, stem_type)
    ours = _ours_from(ref, layers, stem_type)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == expected.shape
    assert got.shape[1] == ours.num_features
    assert got.shape[-2:] == tuple(-(-s // ours.reduction) for s in size)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_full_r50_matches_timm_at_224():
    layers = (3, 4, 9)
    ref = _timm_backbone(layers)
    ours = _ours_from(ref, layers)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == (2, 1024, 14, 14)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_full_r50_structure_matches_timm():
    ref = _resnetv2((3, 4, 9))
    ours = ResNetV2()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters()) == R50_S16_NUM_PARAMS
    assert ours.num_features == ref.num_features == 1024
    assert ours.reduction == 16
    assert ours.feature_info == ref.feature_info
    # Same Weight Standardization epsilon as the hybrid backbone.
    assert ours.stem.conv.eps == ref.stem.conv.eps == 1e-8


def test_grad_checkpointing_same_grads():
    layers = (1, 2, 1)
    ref = _timm_backbone(layers)
    a = _ours_from(ref, layers).train()
    b = _ours_from(ref, layers).train()
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 80)
    a(x).square().mean().backward()
    b(x).square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-5, msg=name)
