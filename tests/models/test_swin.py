"""Swin Transformer: exact parameter counts, parity with timm after weight import (random
reference models, every parameter re-drawn, weights through a real file and `create_model`), the
official checkpoint layout, bias-table resampling, and the model contract for every swin_* name."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

import vitkit
from vitkit import create_model, from_pretrained, list_models
from vitkit.layers import eager_attention, to_2tuple
from vitkit.models.swin import SwinConfig, resize_rel_pos_bias_table
from vitkit.registry import get_model_spec

from contract import check_grad_checkpointing, check_save_roundtrip, save_state

ATOL = RTOL = 1e-4

# name -> parameters with the 1000-class head (timm 1.0.31's model of that name)
REFERENCE = {
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
    "swin_base_patch4_window12_384": 87_903_584,
    "swin_large_patch4_window7_224": 196_532_476,  # Swin-L: checked against timm below
    "swin_large_patch4_window12_384": 196_735_516,
}


def count(name: str, **kw) -> int:
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_param_counts(name):
    assert count(name) == REFERENCE[name]


@pytest.mark.parametrize("name", ["swin_large_patch4_window7_224", "swin_large_patch4_window12_384"])
def test_large_count_is_timms(name):
    """The Swin-L counts come from no paper table: timm's model of the same name, built on the meta
    device (no weights, no memory), must have exactly as many parameters as vitkit's."""
    timm = _timm()
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False)
    assert sum(p.numel() for p in ref.parameters()) == count(name) == REFERENCE[name]


def test_micro_models_are_small():
    assert 50_000 < count("swin_micro_patch2_window7_28") < 500_000
    assert 50_000 < count("swin_micro_patch2_window4_32") < 500_000


