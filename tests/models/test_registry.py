"""Every registered model name, built at a tiny size, honours the model contract.

The size fields (width, depth, heads, classes, image size) are overridden so the whole table runs
on a CPU in seconds; the structural options of each name (patch size, distillation token, hybrid
stem, input channels, MLP ratio) are kept. The image size is non-square (3x2 patches) so that a
swapped height/width anywhere shows up.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import vitkit
from vitkit import create_model, from_pretrained, list_models
from vitkit.layers import eager_attention, resample_abs_pos_embed
from vitkit.models.vit import ViTConfig
from vitkit.registry import get_model_spec

from contract import check_grad_checkpointing

NAMES = [n for n in list_models() if get_model_spec(n).family == "vit"]
B = 2
NUM_CLASSES = 5
EMBED_DIM = 32
DEPTH = 2
# params that a timm-style group_matcher may leave unmatched: they go to the last ("head") group
HEAD_PREFIXES = ("head.", "head_dist.", "fc_norm.", "pre_logits.")


def tiny_overrides(name: str) -> dict:
    cfg = get_model_spec(name).config
    kw = dict(embed_dim=EMBED_DIM, depth=DEPTH, num_heads=2, num_classes=NUM_CLASSES)
    if cfg.get("hybrid_layers"):
        kw.update(hybrid_layers=(1, 1, 1), img_size=(48, 32))  # ResNet stride 16 -> 3x2 grid
    else:
        p = cfg.get("patch_size", ViTConfig.patch_size)
        kw.update(img_size=(3 * p, 2 * p))
    return kw


def randomise_heads(model: nn.Module) -> None:
    # The classifier heads are zero-initialised by design (ViT paper / big_vision `head_zeroinit`).
    # A zero head outputs zeros and back-propagates zero gradient into the body, so output
    # comparisons and gradient checks would pass vacuously: give the head(s) random weights.
    with torch.no_grad():
        for head in (model.head, getattr(model, "head_dist", None)):
            if isinstance(head, nn.Linear):
                nn.init.normal_(head.weight, std=0.5)
                nn.init.normal_(head.bias, std=0.1)


def build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, **{**tiny_overrides(name), **kw})
    randomise_heads(model)
    return model.eval()


def images(model: nn.Module, batch: int = B, size=None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = size or vitkit.layers.to_2tuple(model.config.img_size)
    return torch.randn(batch, model.config.in_chans, h, w, generator=g)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def loss_of(out) -> torch.Tensor:
    return sum((o.float() ** 2).mean() for o in as_tuple(out))


def grid_of(model) -> tuple[int, int]:
    return model.patch_embed.grid_size


def block_outputs(model, x) -> list[torch.Tensor]:
    """The raw (B, P + N, D) output of every block, captured with forward hooks."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


