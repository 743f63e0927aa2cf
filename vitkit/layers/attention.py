"""Multi-head self-attention with a fused (SDPA) path and an eager path that can return weights.

The fused path calls `F.scaled_dot_product_attention`, which dispatches to a fused kernel on CPU
and GPU. The eager path computes softmax(q k^T / sqrt(d)) v explicitly (eq. 5-7 of the ViT paper,
appendix A) and is the only one that can hand back the attention weights, so inspection tools
use it. Which path runs is chosen per call (`return_attention=True` forces eager) or for a block
of code with the `eager_attention()` context manager -- never by an environment variable read at
import time. `tests/layers/test_attention.py` checks that both paths agree.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_FUSED = contextvars.ContextVar("vitkit_fused_attention", default=True)


@contextlib.contextmanager
def eager_attention(enabled: bool = True) -> Iterator[None]:
    """Run attention through the explicit softmax path inside this block (thread/task local)."""
    token = _FUSED.set(not enabled)
    try:
        yield
    finally:
        _FUSED.reset(token)


def fused_attention_enabled() -> bool:
    return _FUSED.get()


class Attention(nn.Module):
    """Multi-head self-attention; state-dict keys follow timm (`qkv`, `proj`)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D). `attn_bias` is added to the logits (broadcast to (B, H, N, N)).

        Returns (B, N, D), or ((B, N, D), (B, H, N, N) weights) when `return_attention`.
        """
        B, N, D = x.shape
        # (B, N, 3, H, hd) -> (3, B, H, N, hd)
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = None
        if fused_attention_enabled() and not return_attention:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            if attn_bias is not None:
                attn = attn + attn_bias
            weights = attn.softmax(dim=-1)
            x = self.attn_drop(weights) @ v
        x = x.transpose(1, 2).reshape(B, N, D)
        x = self.proj_drop(self.proj(x))
        return (x, weights) if return_attention else x
