"""Outputs identical to timm after weight import (eval mode, fp32, max |diff| <= 1e-4).

Reference models are timm's, randomly initialised from configs (no downloads), with every
parameter -- LayerNorm and LayerScale included -- re-drawn at random so a swapped or skipped
weight cannot hide behind an identity initialisation. Weights travel through a real file
(safetensors or .pth) and `create_model(pretrained=...)`, the path users take.
"""

import pytest
import torch

import vitkit

from contract import save_state

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

ATOL = RTOL = 1e-4


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.ndim == 1 and p.shape == model.embed_dim else 0)
            )
    return model.eval()


def vitkit_from_timm(timm_model, tmp_path, fmt="safetensors", name="vit_tiny_patch16_224", **cfg):
    path = save_state(timm_model.state_dict(), tmp_path / f"w.{fmt}", fmt)
    return vitkit.create_model(name, pretrained=path, **cfg).eval()


# (timm kwargs, vitkit overrides) for the same architecture
TINY = dict(embed_dim=64, depth=2, num_heads=4, num_classes=10)
CASES = {
    "p8_32": dict(img_size=32, patch_size=8),
    "p4_32": dict(img_size=32, patch_size=4),
    "p16_64": dict(img_size=64, patch_size=16),
    "nonsquare": dict(img_size=(32, 48), patch_size=8),
    "gray": dict(img_size=32, patch_size=8, in_chans=1),
    "avgpool": dict(img_size=32, patch_size=8, global_pool="avg"),
    "no_cls_avg": dict(img_size=32, patch_size=8, class_token=False, global_pool="avg"),
    "layerscale": dict(img_size=32, patch_size=8, init_values=1e-2),
    "no_qkv_bias": dict(img_size=32, patch_size=8, qkv_bias=False),
    "mlp_ratio2": dict(img_size=32, patch_size=8, mlp_ratio=2.0),
    "features_only": dict(img_size=32, patch_size=8, num_classes=0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_vit_parity(case, fmt, tmp_path):
    kw = dict(TINY, **CASES[case])
    ref = randomise(TimmViT(**kw))
    ours = vitkit_from_timm(ref, tmp_path, fmt, **kw)
    x = torch.randn(2, kw.get("in_chans", 3), *vitkit.layers.to_2tuple(kw["img_size"]))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=ATOL, rtol=RTOL)


def test_forward_intermediates_parity(tmp_path):
    kw = dict(TINY, depth=3, img_size=32, patch_size=8)
    ref = randomise(TimmViT(**kw))
    ours = vitkit_from_timm(ref, tmp_path, **kw)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for kwargs in (dict(indices=2), dict(indices=[0, -1], norm=True), dict(indices=None, output_fmt="NLC")):
            final_ref, inter_ref = ref.forward_intermediates(x, **kwargs)
            final, inter = ours.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, final_ref, atol=ATOL, rtol=RTOL)
            assert len(inter) == len(inter_ref)
            for a, b in zip(inter, inter_ref):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch32_224", "deit_tiny_distilled_patch16_224"])
def test_named_model_parity(name, tmp_path):
    """Full-size named models: timm's and vitkit's of the same name take the same weights."""
    ref = randomise(timm.create_model(name, pretrained=False))
    ours = vitkit_from_timm(ref, tmp_path, name=name)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_deit_distilled_parity(tmp_path):
    from timm.models.deit import VisionTransformerDistilled

    kw = dict(TINY, img_size=32, patch_size=8)
    ref = randomise(VisionTransformerDistilled(**kw))
    ours = vitkit_from_timm(ref, tmp_path, name="deit_tiny_distilled_patch16_224", **kw)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)  # eval: mean of both heads
    # training mode: one tensor (the mean) by default, both heads with distilled training, as timm
    ref.train(), ours.train()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
    ref.set_distilled_training(True)
    ours.set_distilled_training(True)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def _timm_hybrid(img_size, layers=(1, 1, 1), **kw):
    from timm.models.vision_transformer_hybrid import HybridEmbed, _resnetv2

    backbone = _resnetv2(layers=layers, in_chans=3)
    return TimmViT(
        img_size=img_size, patch_size=1, embed_layer=lambda **a: HybridEmbed(backbone=backbone, **a), **dict(TINY, **kw)
    )