# ----------------------------------------------------------------------------- every name
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_train_and_eval(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (B, NUM_CLASSES)
        assert torch.isfinite(out).all()
        model.train()
        out_train = model(x)
        if model.config.distilled:  # timm: one tensor (the mean) unless set_distilled_training(True)
            assert isinstance(out_train, torch.Tensor)
            torch.testing.assert_close(out_train, out)
            model.set_distilled_training(True)
            out_train = model(x)
    if model.config.distilled:
        # DeiT with distilled training on: (class logits, distillation logits) in training, one tensor in eval
        assert isinstance(out_train, tuple) and len(out_train) == 2
        assert all(o.shape == (B, NUM_CLASSES) and torch.isfinite(o).all() for o in out_train)
        torch.testing.assert_close((out_train[0] + out_train[1]) / 2, out)
    else:
        assert isinstance(out_train, torch.Tensor)
        torch.testing.assert_close(out_train, out)  # no dropout configured: train == eval


@pytest.mark.parametrize("name", NAMES)
def test_attributes(name):
    model = build(name)
    cfg = model.config
    assert model.embed_dim == EMBED_DIM
    assert model.num_features == EMBED_DIM
    assert model.num_classes == NUM_CLASSES
    assert model.num_prefix_tokens == int(cfg.class_token) + int(cfg.distilled)
    assert model.num_prefix_tokens == (2 if "distilled" in name else 1)
    assert model.model_name == name
    gh, gw = grid_of(model)
    assert (gh, gw) == (3, 2)
    assert model.pos_embed.shape == (1, model.num_prefix_tokens + gh * gw, EMBED_DIM)
    assert len(model.blocks) == DEPTH
    assert model.get_classifier() is model.head


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = build(name)
    loss_of(model(images(model))).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_fused_attention_equals_eager(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        fused, fused_feat = model(x), model.forward_features(x)
        with eager_attention():
            eager, eager_feat = model(x), model.forward_features(x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_feat, eager_feat, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_outputs_and_gradients(name, monkeypatch):
    import vitkit.models._base as base_mod  # Backbone._checkpointed runs the blocks

    model = build(name).train()
    check_grad_checkpointing(model, images(model), base_mod, monkeypatch, expected_calls=DEPTH, loss_fn=loss_of)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_indices(name):
    model = build(name)
    x = images(model)
    ref = block_outputs(model, x)
    P, (h, w) = model.num_prefix_tokens, grid_of(model)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)  # None: every block
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == DEPTH
        for y, r in zip(inter, ref):
            assert y.shape == (B, EMBED_DIM, h, w)  # NCHW
            torch.testing.assert_close(y, r[:, P:].reshape(B, h, w, -1).permute(0, 3, 1, 2))

        last = model.forward_intermediates(x, indices=1, intermediates_only=True)  # int n: last n
        assert isinstance(last, list) and len(last) == 1
        torch.testing.assert_close(last[0], inter[-1])
        both = model.forward_intermediates(x, indices=DEPTH, intermediates_only=True)
        assert len(both) == DEPTH and all(torch.equal(a, b) for a, b in zip(both, inter))

        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)  # sorted
        assert len(picked) == 2
        torch.testing.assert_close(picked[0], inter[0])
        torch.testing.assert_close(picked[1], inter[-1])
        neg = model.forward_intermediates(x, indices=(-1,), intermediates_only=True)
        torch.testing.assert_close(neg[0], inter[-1])

        for bad in (DEPTH + 1, 0, [DEPTH], [-DEPTH - 1], []):
            with pytest.raises(ValueError, match="blocks"):
                model.forward_intermediates(x, indices=bad)
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_formats(name):
    model = build(name)
    x = images(model)
    ref = block_outputs(model, x)
    P, (h, w) = model.num_prefix_tokens, grid_of(model)
    N = h * w
    with torch.no_grad():
        nlc = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        for y, r in zip(nlc, ref):
            assert y.shape == (B, N, EMBED_DIM)
            torch.testing.assert_close(y, r[:, P:])

        pairs = model.forward_intermediates(x, return_prefix_tokens=True, intermediates_only=True)
        for pair, r in zip(pairs, ref):
            assert isinstance(pair, tuple) and len(pair) == 2
            spatial, prefix = pair
            assert spatial.shape == (B, EMBED_DIM, h, w)
            assert prefix.shape == (B, P, EMBED_DIM)
            torch.testing.assert_close(prefix, r[:, :P])
        pairs_nlc = model.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
        assert pairs_nlc[0][0].shape == (B, N, EMBED_DIM) and pairs_nlc[0][1].shape == (B, P, EMBED_DIM)

        normed = model.forward_intermediates(x, norm=True, output_fmt="NLC", intermediates_only=True)
        for y, r in zip(normed, ref):
            torch.testing.assert_close(y, model.norm(r)[:, P:])
        # norm=True on the last block == the spatial tokens of forward_features
        torch.testing.assert_close(normed[-1], model.forward_features(x)[:, P:])


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_stop_early(name):
    model = build(name)
    x = images(model)
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, j=j: ran.append(j)) for j, b in enumerate(model.blocks)]
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        assert ran == list(range(DEPTH))
        ran.clear()
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert ran == [0], "stop_early ran blocks after the last one requested"
    for h in hooks:
        h.remove()
    torch.testing.assert_close(early[0], full[0])