# ----------------------------------------------------------------------------- timm parity
def _timm():
    return pytest.importorskip("timm")


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter re-drawn; LayerNorm weights around 1 so the signal keeps its scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            centre = 1.0 if (p.ndim == 1 and "norm" in n and n.endswith("weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "relative_position" in n else 0.05) + centre)
    return model.eval()


TINY = dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=10)
CASES = {
    "p2_w4_32": dict(img_size=32, patch_size=2, window_size=4),
    # 14 -> 7 -> 4: window clamped to the map (and no shift) in the last two stages, odd merge padded
    "p4_w7_56_3stages": dict(img_size=56, patch_size=4, window_size=7, depths=(2, 2, 2), num_heads=(2, 4, 4)),
    # 8x16 -> 4x8: the second stage shifts along the width only (timm's per-dimension rule)
    "nonsquare": dict(img_size=(32, 64), patch_size=4, window_size=4),
    "gray": dict(img_size=32, patch_size=4, window_size=4, in_chans=1),
    "no_qkv_bias_mlp2": dict(img_size=32, patch_size=4, window_size=4, qkv_bias=False, mlp_ratio=2.0),
    "features_only": dict(img_size=32, patch_size=4, window_size=4, num_classes=0),
}


def timm_swin(**kw):
    _timm()
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    return randomise(TimmSwin(**kw))


def vitkit_from(ref: nn.Module, tmp_path, fmt="safetensors", name="swin_tiny_patch4_window7_224", **cfg):
    path = save_state(ref.state_dict(), tmp_path / f"w.{fmt}", fmt)
    return create_model(name, pretrained=path, **cfg).eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_timm_parity(case, tmp_path):
    kw = dict(TINY, **CASES[case])
    ref = timm_swin(**kw)
    ours = vitkit_from(ref, tmp_path, "pth" if case == "gray" else "safetensors", **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys, same order
    x = torch.randn(2, kw.get("in_chans", 3), *to_2tuple(kw["img_size"]))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
        with eager_attention():
            torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_forward_intermediates_parity(tmp_path):
    kw = dict(TINY, **CASES["p4_w7_56_3stages"])
    ref = timm_swin(**kw)
    ours = vitkit_from(ref, tmp_path, **kw)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        for kwargs in (dict(), dict(indices=2), dict(indices=[0, -1], norm=True), dict(indices=[1], stop_early=True)):
            final_ref, inter_ref = ref.forward_intermediates(x, **kwargs)
            final, inter = ours.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, final_ref, atol=ATOL, rtol=RTOL)
            assert len(inter) == len(inter_ref)
            for a, b in zip(inter, inter_ref):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("hw", [(64, 64), (48, 32), (32, 96)])
def test_other_input_sizes_match_timm(hw, tmp_path):
    """strict_img_size=False: sizes whose grids the windows divide give timm's (dynamic mask) outputs."""
    kw = dict(TINY, img_size=32, patch_size=2, window_size=4, strict_img_size=False)
    ref = timm_swin(**kw)
    ours = vitkit_from(ref, tmp_path, **kw)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
    strict = create_model("swin_tiny_patch4_window7_224", **dict(kw, strict_img_size=True))
    with pytest.raises(ValueError, match="does not match"):
        strict(x)


def test_padded_input_sizes():
    """Sizes the windows do not divide run padded (pad, then shift, as the official detection code;
    tests/convert/test_hf_swin.py checks these sizes against Hugging Face, which pads the same way)."""
    model = create_model(
        "swin_tiny_patch4_window7_224", **dict(TINY, img_size=32, patch_size=2, window_size=4, strict_img_size=False)
    ).eval()
    with torch.no_grad():
        for hw in [(30, 30), (36, 44), (18, 50), (33, 31)]:
            x = torch.randn(2, 3, *hw)
            out = model(x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()
            fused = model.forward_features(x)
            with eager_attention():
                torch.testing.assert_close(model.forward_features(x), fused, atol=1e-5, rtol=1e-5)
            inter = model.forward_intermediates(x, intermediates_only=True)
            assert [t.shape[-2:] for t in inter] == [
                ((hw[0] + 1) // 2, (hw[1] + 1) // 2),
                ((hw[0] + 3) // 4, (hw[1] + 3) // 4),
            ]


def test_training_keeps_no_copy_of_the_input(monkeypatch):
    """Sizes that need no padding are not padded: F.pad copies even when it pads nothing, and the patch
    embedding's convolution keeps its input for the backward pass (a second copy of every training batch, 37 MiB at
    batch 64, found with benchmarks/memory.py's live tensor count); patch merging of even grids copies nothing."""
    model = create_model("swin_tiny_patch4_window7_224", **dict(TINY, img_size=32, patch_size=2, window_size=4)).train()
    x = torch.randn(2, 3, 32, 32)
    saved, padded = [], []

    def pack(t):
        saved.append(t)
        return t

    real_pad = torch.nn.functional.pad  # count the pads of this forward pass
    monkeypatch.setattr(torch.nn.functional, "pad", lambda *a, **k: padded.append(a[0].shape) or real_pad(*a, **k))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    images = [t for t in saved if t.shape == x.shape]
    assert images and all(t.data_ptr() == x.data_ptr() for t in images)
    assert padded == []


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm internals (bucketize, indexing)
def test_window_resize_matches_timm(tmp_path):
    """A window-8 checkpoint loaded into a window-4 model: the bias tables are resampled as timm's
    checkpoint filter does, so the two window-4 models agree."""
    _timm()
    from timm.models.swin_transformer import SwinTransformer as TimmSwin
    from timm.models.swin_transformer import checkpoint_filter_fn

    kw = dict(TINY, img_size=64, patch_size=4)
    src = timm_swin(window_size=8, **kw)
    state = src.state_dict()
    ref = TimmSwin(window_size=4, **kw).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(state), ref))
    path = save_state(state, tmp_path / "w8.safetensors")
    ours = create_model("swin_tiny_patch4_window7_224", pretrained=path, window_size=4, **kw).eval()
    key = "layers.0.blocks.1.attn.relative_position_bias_table"
    assert state[key].shape == (15 * 15, 2) and ours.state_dict()[key].shape == (7 * 7, 2)
    for k, v in ref.state_dict().items():
        if k.endswith("relative_position_bias_table"):
            torch.testing.assert_close(ours.state_dict()[k], v, atol=1e-6, rtol=1e-6)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_bicubic_bias_resize_is_the_official_rule():
    table = torch.randn(13 * 13, 3)
    out = resize_rel_pos_bias_table(table, (12, 12), mode="bicubic")
    official = nn.functional.interpolate(table.permute(1, 0).view(1, 3, 13, 13), size=(23, 23), mode="bicubic")
    torch.testing.assert_close(out, official.view(3, -1).permute(1, 0))
    assert resize_rel_pos_bias_table(table, (7, 7)) is table  # same size: untouched


def _official_layout(state: dict) -> dict:
    """timm keys -> the official repository's (merging at the end of stage i, `head`, saved buffers)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        out[k.replace("head.fc.", "head.")] = v
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    return out


def test_official_checkpoint_layout(tmp_path, caplog):
    kw = dict(TINY, img_size=32, patch_size=2, window_size=4)
    ref = timm_swin(**kw)
    official = _official_layout(ref.state_dict())
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    path = save_state(official, tmp_path / "official.pth", "pth")
    with caplog.at_level(logging.INFO, logger="vitkit"):
        ours = create_model("swin_tiny_patch4_window7_224", pretrained=path, **kw).eval()
    assert "official Swin layout" in caplog.text
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)


def test_head_mismatch_reinitialises_with_warning(tmp_path, caplog):
    kw = dict(TINY, img_size=32, patch_size=2, window_size=4)
    ref = timm_swin(**kw)
    path = save_state(ref.state_dict(), tmp_path / "w.safetensors")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        ours = create_model("swin_tiny_patch4_window7_224", pretrained=path, **dict(kw, num_classes=3)).eval()
    assert "re-initialised" in caplog.text and ours.head.fc.weight.shape == (3, 64)
    torch.testing.assert_close(ours.layers[1].blocks[0].mlp.fc1.weight, ref.layers[1].blocks[0].mlp.fc1.weight)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        feats = create_model("swin_tiny_patch4_window7_224", pretrained=path, **dict(kw, num_classes=0)).eval()
    assert "no classifier" in caplog.text
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(
            feats(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=ATOL, rtol=RTOL
        )


def test_wrong_architecture_is_reported(tmp_path):
    vit = create_model("vit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2, img_size=32)
    path = save_state(vit.state_dict(), tmp_path / "vit.safetensors")
    with pytest.raises(vitkit.CheckpointError, match="another architecture"):
        create_model(
            "swin_tiny_patch4_window7_224", pretrained=path, **dict(TINY, img_size=32, patch_size=2, window_size=4)
        )


# ----------------------------------------------------------------------------- every name
NAMES = [n for n in list_models() if get_model_spec(n).family == "swin"]
B = 2
NUM_CLASSES = 5
EMBED_DIM = 16
DEPTHS = (2, 2)


def tiny_overrides(name: str) -> dict:
    """Two small stages; patch size, window size and input channels of the name are kept. The image
    is non-square (2M x 4M patches), so the first stage shifts both ways and the second, clamped to
    M rows, only along the width."""
    cfg = get_model_spec(name).config
    p = cfg.get("patch_size", SwinConfig.patch_size)
    m = cfg.get("window_size", SwinConfig.window_size)
    return dict(
        embed_dim=EMBED_DIM, depths=DEPTHS, num_heads=(2, 4), num_classes=NUM_CLASSES, img_size=(2 * m * p, 4 * m * p)
    )


def build(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, **{**tiny_overrides(name), **kw})
    with torch.no_grad():  # a visible bias (the init's 0.02 hides a table that is not used)
        for n, p in model.named_parameters():
            if "relative_position_bias_table" in n:
                p.normal_(std=0.5)
    return model.eval()


def images(model, batch: int = B, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.in_chans, *to_2tuple(model.config.img_size), generator=g)


def stage_outputs(model, x) -> list[torch.Tensor]:
    outs = []
    hooks = [s.blocks[-1].register_forward_hook(lambda m, i, o: outs.append(o)) for s in model.layers]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_attributes(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (B, NUM_CLASSES) and torch.isfinite(out).all()
        model.train()
        torch.testing.assert_close(model(x), out)  # no dropout configured: train == eval
    m = to_2tuple(model.config.window_size)
    assert model.patch_embed.grid_size == (2 * m[0], 4 * m[1])
    assert model.embed_dim == EMBED_DIM and model.num_features == EMBED_DIM * 2
    assert model.num_prefix_tokens == 0 and model.num_classes == NUM_CLASSES
    assert model.get_classifier() is model.head.fc and model.model_name == name
    first, second = model.layers[0].blocks, model.layers[1].blocks
    assert first[0].shift_size == (0, 0) and first[1].shift_size == (m[0] // 2, m[1] // 2)
    assert second[1].shift_size == (0, m[1] // 2)  # M rows: no vertical shift
    feats = model.forward_features(x)
    assert feats.shape == (B, m[0], 2 * m[1], EMBED_DIM * 2)  # NHWC, as timm


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = build(name)
    (model(images(model)) ** 2).mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{n}: zero or non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_fused_attention_equals_eager(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        fused, fused_feat = model(x), model.forward_features(x)
        with eager_attention():
            eager, eager_feat = model(x), model.forward_features(x)
        with_attn, attns = model.forward_features_with_attention(x)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_feat, eager_feat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_attn, fused_feat, atol=1e-5, rtol=1e-5)
    assert len(attns) == sum(DEPTHS)
    m = to_2tuple(model.config.window_size)
    assert attns[0].shape == (B * 2 * 4, 2, m[0] * m[1], m[0] * m[1])  # (B * windows, heads, N, N)
    torch.testing.assert_close(attns[1].sum(-1), torch.ones_like(attns[1].sum(-1)))


def test_cpu_training_takes_the_explicit_path_and_inference_sdpa(monkeypatch):
    """On a CPU a bias that needs a gradient would send SDPA to its unfused math path over the bias repeated per
    image (slower than the explicit softmax path, which broadcasts it), so training runs the explicit path;
    inference (cached bias, no gradient) runs SDPA (that the two paths agree: test_fused_attention_equals_eager)."""
    import vitkit.models.swin as swin_mod

    calls = []
    sdpa = swin_mod.F.scaled_dot_product_attention
    monkeypatch.setattr(swin_mod.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    model = build(NAMES[0])
    x = images(model)
    with torch.no_grad():
        model(x)
    assert calls, "inference should run SDPA"
    calls.clear()
    model.train()
    out = model(x)
    out.square().sum().backward()
    assert not calls, "CPU training should not run SDPA with a bias that needs a gradient"
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_outputs_and_gradients(name, monkeypatch):
    import vitkit.models._base as base_mod  # Backbone._checkpointed runs the blocks

    model = build(name).train()
    check_grad_checkpointing(
        model, images(model), base_mod, monkeypatch, expected_calls=sum(DEPTHS), loss_fn=lambda out: (out**2).mean()
    )


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_roundtrip(name, tmp_path):
    model = build(name)
    loaded = check_save_roundtrip(model, images(model), tmp_path, name)
    assert not any(
        k.endswith(("relative_position_index", "attn_mask")) for k in loaded.state_dict()
    )  # buffers not saved


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_contract(name):
    model = build(name)
    x = images(model)
    ref = stage_outputs(model, x)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == len(DEPTHS)
        for y, r in zip(inter, ref):
            torch.testing.assert_close(y, r.permute(0, 3, 1, 2))  # NCHW
        assert [y.shape[1] for y in inter] == [EMBED_DIM, EMBED_DIM * 2]
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(nhwc, ref))
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], inter[-1])
        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        assert torch.equal(picked[0], inter[0]) and torch.equal(picked[1], inter[-1])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, model.forward_features(x).permute(0, 3, 1, 2))
        _, early = model.forward_intermediates(x, indices=[0], stop_early=True)
        torch.testing.assert_close(early[0], inter[0])
        for bad in (len(DEPTHS) + 1, 0, [len(DEPTHS)], []):
            with pytest.raises(ValueError):
                model.forward_intermediates(x, indices=bad)
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("name", NAMES)
def test_forward_head_and_reset_classifier(name, tmp_path):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean(dim=(1, 2)))
        model.reset_classifier(3)
        assert model.num_classes == model.config.num_classes == 3 and model(x).shape == (B, 3)
        model.reset_classifier(0)
        assert isinstance(model.head.fc, nn.Identity)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == feats.shape
    model.save_pretrained(tmp_path)
    assert from_pretrained(tmp_path).config.global_pool == ""


@pytest.mark.parametrize("name", NAMES)
def test_no_weight_decay_and_group_matcher(name):
    model = build(name)
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd == {n for n in params if n.endswith("relative_position_bias_table")}
    assert len(nwd) == sum(DEPTHS)
    _timm()
    from timm.models._manipulate import group_with_matcher

    for coarse in (False, True):
        layer_of = group_with_matcher(model.named_parameters(), model.group_matcher(coarse=coarse), reverse=True)
        assert set(layer_of) == set(params)
        assert layer_of["patch_embed.proj.weight"] == 0
        assert layer_of["head.fc.weight"] == max(layer_of.values())
    layer_of = group_with_matcher(model.named_parameters(), model.group_matcher(), reverse=True)
    # fine groups: stem, then one per block; a merging layer joins the first block of its stage (timm)
    assert layer_of["layers.0.blocks.0.norm1.weight"] == 1 and layer_of["layers.0.blocks.1.norm1.weight"] == 2
    assert layer_of["layers.1.downsample.reduction.weight"] == layer_of["layers.1.blocks.0.norm1.weight"] == 3
    assert layer_of["layers.1.blocks.1.norm1.weight"] == layer_of["norm.weight"] == 4


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        create_model("swin_tiny_patch4_window7_224", embed_dim=30, num_heads=(4, 8, 16, 32))
    with pytest.raises(ValueError, match="one (entry )?per stage"):
        create_model("swin_tiny_patch4_window7_224", depths=(2, 2))
    with pytest.raises(ValueError, match="global_pool"):
        create_model("swin_tiny_patch4_window7_224", global_pool="token")
    model = build("swin_micro_patch2_window7_28")
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.randn(1, 3, 28, 56))


def test_hf_window_rule_shrunk_window_reads_the_full_table():
    """Under window_rule='hf' a window shrunk below the configured M at run time (a grid smaller than
    M) takes its relative offsets from the full (2M-1)^2 table, the entries a window of M would use
    for the same offsets (transformers itself cannot run these sizes: its bias keeps M*M tokens)."""
    model = create_model("swin_micro_patch2_window4_32", window_rule="hf", strict_img_size=False).eval()
    attn = model.layers[0].blocks[0].attn
    M, m = 4, 3
    assert attn.relative_position_bias_table.shape[0] == (2 * M - 1) ** 2
    bias = attn.rel_pos_bias((m, m))[0]  # (heads, m*m, m*m)
    table = attn.relative_position_bias_table
    cells = [(i, j) for i in range(m) for j in range(m)]
    for a, (y1, x1) in enumerate(cells):
        for b, (y2, x2) in enumerate(cells):
            torch.testing.assert_close(bias[:, a, b], table[(y1 - y2 + M - 1) * (2 * M - 1) + (x1 - x2 + M - 1)])
    block = model.layers[2].blocks[1]  # stage 3: 4x4 grid at 32x32, 3x3 at 24x24, 8x8 at 64x64
    assert block.window_shift(4, 4) == ((4, 4), (0, 0))
    assert block.window_shift(3, 5) == ((3, 3), (0, 0))
    assert block.window_shift(8, 8) == ((4, 4), (2, 2))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 24, 24))).all()
