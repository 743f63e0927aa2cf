"""The public backbone interface (`vitkit.models.Backbone`) holds for every classifier family: the
sizes it reports match what the forward passes produce, the shared classifier, weight-decay and
`forward_intermediates` rules behave the same everywhere, and a family without intermediates says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitkit import create_model
from vitkit.models import FAMILIES, Backbone

NAMES = [
    "vit_micro_patch4_28",
    "deit_micro_distilled_patch4_28",
    "mixer_micro_patch4_28",
    "swin_micro_patch2_window7_28",
    "cvt_micro_28",
    "resnet_micro_28",
    "mvit_micro_28",
    "vivit_micro_4x2_28",
    "vivit_micro_fe_4x2_28",
    "timesformer_micro_patch4_28",
    "timesformer_micro_space_patch4_28",
    "dvt_micro_28",
]
WITH_INTERMEDIATES = [n for n in NAMES if not n.startswith("dvt")]


def build(name: str) -> Backbone:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():  # non-zero heads, so the logits depend on the features
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def inputs(model: Backbone) -> torch.Tensor:
    size = model.pretrained_cfg["input_size"]
    frames = getattr(model.config, "num_frames", None)
    shape = (2, size[0], frames, *size[1:]) if frames else (2, *size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def test_every_classifier_family_is_a_backbone():
    assert {f for f, cls in FAMILIES.items() if not issubclass(cls, Backbone)} == {"mae"}
    assert {create_model(n).family for n in NAMES} == set(FAMILIES) - {"mae"}


@pytest.mark.parametrize("name", NAMES)
def test_reported_sizes_match_the_forward_passes(name):
    model = build(name)
    x = inputs(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        torch.testing.assert_close(logits, model(x), atol=0, rtol=0)
    assert pooled.shape == (2, model.head_hidden_size) and logits.shape == (2, 7)
    assert feats.shape[1 if model.family == "cnn" else -1] == model.num_features
    assert isinstance(model.num_prefix_tokens, int) and model.num_prefix_tokens >= 0
    if model.patch_size is None:
        assert model.grid_size is None and model.family in ("cvt", "cnn", "dvt")
    else:  # the patch grid covers the configured image
        hw = model.pretrained_cfg["input_size"][-2:]
        assert tuple(g * p for g, p in zip(model.grid_size, model.patch_size)) == tuple(hw)
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= params.keys()


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name):
    model = build(name).double().train()
    model.reset_classifier(5)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (model.head_hidden_size, 5)
    assert head.weight.dtype == torch.float64 and head.training
    assert model.config.num_classes == model.num_classes == 5
    x = inputs(model).double()
    model.eval()
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert model(x).shape == (2, model.head_hidden_size)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, global_pool="max")


@pytest.mark.parametrize("name", WITH_INTERMEDIATES)
def test_forward_intermediates_shared_rules(name):
    model = build(name)
    x = inputs(model)
    levels = len(model.feature_info) if model.hierarchical_features or model.family == "mvit" else len(model.blocks)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        explicit = model.forward_intermediates(x, output_fmt=model.intermediate_fmts[0], intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == levels
        for a, b in zip(inter, explicit):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True, intermediates_only=True)
        ((spatial, prefix),) = pairs
        torch.testing.assert_close(spatial, inter[-1], atol=0, rtol=0)
        per_clip = model.patch_embed.grid_size[0] if getattr(model, "attention_type", "") == "factorised_encoder" else 1
        expected = 0 if model.family in ("swin", "cnn") else model.num_prefix_tokens * per_clip
        assert prefix.shape[:2] == (2, expected)
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
        torch.testing.assert_close(first[0], inter[0], atol=0, rtol=0)
        assert early.shape != final.shape or model.family in ("vit", "mixer", "timesformer", "vivit")
    with pytest.raises(ValueError, match="output_fmt must be"):
        model.forward_intermediates(x, output_fmt="NDHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[levels])
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing


def test_a_model_without_intermediates_says_so():
    model = build("dvt_micro_28")
    with pytest.raises(NotImplementedError, match="DynamicVisionTransformer does not support forward_intermediates"):
        model.forward_intermediates(inputs(model))
    for name in ("dvt_micro_28", "vivit_micro_4x2_28", "mvit_micro_28"):
        with pytest.raises(NotImplementedError, match="does not support prune_intermediate_layers"):
            build(name).prune_intermediate_layers(1)