@pytest.mark.parametrize("name", NAMES)
def test_forward_head_and_reset_classifier(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (B, model.num_prefix_tokens + 6, EMBED_DIM)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (B, model.num_features)

        model.reset_classifier(3)
        assert model.num_classes == model.config.num_classes == 3
        out = model(x)
        assert out.shape == (B, 3)
        assert torch.count_nonzero(out) == 0  # fresh heads are zero-initialised
        model.train()
        if model.config.distilled:
            model.set_distilled_training(True)
        out_train = model(x)
        if model.config.distilled:
            assert isinstance(out_train, tuple) and all(o.shape == (B, 3) for o in out_train)
        model.eval()

        model.reset_classifier(0)
        assert isinstance(model.head, nn.Identity)
        out = model(x)
        assert out.shape == (B, model.num_features)
        torch.testing.assert_close(out, pre)  # no head: the model outputs the pooled features


@pytest.mark.parametrize("name", NAMES)
def test_no_weight_decay_and_group_matcher(name):
    model = build(name)
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd and set(nwd) <= set(params), f"no_weight_decay names {set(nwd) - set(params)} are not parameters"
    assert "pos_embed" in nwd and "cls_token" in nwd
    assert ("dist_token" in nwd) == model.config.distilled

    for coarse in (False, True):
        gm = model.group_matcher(coarse=coarse)
        assert set(gm) == {"stem", "blocks"}
        patterns = [gm["stem"]]
        blocks = gm["blocks"]
        patterns += [p for p, _ in blocks] if isinstance(blocks, list) else [blocks]
        for n in params:
            matched = [p for p in patterns if re.match(p, n)]
            if not matched:
                # timm semantics: unmatched params go to a last group with the head; the coarse
                # matcher (like timm's Swin/ConvNeXt ones) leaves the final norm there too
                allowed = HEAD_PREFIXES + (("norm.",) if coarse else ())
                assert n.startswith(allowed), f"{n} matched by no group (coarse={coarse})"
            if n.startswith("blocks."):
                m = re.match(r"^blocks\.(\d+)", n)
                assert any(re.match(p, n) and re.match(p, n).groups() == (m.group(1),) for p in patterns[1:])
            elif n.startswith(("patch_embed.", "pos_embed", "cls_token", "dist_token")):
                assert re.match(gm["stem"], n), n
            if n.startswith("norm.") and not coarse:
                assert matched, n


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_base_r50_s16_224"])
def test_group_matcher_with_timm_grouping(name):
    pytest.importorskip("timm")
    from timm.models._manipulate import group_with_matcher

    model = build(name)
    layer_of = group_with_matcher(model.named_parameters(), model.group_matcher(), reverse=True)
    assert layer_of["pos_embed"] == layer_of["cls_token"] == layer_of["patch_embed.proj.weight"] == 0
    ids = [layer_of[f"blocks.{i}.norm1.weight"] for i in range(DEPTH)]
    assert ids == list(range(1, DEPTH + 1))
    assert layer_of["norm.weight"] == DEPTH  # (99999,) = timm's MATCH_PREV_GROUP: with the last block
    assert layer_of["head.weight"] == DEPTH + 1  # unmatched: the last group
    if "distilled" in name:
        assert layer_of["dist_token"] == 0 and layer_of["head_dist.weight"] == DEPTH + 1


# ----------------------------------------------------------------------------- options
BASE = "vit_tiny_patch16_224"
DISTILLED = "deit_tiny_distilled_patch16_224"
HYBRID = "vit_base_r50_s16_224"


def test_global_pool_avg_uses_fc_norm():
    model = build(BASE, global_pool="avg")
    assert isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.LayerNorm)
    x = images(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, model.fc_norm(feats[:, 1:].mean(1)))
        assert model(x).shape == (B, NUM_CLASSES)
    assert not any(n.startswith("norm.") for n, _ in model.named_parameters())
    token = build(BASE)
    assert isinstance(token.norm, nn.LayerNorm) and isinstance(token.fc_norm, nn.Identity)
    with torch.no_grad():
        f = token.forward_features(x)
        torch.testing.assert_close(token.forward_head(f, pre_logits=True), f[:, 0])


