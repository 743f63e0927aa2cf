"""CvT: exact parameter counts of the paper's models, and the model contract for every cvt_* name.

Each name is built at a tiny width (stage widths 8/16/32, depths 1/1/2) with its structural
options kept (token-embedding kernels and strides, input channels, MLP ratio); the image is
non-square with a 3x2 grid in the last stage, so a swapped height/width shows up. BatchNorm
(in the convolutional q/k/v projections) gets random running statistics and outputs are compared
in eval mode.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import vitkit
from vitkit import create_model, list_models
from vitkit.layers import eager_attention
from vitkit.registry import get_model_spec

from contract import check_grad_checkpointing

NAMES = list_models("cvt_*")
B = 2
NUM_CLASSES = 5
DIMS = (8, 16, 32)
DEPTHS = (1, 1, 2)

# name -> parameters with the 1000-class head (transformers' CvtForImageClassification of the paper's configuration)
REFERENCE = {
    "cvt_13": 19_997_480,
    "cvt_13_384": 19_997_480,
    "cvt_21": 31_622_696,
    "cvt_21_384": 31_622_696,
    "cvt_w24": 277_196_392,
    "cvt_w24_384": 277_196_392,
}


def count(name: str, **kw) -> int:
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


def tiny_overrides(name: str) -> dict:
    strides = get_model_spec(name).config.get("patch_strides", (4, 2, 2))
    r = math.prod(strides)
    return dict(embed_dims=DIMS, depths=DEPTHS, num_heads=(1, 2, 2), num_classes=NUM_CLASSES, img_size=(3 * r, 2 * r))


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Random head (it is zero-initialised: a zero head passes every comparison vacuously and sends
    no gradient back), random BatchNorm affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if isinstance(model.head, nn.Linear):
            model.head.weight.copy_(0.5 * torch.randn(model.head.weight.shape, generator=g))
            model.head.bias.copy_(0.1 * torch.randn(model.head.bias.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, **{**tiny_overrides(name), **kw})
    randomise(model, seed)
    return model.eval()


def images(model: nn.Module, batch: int = B, size=None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = size or vitkit.layers.to_2tuple(model.config.img_size)
    return torch.randn(batch, model.config.in_chans, h, w, generator=g)


def grids(model) -> list[tuple[int, int]]:
    h, w = vitkit.layers.to_2tuple(model.config.img_size)
    out = []
    for k, s, p in zip(model.config.patch_sizes, model.config.patch_strides, model.config.patch_padding):
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        out.append((h, w))
    return out


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return (out.float() ** 2).mean()


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_param_counts(name):
    assert count(name) == REFERENCE[name]


@pytest.mark.parametrize("name", ["cvt_micro_28", "cvt_micro_32"])
def test_micro_sizes(name):
    assert 100_000 <= count(name) <= 300_000
    model = create_model(name).eval()
    expected = [(14, 14), (7, 7), (4, 4)] if name.endswith("28") else [(16, 16), (8, 8), (4, 4)]
    assert grids(model) == expected
    with torch.no_grad():
        assert model(images(model)).shape == (B, 10)


def test_paper_configs():
    for name in ("cvt_13", "cvt_21", "cvt_w24", "cvt_13_384"):
        spec = get_model_spec(name)
        assert spec.pretrained_cfg["mean"] == vitkit.registry.IMAGENET_MEAN
        with torch.device("meta"):
            model = create_model(name)
        assert [fi["reduction"] for fi in model.feature_info] == [4, 8, 16]
        assert model.num_prefix_tokens == 1 and model.no_weight_decay() == {"stage2.cls_token"}


# ----------------------------------------------------------------------------- every name
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_attributes(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (B, NUM_CLASSES) and torch.isfinite(out).all()
        # eval mode: BatchNorm uses running statistics, so samples are independent of the batch
        torch.testing.assert_close(model(x[:1]), out[:1], atol=1e-5, rtol=1e-5)
        model.train()
        out_train = model(x)  # BatchNorm on batch statistics
        assert out_train.shape == (B, NUM_CLASSES) and torch.isfinite(out_train).all()
    assert model.embed_dim == model.num_features == DIMS[-1]
    assert model.num_classes == NUM_CLASSES and model.num_prefix_tokens == 1
    assert model.model_name == name and model.get_classifier() is model.head
    assert [len(s.blocks) for s in model.stages] == list(DEPTHS)
    assert [fi["num_chs"] for fi in model.feature_info] == list(DIMS)
    assert grids(model)[-1] == (3, 2)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = build(name)
    # The logits read the [CLS] token, and [CLS] bypasses the convolutional projections: the last
    # block's conv_proj_q reaches no logit. Back-propagate from every token as well.
    feats = model.forward_features(images(model))
    (loss_of(model.forward_head(feats)) + loss_of(feats)).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
        if n.endswith("attn.proj_k.bias"):
            continue  # adds the same vector to every key: softmax-invariant, its gradient is 0 exactly
        assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_fused_attention_equals_eager(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        fused, fused_feat = model(x), model.forward_features(x)
        with eager_attention():
            eager, eager_feat = model(x), model.forward_features(x)
        feat_att, attentions = model.forward_features_with_attention(x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_feat, eager_feat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feat_att, fused_feat, atol=1e-5, rtol=1e-5)
    assert len(attentions) == sum(DEPTHS)
    (h, w), heads = grids(model)[-1], model.config.num_heads[-1]
    kv = ((h + 2 - 3) // 2 + 1) * ((w + 2 - 3) // 2 + 1)  # the squeezed (stride-2) keys, plus [CLS]
    assert attentions[-1].shape == (B, heads, 1 + h * w, 1 + kv)
    torch.testing.assert_close(attentions[-1].sum(-1), torch.ones(B, heads, 1 + h * w))


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_outputs_and_gradients(name, monkeypatch):
    import vitkit.models._base as base_mod  # Backbone._checkpointed runs the blocks

    model = build(name)  # eval: BatchNorm on running statistics, which recomputation would update twice
    check_grad_checkpointing(model, images(model), base_mod, monkeypatch, expected_calls=sum(DEPTHS), loss_fn=loss_of)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model = build(name)
    x = images(model)
    gs = grids(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)  # None: every stage
        torch.testing.assert_close(final, feats)
        assert [tuple(y.shape) for y in inter] == [(B, d, h, w) for d, (h, w) in zip(DIMS, gs)]
        # stage i + 1 applied to the map of stage i gives the map of stage i + 1
        for i in range(2):
            stage = model.stages[i + 1]
            t, hw = stage.embed(inter[i])
            for block in stage.blocks:
                t = block(t, hw)
            torch.testing.assert_close(model._to_map(stage, t, hw), inter[i + 1])

        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], inter[-1])
        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        assert len(picked) == 2 and torch.equal(picked[0], inter[0]) and torch.equal(picked[1], inter[-1])
        for bad in (4, 0, [3], [-4], []):
            with pytest.raises(ValueError, match="stages"):
                model.forward_intermediates(x, indices=bad)
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NHWC")

        # NLC, prefix tokens, norm: the normalised last stage is forward_features
        pairs = model.forward_intermediates(
            x, norm=True, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
        )
        assert [p.shape[1] for _, p in pairs] == [0, 0, 1]
        spatial, prefix = pairs[-1]
        torch.testing.assert_close(torch.cat([prefix, spatial], 1), feats)
        torch.testing.assert_close(pairs[0][0], inter[0].flatten(2).transpose(1, 2))

        ran = []
        hooks = [
            s.register_forward_hook(lambda m, i, o, j=j: ran.append(j))
            for j, s in enumerate(model.stages[k].patch_embed for k in range(3))
        ]
        early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        for h in hooks:
            h.remove()
        assert ran == [0, 1], "stop_early ran stages after the last one requested"
        torch.testing.assert_close(early[0], inter[1])
        assert early_final.shape == (B, gs[1][0] * gs[1][1], DIMS[1])


@pytest.mark.parametrize("name", NAMES)
def test_forward_head_and_reset_classifier(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        h, w = grids(model)[-1]
        assert feats.shape == (B, 1 + h * w, DIMS[-1])
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats[:, 0])  # the LayerNorm-ed [CLS] token

        model.reset_classifier(3)
        assert model.num_classes == model.config.num_classes == 3
        out = model(x)
        assert out.shape == (B, 3) and torch.count_nonzero(out) == 0  # fresh heads are zero-initialised
        model.reset_classifier(0)
        assert isinstance(model.head, nn.Identity)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, global_pool="avg")
        torch.testing.assert_close(model(x), feats[:, 1:].mean(1))


@pytest.mark.parametrize("name", NAMES)
def test_no_weight_decay_and_group_matcher(name):
    model = build(name)
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd == {"stage2.cls_token"} and nwd <= set(params)
    for coarse in (False, True):
        gm = model.group_matcher(coarse=coarse)
        assert set(gm) == {"stem", "blocks"}
        patterns = [gm["stem"]] + [p for p, _ in gm["blocks"]]
        for n in params:
            if not any(re.match(p, n) for p in patterns):
                assert n.startswith("head."), f"{n} matched by no group (coarse={coarse})"


def test_group_matcher_with_timm_grouping():
    pytest.importorskip("timm")
    from timm.models._manipulate import group_with_matcher

    model = build("cvt_13")
    layer_of = group_with_matcher(model.named_parameters(), model.group_matcher(), reverse=True)
    order = [
        "stage0.patch_embed.proj.weight",
        "stage0.blocks.0.norm1.weight",
        "stage1.patch_embed.proj.weight",
        "stage2.blocks.0.norm1.weight",
        "stage2.blocks.1.norm1.weight",
        "head.weight",
    ]
    ids = [layer_of[n] for n in order]
    assert ids[0] == 0 and ids == sorted(ids) and len(set(ids)) == len(ids)
    assert layer_of["stage1.patch_embed.proj.weight"] == layer_of["stage1.blocks.0.norm1.weight"]  # downsampling
    assert layer_of["stage2.cls_token"] == layer_of["stage2.blocks.0.norm1.weight"]
    assert layer_of["norm.weight"] == layer_of["stage2.blocks.1.norm1.weight"]
    coarse = group_with_matcher(model.named_parameters(), model.group_matcher(coarse=True), reverse=True)
    assert coarse["stage0.patch_embed.proj.weight"] == 0 and coarse["stage2.blocks.1.attn.proj.weight"] == 3


# ----------------------------------------------------------------------------- options
def test_any_image_size_runs():
    model = build("cvt_13")  # no position embeddings: the grid follows the input
    with torch.no_grad():
        out = model(images(model, size=(80, 64)))
        final, inter = model.forward_intermediates(images(model, size=(80, 64)))
    assert out.shape == (B, NUM_CLASSES) and inter[-1].shape == (B, DIMS[-1], 5, 4)


def test_no_class_token_avg_pool(tmp_path):
    model = build("cvt_13", cls_token=(False, False, False), global_pool="avg")
    assert model.num_prefix_tokens == 0 and model.no_weight_decay() == set()
    x = images(model)
    out = model(x)
    loss_of(out).backward()
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats.mean(1))
    with pytest.raises(ValueError, match="global_pool='token' needs"):
        create_model("cvt_13", cls_token=(False, False, False))


def test_final_norm_off_and_per_stage_scalars():
    model = build("cvt_micro_32", final_norm=False, qkv_bias=False, drop_path_rate=0.1)
    assert isinstance(model.norm, nn.Identity)
    assert model.config.qkv_bias == (False,) * 3 and model.config.drop_path_rate == (0.1,) * 3
    assert model.stage0.blocks[0].attn.proj_q.bias is None
    assert model.stage2.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)  # linear per stage, as microsoft/CvT


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(depths=(1, 2)), "3 values for 2 stages|has 3 entries but depths has 2"),
        (dict(cls_token=(True, False, True)), "only the last stage"),
        (dict(stride_q=(2, 1, 1)), "query projection"),
        (dict(num_heads=(3, 3, 6)), "not divisible"),
        (dict(global_pool="max"), "global_pool"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_model("cvt_13", **kw)


def test_wrong_channels_error():
    model = build("cvt_micro_28")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 24, 16))


def test_state_dict_file_and_head_refit(tmp_path, caplog):
    """An official-keyed state dict (ours) loads with an identity map; another number of classes
    leaves the fresh zero head and says so."""
    from safetensors.torch import save_file

    model = build("cvt_micro_32")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    x = images(model)
    loaded = create_model(
        "cvt_micro_32", pretrained=tmp_path / "w.safetensors", **tiny_overrides("cvt_micro_32")
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    with caplog.at_level("WARNING", logger="vitkit"):
        other = create_model(
            "cvt_micro_32", pretrained=tmp_path / "w.safetensors", **dict(tiny_overrides("cvt_micro_32"), num_classes=7)
        )
    assert "re-initialised" in caplog.text and torch.count_nonzero(other.head.weight) == 0
    torch.testing.assert_close(other.stage2.cls_token, model.stage2.cls_token)
