"""Attention: the fused (SDPA) and eager paths agree; the eager path's weights are a softmax; the
`eager_attention()` switch is scoped, nests, and is restored even when the block raises; `split_heads` gives
the usual per-head views and a backward pass with one copy."""

from __future__ import annotations

import pytest
import torch

import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

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


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_split_heads_matches_the_permuted_views_and_their_gradients():
    hd = D // H
    qkv = rand(B, N, 3 * D, seed=4)
    reference = qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
    for ours, ref in zip(split_heads(qkv, H), reference, strict=True):
        assert ours.shape == (B, H, N, hd) and ours.stride() == ref.stride() and torch.equal(ours, ref)
    grads = []
    for split in (lambda t: split_heads(t, H), lambda t: t.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)):
        x = qkv.clone().requires_grad_(True)
        out = F.scaled_dot_product_attention(*split(x))
        (out * rand(*out.shape, seed=5)).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


def test_split_heads_backward_writes_the_qkv_gradient_with_one_copy():
    """SDPA's q/k/v gradients go straight into the (B, N, 3 * D) layout: one stack, no clone (the permuted
    unbind needs a stack and then a clone)."""
    x = rand(B, N, 3 * D, seed=6).requires_grad_(True)
    out = F.scaled_dot_product_attention(*split_heads(x, H))
    with _OpLog() as log:
        out.backward(torch.ones_like(out))
    copies = [op for op in log.ops if op in ("stack", "cat", "clone", "copy_", "contiguous", "_to_copy")]
    assert copies == ["stack"], log.ops
    assert x.grad.is_contiguous()