def test_no_class_token_with_avg_pool(tmp_path):
    model = build(BASE, class_token=False, global_pool="avg")
    assert model.cls_token is None and model.num_prefix_tokens == 0
    assert model.pos_embed.shape == (1, 6, EMBED_DIM)
    assert model.no_weight_decay() == {"pos_embed"}
    x = images(model)
    out = model(x)
    assert out.shape == (B, NUM_CLASSES)
    loss_of(out).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        ((spatial, prefix),) = model.forward_intermediates(
            x, indices=1, return_prefix_tokens=True, intermediates_only=True
        )
    assert spatial.shape == (B, EMBED_DIM, 3, 2) and prefix.shape == (B, 0, EMBED_DIM)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path)(x), model(x))
    with pytest.raises(ValueError, match="class token"):
        build(BASE, class_token=False)  # global_pool='token' needs it
    with pytest.raises(ValueError, match="class token"):
        build(DISTILLED, class_token=False, global_pool="avg")


@pytest.mark.parametrize("name", [BASE, DISTILLED])
def test_representation_size(name, tmp_path):
    model = build(name, representation_size=16)
    assert isinstance(model.pre_logits.fc, nn.Linear) and model.pre_logits.fc.out_features == 16
    # timm's names: num_features = the tokens' width, head_hidden_size = the pre-logits width
    assert model.num_features == EMBED_DIM and model.head_hidden_size == 16 and model.head.in_features == 16
    assert "pre_logits.fc.weight" in model.state_dict()  # timm's old key
    x = images(model)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (B, 16) and pre.abs().max() <= 1  # tanh
        assert model(x).shape == (B, NUM_CLASSES)
        model.reset_classifier(0)
        assert model(x).shape == (B, 16)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path)(x), model(x))


def test_init_values_layerscale():
    model = build(BASE, init_values=1e-3)
    sd = model.state_dict()
    for i in range(DEPTH):
        for ls in ("ls1", "ls2"):
            gamma = sd[f"blocks.{i}.{ls}.gamma"]  # timm key
            assert gamma.shape == (EMBED_DIM,) and torch.all(gamma == 1e-3)
    plain = build(BASE)
    assert not any(".ls1." in k for k in plain.state_dict())
    # with tiny LayerScale the blocks are close to the identity: the last block changes little
    x = images(model)
    r = block_outputs(model, x)
    r_plain = block_outputs(plain, x)
    assert (r[1] - r[0]).abs().max() < (r_plain[1] - r_plain[0]).abs().max()
    loss_of(model(x)).backward()
    assert model.blocks[0].ls1.gamma.grad.abs().sum() > 0


def test_drop_path_train_random_eval_deterministic():
    model = build(BASE, drop_path_rate=0.5, depth=4)
    x = images(model, batch=8)
    with torch.no_grad():
        ev1, ev2 = model(x), model(x)
        torch.testing.assert_close(ev1, ev2, atol=0, rtol=0)
        reference = build(BASE, depth=4)  # same seed: same weights, no drop path
        reference.load_state_dict(model.state_dict())
        torch.testing.assert_close(ev1, reference(x), atol=0, rtol=0)
        model.train()
        torch.manual_seed(0)
        tr1 = model(x)
        tr2 = model(x)
    assert not torch.allclose(tr1, ev1)
    assert not torch.allclose(tr1, tr2)
    assert model.blocks[0].drop_path1.__class__ is nn.Identity  # linear rule: 0 for the first block
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)


