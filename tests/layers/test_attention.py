"""Attention: the fused (SDPA) and eager paths agree; the eager path's weights are a softmax; the
`eager_attention()` switch is scoped, nests, and is restored even when the block raises; `split_heads` cuts
q, k, v and their heads from a fused projection."""

from __future__ import annotations

import pytest
import torch

from vitkit.layers import Attention, Block, eager_attention, fused_attention_enabled, split_heads

B, N, D, H = 3, 7, 32, 4


def make(seed: int = 0, **kw) -> Attention:
    torch.manual_seed(seed)
    return Attention(D, num_heads=H, **kw).eval()


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def bias_of(kind: str) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "full":
        return rand(B, H, N, N, seed=2)
    if kind == "per_head":
        return rand(1, H, N, N, seed=3)
    if kind == "shared":
        return rand(N, N, seed=4)
    if kind == "mask":  # additive -inf mask: the last two keys are hidden from every query
        bias = torch.zeros(1, 1, N, N)
        bias[..., -2:] = float("-inf")
        return bias
    raise AssertionError(kind)


@pytest.mark.parametrize("bias", ["none", "full", "per_head", "shared", "mask"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_fused_equals_eager(bias, qkv_bias):
    attn = make(qkv_bias=qkv_bias)
    x = rand(B, N, D)
    attn_bias = bias_of(bias)
    assert fused_attention_enabled()
    fused = attn(x, attn_bias=attn_bias)
    with eager_attention():
        assert not fused_attention_enabled()
        eager = attn(x, attn_bias=attn_bias)
    explicit, _ = attn(x, attn_bias=attn_bias, return_attention=True)  # forces the eager path
    assert fused.shape == (B, N, D)
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager, explicit, atol=0, rtol=0)


def test_fused_equals_eager_gradients():
    attn = make()
    x = rand(B, N, D).requires_grad_()
    bias = bias_of("full")
    attn(x, attn_bias=bias).pow(2).sum().backward()
    grads_fused = [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]
    x.grad = None
    attn.zero_grad(set_to_none=True)
    with eager_attention():
        attn(x, attn_bias=bias).pow(2).sum().backward()
    grads_eager = [x.grad] + [p.grad for p in attn.parameters()]
    for a, b in zip(grads_fused, grads_eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", ["none", "full", "mask"])
def test_weights_are_a_softmax(bias):
    attn = make()
    x = rand(B, N, D)
    out, weights = attn(x, attn_bias=bias_of(bias), return_attention=True)
    assert out.shape == (B, N, D)
    assert weights.shape == (B, H, N, N)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, N))
    if bias == "mask":
        assert (weights[..., -2:] == 0).all()


def test_weights_match_a_manual_computation():
    attn = make()
    x = rand(B, N, D)
    _, weights = attn(x, return_attention=True)
    q, k, _ = attn.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-2, -1) / (D // H) ** 0.5, dim=-1)
    torch.testing.assert_close(weights, expected)


def test_block_returns_attention_weights():
    torch.manual_seed(0)
    block = Block(D, H).eval()
    x = rand(B, N, D)
    y, weights = block(x, return_attention=True)
    torch.testing.assert_close(y, block(x), atol=1e-5, rtol=1e-5)
    assert weights.shape == (B, H, N, N)


def test_indivisible_dim_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Attention(30, num_heads=4)


def test_context_manager_restores_state_on_exception():
    assert fused_attention_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with eager_attention():
            assert not fused_attention_enabled()
            raise RuntimeError("boom")
    assert fused_attention_enabled()


def test_context_manager_nests():
    assert fused_attention_enabled()
    with eager_attention():
        assert not fused_attention_enabled()
        with eager_attention(enabled=False):  # re-enable the fused path inside
            assert fused_attention_enabled()
            with eager_attention():
                assert not fused_attention_enabled()
            assert fused_attention_enabled()
        assert not fused_attention_enabled()
        with eager_attention():
            assert not fused_attention_enabled()
        assert not fused_attention_enabled()
    assert fused_attention_enabled()


def test_context_manager_is_thread_local():
    import threading

    seen = []
    with eager_attention():
        t = threading.Thread(target=lambda: seen.append(fused_attention_enabled()))
        t.start()
        t.join()
        assert not fused_attention_enabled()
    assert seen == [True]  # another thread is not affected


def test_split_heads_cuts_q_k_v_and_their_heads_from_the_fused_projection():
    """q, k, v are the first, second and third D columns of the fused output, each split into H heads of D / H
    channels, (B, H, N, D / H) views of it; gradients land in the matching columns."""
    hd = D // H
    qkv = rand(B, N, 3 * D, seed=4).requires_grad_(True)
    parts = split_heads(qkv, H)
    for i, t in enumerate(parts):
        expected = qkv[..., i * D : (i + 1) * D].reshape(B, N, H, hd).transpose(1, 2)
        assert t.shape == (B, H, N, hd) and torch.equal(t, expected)
        assert t.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()  # a view, no copy
    weights = [rand(B, H, N, hd, seed=10 + i) for i in range(3)]
    sum((t * w).sum() for t, w in zip(parts, weights)).backward()
    for i, w in enumerate(weights):
        torch.testing.assert_close(qkv.grad[..., i * D : (i + 1) * D], w.transpose(1, 2).reshape(B, N, D))