@pytest.mark.parametrize("img_size", [64, 96])
def test_hybrid_parity(img_size, tmp_path):
    ref = randomise(_timm_hybrid(img_size))
    ours = vitkit_from_timm(
        ref, tmp_path, name="vit_base_r50_s16_224", img_size=img_size, hybrid_layers=(1, 1, 1), **TINY
    )
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_load_at_another_resolution_matches_timm(tmp_path):
    """A 32px checkpoint loaded into a 48px model: vitkit resamples the position embeddings as
    timm's checkpoint filter does (bicubic, antialias), so the two 48px models agree."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    kw = dict(TINY, patch_size=8)
    src = randomise(TimmViT(img_size=32, **kw))
    state = src.state_dict()
    ref = TimmViT(img_size=48, **kw).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(state), ref))
    path = save_state(state, tmp_path / "w.safetensors", "safetensors")
    ours = vitkit.create_model("vit_tiny_patch16_224", pretrained=path, img_size=48, **kw).eval()
    assert ours.pos_embed.shape == (1, 1 + 36, 64)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_dynamic_img_size_matches_timm(tmp_path):
    kw = dict(TINY, img_size=32, patch_size=8, dynamic_img_size=True)
    ref = randomise(TimmViT(**kw))
    ours = vitkit_from_timm(ref, tmp_path, **kw)
    with torch.no_grad():
        for hw in [(32, 32), (48, 64), (16, 40)]:
            x = torch.randn(2, 3, *hw)
            torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("extra", [dict(), dict(class_token=False, global_pool="avg"), dict(distilled=True)])
def test_patch_dropout_matches_timm(extra, tmp_path):
    """patch_drop_rate (timm's PatchDropout): the same kept patches from the same seed in training, and
    every patch in eval; the loss's gradient reaches the model."""
    if extra.get("distilled"):
        from timm.models.deit import VisionTransformerDistilled

        kw = dict(TINY, img_size=32, patch_size=4, patch_drop_rate=0.3)
        ref = randomise(VisionTransformerDistilled(**kw))
        ours = vitkit_from_timm(ref, tmp_path, name="deit_tiny_distilled_patch16_224", **kw)
        # timm 1.0 builds the PatchDropout before DeiT sets num_prefix_tokens = 2, so it may drop the
        # distillation token as if it were a patch; vitkit always keeps both. Compare with that fixed.
        assert ref.patch_drop.num_prefix_tokens == 1
        ref.patch_drop.num_prefix_tokens = 2
    else:
        kw = dict(TINY, img_size=32, patch_size=4, patch_drop_rate=0.3, **extra)
        ref = randomise(TimmViT(**kw))
        ours = vitkit_from_timm(ref, tmp_path, **kw)
    x = torch.randn(3, 3, 32, 32)
    ref.train()
    ours.train()
    torch.manual_seed(7)
    expected = ref.forward_features(x)
    torch.manual_seed(7)
    got = ours.forward_features(x)
    prefix = ours.num_prefix_tokens
    assert got.shape == (3, prefix + int(64 * 0.7), 64)  # 64 patches, 44 kept per image
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    torch.manual_seed(8)
    out = ours(x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    assert ours.patch_embed.proj.weight.grad.abs().sum() > 0
    ours.eval()
    ref.eval()
    with torch.no_grad():
        assert ours.forward_features(x).shape[1] == prefix + 64
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_patch_dropout_spares_forward_tokens_and_checks_its_rate():
    model = vitkit.create_model("vit_micro_patch4_28", patch_drop_rate=0.5).train()
    tokens = model.patch_embed(torch.randn(2, 1, 28, 28))
    assert model.forward_tokens(tokens).shape[1] == 1 + 49  # per-patch callers (masked patch prediction) keep all
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape[1] == 1 + 24
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="patch_drop_rate"):
            vitkit.create_model("vit_micro_patch4_28", patch_drop_rate=bad)


def saved_for_backward(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, list]:
    """Bytes of the distinct storages autograd keeps for the backward pass of a training forward,
    and their (shape, dtype) list: the activation memory of a training step, exactly."""
    storages, shapes = {}, []

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in storages:
            storages[key] = t.untyped_storage().nbytes()
            shapes.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.nn.functional.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long))
    return sum(storages.values()), sorted(shapes, key=str)


@pytest.mark.parametrize("path", ["fused", "eager"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_keeps_exactly_timms_activations(checkpointing, path):
    """Activation memory of a training step equals timm's, tensor for tensor (the memory claim of
    docs/benchmarks.md#training-memory, without the allocator noise of a peak-RSS measurement): same tensors
    saved for the backward pass, on each attention path. The path is pinned on both sides: vitkit's "auto"
    policy runs short fp32 sequences eagerly on CPUs without AMX (faster there), which keeps the (N, N) attention weights that
    SDPA does not, so the comparison is made path against path."""
    kw = dict(TINY, img_size=32, patch_size=8)
    torch.manual_seed(0)
    ref = TimmViT(**kw).train()
    ours = vitkit.create_model("vit_tiny_patch16_224", **kw).train()
    for m in (ref, ours):
        m.set_grad_checkpointing(checkpointing)
    for block in ref.blocks:
        block.attn.fused_attn = path == "fused"
    x = torch.randn(4, 3, 32, 32)
    with vitkit.layers.attention_policy(path):
        assert saved_for_backward(ours, x) == saved_for_backward(ref, x)