@pytest.mark.parametrize("name", [BASE, DISTILLED, HYBRID])
@pytest.mark.parametrize("scale", [(1, 1), (2, 2), (2, 3), (1, 2)])
def test_dynamic_img_size(name, scale):
    model = build(name, dynamic_img_size=True)
    static = build(name)
    static.load_state_dict(model.state_dict())
    stride = model.patch_embed.patch_size[0]
    gh, gw = grid_of(model)
    size = (gh * scale[0] * stride, gw * scale[1] * stride)
    x = images(model, size=size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (B, NUM_CLASSES) and torch.isfinite(out).all()
        if scale == (1, 1):
            torch.testing.assert_close(out, static(x), atol=0, rtol=0)
        else:
            # == a static model built at that size with the position embeddings resampled the same way
            at_size = build(name, img_size=size)
            sd = dict(model.state_dict())
            new_grid = grid_of(at_size)
            sd["pos_embed"] = resample_abs_pos_embed(
                sd["pos_embed"], new_grid, old_size=(gh, gw), num_prefix_tokens=model.num_prefix_tokens
            )
            at_size.load_state_dict(sd)
            torch.testing.assert_close(out, at_size(x), atol=1e-5, rtol=1e-5)
        inter = model.forward_intermediates(x, indices=1, intermediates_only=True)[0]
        assert inter.shape == (B, EMBED_DIM, size[0] // stride, size[1] // stride)
    with pytest.raises(ValueError, match="does not match"):
        static(images(model, size=(size[0] + stride, size[1])))


def test_non_square_img_size():
    model = build(BASE, img_size=(32, 48))
    assert grid_of(model) == (2, 3)
    assert model.pos_embed.shape == (1, 1 + 6, EMBED_DIM)
    x = images(model)
    assert x.shape[-2:] == (32, 48)
    with torch.no_grad():
        assert model(x).shape == (B, NUM_CLASSES)
        inter = model.forward_intermediates(x, indices=1, intermediates_only=True)[0]
    assert inter.shape == (B, EMBED_DIM, 2, 3)
    with pytest.raises(ValueError, match="does not match"):
        model(torch.randn(B, 3, 48, 32))


@pytest.mark.parametrize("name", [BASE, HYBRID])
def test_in_chans_1(name):
    model = build(name, in_chans=1)
    x = images(model)
    assert x.shape[1] == 1
    with torch.no_grad():
        assert model(x).shape == (B, NUM_CLASSES)
    first_conv = next(m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.shape[1] == 1
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(B, 3, *x.shape[-2:]))


def test_weight_init_jax_is_the_papers_flax_init():
    """weight_init='jax' (timm's name): Xavier-uniform linears, zero biases but MLP biases normal(1e-6), a LeCun-normal
    patch embedding, zero heads; the default stays timm's trunc-normal(0.02)."""
    import math

    torch.manual_seed(0)
    jax = vitkit.create_model("vit_small_patch16_224", weight_init="jax", num_classes=10)
    timm_like = vitkit.create_model("vit_small_patch16_224", num_classes=10)
    qkv = jax.blocks[0].attn.qkv.weight
    bound = math.sqrt(6.0 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    # torch's trunc_normal_ cuts at +-2 in absolute units, so with std 0.02 nothing is cut (as in timm)
    assert timm_like.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    fc1_bias = jax.blocks[0].mlp.fc1.bias
    assert 0 < fc1_bias.abs().max() < 1e-4 and not jax.blocks[0].attn.qkv.bias.any()
    w = jax.patch_embed.proj.weight
    fan_in = w[0].numel()
    assert w.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.02)
    assert w.abs().max().item() <= 2 / math.sqrt(fan_in) / 0.87962566103423978 + 1e-6
    assert not jax.head.weight.any() and not jax.head.bias.any()
    assert vitkit.create_model("vit_micro_patch4_28", weight_init=None).config.weight_init == ""  # YAML null
    with pytest.raises(ValueError, match="weight_init must be"):
        vitkit.create_model("vit_micro_patch4_28", weight_init="xavier")
