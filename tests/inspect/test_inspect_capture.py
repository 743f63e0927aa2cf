"""Attention capture: the recorded weights are the eager path's, the model's output does not change,
the fused path comes back afterwards, Swin windows map back onto the image exactly."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.inspect import capture_attention, get_attention, infer_grid
from vitkit.layers import Attention, fused_attention_enabled, record_attention

MODELS = {
    "vit_micro_patch4_28": (1, 28),
    "deit_micro_distilled_patch4_28": (1, 28),
    "swin_micro_patch2_window7_28": (1, 28),
    "swin_micro_patch2_window4_32": (3, 32),
    "cvt_micro_28": (1, 28),
}


def model_and_input(name: str):
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    C, S = MODELS[name]
    return model, torch.randn(2, C, S, S, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(MODELS))
def test_capture_equals_eager_attention_and_keeps_output(name):
    model, x = model_and_input(name)
    with torch.no_grad():
        fused_out = model(x)
        _, eager_weights = model.forward_features_with_attention(x)
        with capture_attention(model) as cap:
            assert not fused_attention_enabled()
            out = model(x)
    assert fused_attention_enabled()  # SDPA is the default again
    torch.testing.assert_close(out, fused_out, atol=1e-5, rtol=1e-5)
    assert len(cap.records) == len(eager_weights) > 0
    for rec, ref in zip(cap.records, eager_weights):
        assert torch.equal(rec.weights, ref), rec.name
        torch.testing.assert_close(rec.weights.sum(-1), torch.ones(rec.weights.shape[:-1]))
    assert all(r.name.endswith(".attn") for r in cap.records)
    assert cap.attentions[0] is cap.records[0].weights


def test_record_metadata_vit_deit_cvt():
    _, recs = get_attention(*model_and_input("vit_micro_patch4_28"))
    assert [r.name for r in recs] == [f"blocks.{i}.attn" for i in range(4)]
    assert all(r.num_prefix_tokens == 1 and r.query_grid == r.key_grid == (7, 7) for r in recs)
    assert recs[0].image_size == (28, 28) and recs[0].weights.shape == (2, 4, 50, 50)
    _, recs = get_attention(*model_and_input("deit_micro_distilled_patch4_28"))
    assert recs[0].num_prefix_tokens == 2
    _, recs = get_attention(*model_and_input("cvt_micro_28"))
    # CvT: keys/values come from a stride-2 conv (14x14 queries, 7x7 keys); [CLS] only in the last stage
    assert [(r.num_prefix_tokens, r.query_grid, r.key_grid) for r in recs] == [
        (0, (14, 14), (7, 7)),
        (0, (7, 7), (4, 4)),
        (1, (4, 4), (2, 2)),
        (1, (4, 4), (2, 2)),
    ]


def test_swin_windows_map_back_onto_the_image():
    """The scattered (B, heads, L, L) image attention, applied to the block's values in image order,
    must give exactly the block's (shifted-window) attention output."""
    model, x = model_and_input("swin_micro_patch2_window4_32")
    block = model.layers[0].blocks[1]
    assert block.shift_size == (2, 2)
    inputs = []
    handle = block.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        _, recs = get_attention(model, x)
        handle.remove()
        rec = next(r for r in recs if r.name == "layers.0.blocks.1.attn")
        assert rec.window.shift == (2, 2) and rec.window.size == (16, 16)
        A = rec.image_attention()  # (B, heads, 256, 256)
        assert A.shape == (2, 2, 256, 256)
        torch.testing.assert_close(A.sum(-1), torch.ones(2, 2, 256))
        h = block.norm1(inputs[0])  # (B, 16, 16, C)
        B, H, W, C = h.shape
        attn = block.attn
        v = attn.qkv(h.reshape(B, H * W, C)).reshape(B, H * W, 3, attn.num_heads, -1)[:, :, 2].transpose(1, 2)
        y = attn.proj((A @ v).transpose(1, 2).reshape(B, H * W, C)).reshape(B, H, W, C)
        ref, _ = block._attention(h)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    # every nonzero weight joins two tokens of one window (a 4x4 block of the shifted map)
    pos = torch.stack(torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij"), -1).reshape(-1, 2)
    win = ((pos - 2) % 16) // 4  # window index of each token after the cyclic shift by -2
    same = (win[:, None] == win[None, :]).all(-1)
    assert same.sum() < same.numel() and A[..., ~same].abs().max() == 0


def test_capture_only_this_model_and_nothing_outside():
    a, b = Attention(16, 2).eval(), Attention(16, 2).eval()
    x = torch.randn(1, 5, 16)
    seen = []
    record_attention(a, torch.zeros(1))  # no recorder: a no-op
    with torch.no_grad(), capture_attention(a) as cap:
        a(x)
        b(x)  # another module: ignored
        seen.extend(cap.records)
    assert len(seen) == 1 and seen[0].name == "" and seen[0].weights.shape == (1, 2, 5, 5)


def test_capture_nests_with_grad_and_detach():
    model, x = model_and_input("vit_micro_patch4_28")
    with capture_attention(model, detach=False) as cap:
        model(x).sum().backward()
    assert cap.records[0].weights.requires_grad
    with capture_attention(model) as cap:
        model(x)
    assert not cap.records[0].weights.requires_grad


def test_model_without_attention_is_a_clear_error():
    model = vitkit.create_model("mixer_micro_patch4_28").eval()
    with pytest.raises(ValueError, match="record_attention"):
        get_attention(model, torch.randn(1, 1, 28, 28))


def test_infer_grid():
    assert infer_grid(196, (224, 224)) == (14, 14)
    assert infer_grid(12, (30, 40)) == (3, 4)
    assert infer_grid(8, (224, 224)) is None  # 2x4 is too far from square
    assert infer_grid(0, (28, 28)) is None


@pytest.mark.parametrize("name", ["timesformer_micro_patch4_28", "vivit_micro_4x2_28", "mvit_micro_28"])
def test_video_models_capture(name):
    """Families built on `vitkit.layers.Attention` (TimeSformer, ViViT) or calling `record_attention`
    (MViT) are captured; only per-frame spatial attention gets an image grid."""
    if name not in vitkit.list_models():
        pytest.skip(f"{name} is not registered")
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    x = torch.randn(1, model.config.in_chans, getattr(model.config, "num_frames", 8), 28, 28)
    with torch.no_grad():
        ref = model(x)
        out, recs = get_attention(model, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert recs and all(torch.allclose(r.weights.sum(-1), torch.ones(())) for r in recs)
    for r in recs:
        spatial = r.weights.shape[-1] == r.num_prefix_tokens + 49  # one 7x7 frame
        assert (r.query_grid == (7, 7)) == spatial, r.name


def test_vivit_model4_captures_space_and_time_heads():
    """Model 4 (factorised dot-product attention) splits its heads in one module: capture gives two
    records per block, the space heads over each frame, then the time heads over each location, and
    each equals softmax(q k^T / sqrt(d)) of those heads computed from the block's input by hand."""
    from vitkit.models.vivit import group_tokens

    name = "vivit_micro_fdp_4x2_28"
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    x = torch.randn(2, model.config.in_chans, model.config.num_frames, 28, 28)
    attn = model.blocks[0].attn
    seen = {}
    hook = attn.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        ref = model(x)
        out, recs = get_attention(model, x)
    hook.remove()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert len(recs) == 2 * len(model.blocks)
    T, S = model.patch_embed.grid_size[0], model.patch_embed.grid_size[1] * model.patch_embed.grid_size[2]
    P, h, B = model.num_prefix_tokens, attn.num_heads // 2, x.shape[0]
    assert recs[0].weights.shape == (B * T, h, P + S, P + S)  # space: every frame's tokens
    assert recs[1].weights.shape == (B * S, h, P + T, P + T)  # time: every location's tokens
    xin = seen["x"]
    qkv = attn.qkv(xin).reshape(B, xin.shape[1], 3, attn.num_heads, attn.head_dim)
    for rec, (axis, heads) in zip(recs[:2], (("space", slice(0, h)), ("time", slice(h, None)))):
        q, k, _ = group_tokens(qkv[:, :, :, heads], P, T, S, axis).permute(2, 0, 3, 1, 4).unbind(0)
        want = ((q * attn.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        torch.testing.assert_close(rec.weights, want, atol=1e-6, rtol=1e-5)
