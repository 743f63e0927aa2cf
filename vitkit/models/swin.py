"""Swin Transformer: a hierarchical ViT with attention inside shifted local windows.

Paper
    Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    ICCV 2021 (arXiv:2103.14030).
Reference code
    microsoft/Swin-Transformer (`models/swin_transformer.py`; the padding for arbitrary input sizes
    of Swin-Transformer-Object-Detection) and timm `swin_transformer.py`, whose state-dict keys this
    file keeps so timm checkpoints load with an identity map. Official checkpoints (patch merging at
    the end of a stage, `head.weight`) are converted on load as timm's `checkpoint_filter_fn` does.
Deviations
    - Input sizes that the windows do not divide are padded as the official detection code (and
      Hugging Face) do: zero-pad the normalised features at the bottom/right, *then* roll, and build
      the shift mask on the padded grid. timm rolls first and pads after, which masks the wrapped-
      around rows differently; the two agree whenever no padding is needed (every paper config).
      Padded positions are attended to in unshifted windows, as in the official code.
    - The classifier head is trunc-normal initialised as in the official code and timm (vitkit's ViT
      zero-initialises its head); `reset_classifier` and a head-size mismatch on load do the same.
    - `drop_path_rate` defaults to 0 (timm: 0.1); set it for training (the paper: 0.2 / 0.3 / 0.5 for T/S/B).
    - `config.window_rule='hf'` (set for models converted from Hugging Face) shrinks windows per
      forward pass from the input's grid, as transformers does; the default 'timm' fixes them when
      the model is built, as timm and the official code do (the two agree at the configured size).
    - A relative-position-bias table of another window size is resampled with timm's rule
      (BEiT's geometric grid, linear) by default, or the official repository's plain bicubic
      (`rel_pos_interp='bicubic'`).

Shapes: images (B, C, H, W) -> patches (B, H/4, W/4, C0) -> stage i: (B, H/2^(i+2), W/2^(i+2), C0 2^i),
kept channels-last (NHWC) as timm does -> final LN -> average pool (B, C) -> logits (B, K). Inside a
block the map is cut into windows (B * nW, M*M, C) and attention runs per window.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    DropPath,
    Linear,
    Mlp,
    drop_path_rates,
    fused_attention_enabled,
    is_fx_tracing,
    record_attention,
    split_heads,
    to_2tuple,
)
from ..layers.attention import attention_recording
from ..registry import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family

logger = logging.getLogger("vitkit")

_MASK_VALUE = -100.0  # the official code's value for "different region" in the SW-MSA mask


@dataclass
class SwinConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"  # 'avg' | '' (no pooling: forward_head returns the (B, H, W, C) map)
    embed_dim: int = 96  # channels of stage 1; stage i has embed_dim * 2**i
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int | tuple[int, int] = 7  # M: windows of M x M patches
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    act: str = "gelu"
    drop_rate: float = 0.0  # dropout before the head
    proj_drop_rate: float = 0.0  # dropout in the MLP and after the attention projection
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # stochastic depth, linear over all blocks of all stages
    strict_img_size: bool = True  # False: any input size (padded to the patch and window grids)
    rel_pos_interp: str = "geometric"  # resampling a bias table on load: 'geometric' (timm) | 'bicubic' (official)
    # How a stage whose feature grid is not larger than the window shrinks its window:
    # 'timm' (timm / the official code): per dimension, fixed when the model is built for img_size;
    # 'hf' (Hugging Face transformers): on every forward pass, from the grid of that input: when
    # min(H, W) <= window the window becomes min(H, W) (square) with no shift, else the configured
    # window and shift apply. Models converted from a transformers config use 'hf'.
    window_rule: str = "timm"

    def __post_init__(self) -> None:
        for name in ("img_size", "window_size", "depths", "num_heads"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must have one entry per stage")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i} width {self.embed_dim * 2**i} is not divisible by {heads} heads")
        if self.global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {self.global_pool!r}")
        if self.rel_pos_interp not in ("geometric", "bicubic"):
            raise ValueError(f"rel_pos_interp must be 'geometric' or 'bicubic', got {self.rel_pos_interp!r}")
        if self.window_rule not in ("timm", "hf"):
            raise ValueError(f"window_rule must be 'timm' or 'hf', got {self.window_rule!r}")
        if self.window_rule == "hf":
            w = to_2tuple(self.window_size)
            if w[0] != w[1]:
                raise ValueError(f"window_rule='hf' needs a square window (Hugging Face's), got {self.window_size}")


# --------------------------------------------------------------------------------------------
# Windows
def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, Mh * Mw, C), windows in row-major order; H, W multiples of the window."""
    B, H, W, C = x.shape
    x = x.view(B, H // window[0], window[0], W // window[1], window[1], C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """(B * nW, Mh * Mw, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window[0], W // window[1], window[0], window[1], C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window: tuple[int, int], device=None, table: tuple[int, int] | None = None) -> torch.Tensor:
    """(Mh Mw, Mh Mw) index into the (2Mh-1)(2Mw-1) bias table for every pair of positions (sec. 3.2).

    `table`: the window the bias table was made for, when larger than `window` (a window shrunk at run
    time reads the offsets it has from the full table)."""
    table = window if table is None else table
    coords = torch.stack(
        torch.meshgrid(
            torch.arange(window[0], device=device),
            torch.arange(window[1], device=device),
            indexing="ij",
        )
    ).flatten(1)  # (2, Mh Mw)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2), each in [-M+1, M-1]
    return (rel[..., 0] + table[0] - 1) * (2 * table[1] - 1) + (rel[..., 1] + table[1] - 1)


def shifted_window_mask(H: int, W: int, window: tuple[int, int], shift: tuple[int, int], device=None) -> torch.Tensor:
    """The SW-MSA mask (sec. 3.2, fig. 4) for an (H, W) map (multiples of the window): (nW, N, N)
    with 0 inside a region and -100 across regions that the cyclic shift brought together."""

    def regions(n: int, m: int, s: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - m).long() + (i >= n - s).long()  # 0 | 1 (last window, not wrapped) | 2 (wrapped)

    img = (regions(H, window[0], shift[0])[:, None] * 3 + regions(W, window[1], shift[1])[None, :]).float()
    win = window_partition(img[None, :, :, None], window).squeeze(-1)  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


@torch.fx.wrap  # one opaque call in a torch.fx graph: the path taken depends on the real shapes
def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout_p: float, scale: float
) -> torch.Tensor:
    """Attention within windows: q, k, v (B * nW, heads, N, hd), bias (1 | nW, heads, N, N) -> (B * nW, heads, N, hd)."""
    BW, heads, N, _ = q.shape
    nW = bias.shape[0]
    # On a CPU, a bias that needs a gradient (training: the relative position bias table learns) sends SDPA
    # to its unfused math path over the bias repeated for every image (plus its -inf row checks), slower
    # than the explicit path below, which broadcasts the bias: Swin-T training 1.07x
    # (docs/performance.md#attention-path-sdpa-or-eager-chosen-by-measurement). CUDA's memory-efficient
    # kernel takes a bias gradient and stays on SDPA.
    slow_bias = q.device.type == "cpu" and bias.requires_grad and torch.is_grad_enabled()
    if fused_attention_enabled() and not slow_bias:
        if nW != 1 and nW != BW:
            # repeat the per-window bias over the batch: SDPA's fused CPU kernel takes 4-D inputs only
            # (a 5-D (B, nW, h, N, hd) call falls back to the unfused math path, ~2-3x slower here)
            bias = bias.expand(BW // nW, -1, -1, -1, -1).reshape(BW, heads, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
    attn = (q * scale) @ k.transpose(-2, -1)
    if nW != 1 and nW != BW:  # (B, nW, h, N, N) view: the bias broadcasts over the batch
        attn = attn.view(BW // nW, nW, heads, N, N)
    weights = (attn + bias).softmax(dim=-1).view(BW, heads, N, N)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


# --------------------------------------------------------------------------------------------
class WindowAttention(nn.Module):
    """W-MSA with the relative position bias B of eq. 4: softmax(Q K^T / sqrt(d) + B + mask) V."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window
        # one learned bias per head for each of the (2M-1)^2 relative offsets
        num_offsets = (2 * window[0] - 1) * (2 * window[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets, num_heads))
        # a buffer rebuilt from the window size, not saved (timm: non-persistent)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def set_window_size(self, window: tuple[int, int], mode: str = "geometric") -> None:
        """Another window: the bias table is resampled (`resize_rel_pos_bias_table`), the index rebuilt."""
        window = to_2tuple(window)
        if window == self.window_size:
            return
        table = self.relative_position_bias_table
        with torch.no_grad():
            new = (
                resize_rel_pos_bias_table(table.detach(), window, mode=mode)
                if table.shape[0] == (2 * self.window_size[0] - 1) ** 2 and self.window_size[0] == self.window_size[1]
                else None
            )
        if new is None:
            raise ValueError(f"cannot resample the {self.window_size} window's bias table to {window}")
        self.relative_position_bias_table = nn.Parameter(new, requires_grad=table.requires_grad)
        self.window_size = window
        self.relative_position_index = relative_position_index(window, device=table.device)

    def rel_pos_bias(self, window: tuple[int, int] | None = None) -> torch.Tensor:
        """(1, heads, N, N) for `window` (default: the table's own; a smaller one reads a part of the table)."""
        if window is None or tuple(window) == tuple(self.window_size):
            window, index = self.window_size, self.relative_position_index
        else:
            index = relative_position_index(window, self.relative_position_bias_table.device, table=self.window_size)
        N = window[0] * window[1]
        bias = self.relative_position_bias_table[index.view(-1)].view(N, N, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)

    def attn_bias(self, mask: torch.Tensor | None = None, window: tuple[int, int] | None = None) -> torch.Tensor:
        """The additive attention bias: the relative position bias (1, heads, N, N), plus the SW-MSA
        mask (nW, N, N) when given -> (nW, heads, N, N)."""
        bias = self.rel_pos_bias(window)
        return bias if mask is None else bias + mask.unsqueeze(1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
        attn_bias: torch.Tensor | None = None,
        window: tuple[int, int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B * nW, N, C); mask: (nW, N, N) or None. Returns (B * nW, N, C) [, weights (B * nW, heads, N, N)].
        `attn_bias`, if given, replaces `self.attn_bias(mask, window)` (SwinBlock caches it for inference);
        `window`: the windows' size when it differs from the table's (Hugging Face's run-time rule)."""
        BW, N, C = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        bias = self.attn_bias(mask, window) if attn_bias is None else attn_bias  # (1 | nW, h, N, N)
        weights = None
        if not (return_attention or attention_recording()):
            x = window_attention(q, k, v, bias, self.attn_drop.p if self.training else 0.0, self.scale)
        else:
            nW = bias.shape[0]
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if nW != 1 and nW != BW:  # (B, nW, h, N, N) view: the bias broadcasts over the batch
                attn = attn.view(BW // nW, nW, self.num_heads, N, N)
            weights = (attn + bias).softmax(dim=-1).view(BW, self.num_heads, N, N)
            record_attention(self, weights)
            x = self.attn_drop(weights) @ v
        x = x.transpose(1, 2).reshape(BW, N, C)
        x = self.proj_drop(self.proj(x))
        if return_attention:
            return x, weights
        return x


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)) then x + MLP(LN(x)) (eq. 3); shifted windows (SW-MSA) when `shift` is non-zero."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        resolution: tuple[int, int],
        window: tuple[int, int],
        shift: tuple[int, int],
        c: SwinConfig,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_rule = c.window_rule
        self.target_window, self.target_shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.resolution = tuple(resolution)
        self.window_size, self.shift_size = self._build_window_shift(self.resolution)
        # 'hf': the table keeps the configured window (a window shrunk at run time reads part of it)
        table_window = self.target_window if self.window_rule == "hf" else self.window_size
        self.attn = WindowAttention(dim, num_heads, table_window, c.qkv_bias, c.attn_drop_rate, c.proj_drop_rate)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.mlp = Mlp(dim, int(dim * c.mlp_ratio), act=c.act, drop=c.proj_drop_rate)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.register_buffer("attn_mask", None, persistent=False)
        self._init_mask()
        # With autograd off, the combined bias (relative position bias gathered from the table, plus the
        # shift mask) depends only on the table, the padded size, window, dtype and device: it is built once
        # and reused. The cache keeps a copy of the table and is rebuilt whenever the table's values change.
        self._bias_cache: tuple | None = None

    def _build_window_shift(self, resolution: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window and shift fixed at build time ('timm' rule): a window larger than the map shrinks to
        the map and then there is nothing to shift (official rule, per dimension as timm, so the bias
        table keeps timm's shape). Under the 'hf' rule the configured ones, shrunk per forward pass."""
        if self.window_rule == "hf":
            return self.target_window, self.target_shift
        window = tuple(r if r <= w else w for r, w in zip(resolution, self.target_window))
        shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, self.target_window, self.target_shift))
        return window, shift

    def window_shift(self, H: int, W: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window and shift used for an (H, W) map. 'hf' (transformers' `set_shift_and_window_size`):
        when min(H, W) <= window, a min(H, W) window without shift; 'timm': those fixed at build time."""
        if self.window_rule != "hf":
            return self.window_size, self.shift_size
        if is_fx_tracing():  # symbolic sizes: the graph is traced for the configured resolution
            H, W = self.resolution
        m = min(H, W)
        if m <= self.target_window[0]:
            return (m, m), (0, 0)
        return self.target_window, self.target_shift

    def _init_mask(self) -> None:
        """The shift mask of the configured resolution, cached; other sizes build theirs per call (not saved)."""
        window, shift = self.window_shift(*self.resolution)
        mask = None
        if any(shift):
            mask = shifted_window_mask(
                *self._padded(*self.resolution, window), window, shift, device=self.norm1.weight.device
            )
        self.attn_mask = mask
        self._bias_cache = None

    def set_input_size(
        self, resolution: tuple[int, int], window: tuple[int, int] | None = None, rel_pos_interp: str = "geometric"
    ) -> None:
        """Rebuild for another feature-map size (and window): the window/shift rule is applied again, the
        bias table resampled if the window it needs changes, and the cached mask rebuilt."""
        if window is not None:
            window = to_2tuple(window)
            self.target_shift = (window[0] // 2, window[1] // 2) if any(self.target_shift) else (0, 0)
            self.target_window = window
        self.resolution = tuple(resolution)
        self.window_size, self.shift_size = self._build_window_shift(self.resolution)
        table_window = self.target_window if self.window_rule == "hf" else self.window_size
        self.attn.set_window_size(table_window, mode=rel_pos_interp)
        self._init_mask()

    @staticmethod
    def _padded(H: int, W: int, window: tuple[int, int]) -> tuple[int, int]:
        return H + (-H) % window[0], W + (-W) % window[1]

    def _shift_mask(self, H: int, W: int, Hp: int, Wp: int, window, shift, device) -> torch.Tensor:
        if is_fx_tracing() or ((H, W) == self.resolution and self.attn_mask is not None):
            return self.attn_mask  # fx: the configured resolution's, as timm's traced graphs
        return shifted_window_mask(Hp, Wp, window, shift, device=device)

    def _cached_bias(
        self, H: int, W: int, Hp: int, Wp: int, window, shift, device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """`attn.attn_bias(mask)` in `dtype`, cached while autograd is off (None when it is on, and while
        `torch.export`/`torch.compile`/`torch.fx` trace the model: a traced graph must not write module
        attributes)."""
        if torch.is_grad_enabled() or is_fx_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return None
        table = self.attn.relative_position_bias_table
        key = (Hp, Wp, window, shift, dtype, device, torch.is_inference_mode_enabled())
        cache = self._bias_cache
        if cache is not None and cache[0] == key and torch.equal(cache[1], table):
            return cache[2]
        mask = self._shift_mask(H, W, Hp, Wp, window, shift, device) if any(shift) else None
        bias = self.attn.attn_bias(mask, window).to(dtype)
        self._bias_cache = (key, table.clone(), bias)
        return bias

    def _attention(self, x: torch.Tensor, return_attention: bool = False):
        B, H, W, C = x.shape
        window, shift = self.window_shift(H, W)
        pad_h, pad_w = (-H) % window[0], (-W) % window[1]
        Hp, Wp = H + pad_h, W + pad_w
        # F.pad copies even when it pads nothing: eager runs pad only when needed; an fx graph always pads
        padded = is_fx_tracing() or pad_h > 0 or pad_w > 0
        if padded:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # official detection code: pad, then shift
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        bias = None if return_attention else self._cached_bias(H, W, Hp, Wp, window, shift, x.device, x.dtype)
        mask = self._shift_mask(H, W, Hp, Wp, window, shift, x.device) if shifted and bias is None else None
        out = self.attn(
            window_partition(x, window), mask=mask, return_attention=return_attention, attn_bias=bias, window=window
        )
        out, weights = out if return_attention else (out, None)
        x = window_reverse(out, window, Hp, Wp)  # (B, Hp, Wp, C)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return (x[:, :H, :W, :] if padded else x), weights

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(B, H, W, C) -> (B, H, W, C) [, attention weights (B * nW, heads, N, N)]."""
        y, weights = self._attention(self.norm1(x), return_attention)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of patches (4C), LayerNorm, Linear to 2C (sec. 3.1): half the grid."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        # odd sizes: pad one row / column of zeros (F.pad copies even when it pads nothing: eager runs
        # pad only when needed, an fx graph always pads)
        if is_fx_tracing() or H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        # channel order x0, x1, x2, x3 of the official code: (row, col) = (0,0), (1,0), (0,1), (1,1)
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, out_dim)


class SwinStage(nn.Module):
    """Patch merging (stages 2+, timm's layout), then blocks alternating W-MSA and SW-MSA."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window: tuple[int, int],
        downsample: bool,
        c: SwinConfig,
        dpr: list[float],
    ) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, c.norm_eps) if downsample else nn.Identity()
        if downsample:
            resolution = tuple((r + 1) // 2 for r in resolution)
        self.resolution = resolution
        shift = (window[0] // 2, window[1] // 2)
        self.blocks = nn.Sequential(
            *[
                SwinBlock(out_dim, num_heads, resolution, window, (0, 0) if i % 2 == 0 else shift, c, dpr[i])
                for i in range(depth)
            ]
        )


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> conv p x p, stride p -> LayerNorm -> (B, H/p, W/p, D)."""

    def __init__(
        self,
        img_size: tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        eps: float,
        strict_img_size: bool,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = tuple(math.ceil(s / p) for s, p in zip(img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def set_input_size(self, img_size: tuple[int, int]) -> None:
        self.img_size = to_2tuple(img_size)
        self.grid_size = tuple(math.ceil(s / p) for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"the model expects images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}: create the "
                f"model with in_chans={x.shape[1] if x.ndim == 4 else '?'} or convert the images"
            )
        H, W = x.shape[-2:]
        if self.strict_img_size and (H, W) != self.img_size:
            raise ValueError(
                f"input size ({H}x{W}) does not match the model's img_size {self.img_size[0]}x{self.img_size[1]}: "
                f"resize the images, create the model with img_size=({H}, {W}), or pass strict_img_size=False "
                f"(any size, padded to the window grid)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fx = is_fx_tracing()
        if not fx:  # fx: shapes are symbolic, the check cannot run (see vitkit/layers/tracing.py)
            self.check_input(x)
        H, W = x.shape[-2:]
        ph, pw = self.patch_size
        if fx or H % ph or W % pw:  # eager: only when not strict (strict sizes divide, checked at init)
            # F.pad copies even when it pads nothing, and the convolution keeps its input for the backward
            # pass: an unconditional pad would keep a second copy of every training batch (37 MiB at batch 64)
            x = F.pad(x, (0, -W % pw, 0, -H % ph))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/p, W/p, D)


class ClassifierHead(nn.Module):
    """Average pool over (H, W), dropout, Linear: timm's `head.fc` key."""

    def __init__(self, in_features: int, num_classes: int, drop: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.fc = Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


@register_family
class SwinTransformer(Backbone):
    family = "swin"
    config_class = SwinConfig
    output_fmt = "NHWC"  # forward_features' layout, as timm's Swin
    hierarchical_features = True  # features_only takes every stage by default (timm's Swin)
    classifier_attr = "head.fc"
    # timm's groups: the stem, then one per block (a merging layer joins the first block of its stage),
    # the final norm with the last block
    group_blocks = [
        (r"^layers\.(\d+).downsample", (0,)),
        (r"^layers\.(\d+)\.\w+\.(\d+)", None),
        (r"^norm", (99999,)),
    ]
    group_blocks_coarse = r"^layers\.(\d+)"
    # forward_intermediates: the feature pyramid, one map per stage; `norm` reaches the last stage only
    intermediate_fmts = ("NCHW", "NHWC")
    feature_level_unit = "stages"
    norm_intermediates = "last"

    def __init__(self, config: SwinConfig) -> None:
        super().__init__(config)
        c = config
        img_size = to_2tuple(c.img_size)
        window = to_2tuple(c.window_size)
        if c.strict_img_size and (img_size[0] % c.patch_size or img_size[1] % c.patch_size):
            raise ValueError(f"img_size {img_size} is not divisible by the patch size {c.patch_size}")
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.embed_dim = c.embed_dim
        self.num_prefix_tokens = 0
        self.num_layers = len(c.depths)
        self.num_features = self.head_hidden_size = c.embed_dim * 2 ** (self.num_layers - 1)

        self.patch_embed = PatchEmbed(img_size, c.patch_size, c.in_chans, c.embed_dim, c.norm_eps, c.strict_img_size)
        dpr = drop_path_rates(c.drop_path_rate, sum(c.depths))
        stages, resolution, dim = [], self.patch_embed.grid_size, c.embed_dim
        self.feature_info = []
        for i, depth in enumerate(c.depths):
            out_dim = c.embed_dim * 2**i
            stage = SwinStage(
                dim,
                out_dim,
                resolution,
                depth,
                c.num_heads[i],
                window,
                i > 0,
                c,
                dpr[sum(c.depths[:i]) : sum(c.depths[: i + 1])],
            )
            stages.append(stage)
            resolution, dim = stage.resolution, out_dim
            self.feature_info.append(dict(num_chs=out_dim, reduction=c.patch_size * 2**i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self._ref_window, self._ref_grid = window, self.patch_embed.grid_size  # for set_input_size's scaling
        self.norm = nn.LayerNorm(self.num_features, eps=c.norm_eps)
        self.head = ClassifierHead(self.num_features, c.num_classes, c.drop_rate)
        self.init_weights()

    # ----------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """The official/timm scheme: trunc-normal(0.02) linears (the head too) and bias tables, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    # ----------------------------------------------------------------- backbone interface
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def init_classifier(self, head: nn.Module) -> None:
        """Swin's rule (official and timm): a trunc-normal(0.02) head with a zero bias; `reset_classifier`
        uses it, and `global_pool=''` there makes forward return the (B, H, W, C) map."""
        if isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def _keep_levels(self, n: int) -> None:  # prune_intermediate_layers (Backbone)
        self.layers = self.layers[:n]
        self.num_layers = n

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
        window_size: int | tuple[int, int] | None = None,
        window_ratio: int | None = None,
        always_partition: bool | None = None,
    ) -> None:
        """timm's: run at another image size (and window) from now on. Without `window_size` or
        `window_ratio` the window scales with the patch grid, keeping the window-to-grid ratio of the
        model as built (timm's rule; calling at the current size changes nothing); `window_ratio` r makes
        the window grid // r. Bias tables of another window are resampled by `config.rel_pos_interp`;
        masks are rebuilt; `config.img_size` and `config.window_size` follow. A new patch size and
        `always_partition=True` are refused (not supported by vitkit's Swin)."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_embed.patch_size:
            raise ValueError("changing the patch size of a Swin model is not supported: create the model with it")
        if always_partition:
            raise ValueError("always_partition=True is not supported by vitkit's Swin")
        if (
            window_size is not None
            and not isinstance(window_size, int)
            and (len(window_size) != 2 or not all(isinstance(w, int) for w in window_size))
        ):
            raise ValueError(
                f"window_size must be an int or an (h, w) pair (one window for every stage), got {window_size!r}"
            )
        if window_ratio is not None and (not isinstance(window_ratio, int) or window_ratio < 1):
            raise ValueError(f"window_ratio must be a positive int (one for every stage), got {window_ratio!r}")
        if img_size is not None:
            self.patch_embed.set_input_size(to_2tuple(img_size))
        grid = self.patch_embed.grid_size
        if window_size is not None:
            window = to_2tuple(window_size)
            self._ref_window, self._ref_grid = window, grid
        elif window_ratio is not None:
            window = (max(1, grid[0] // window_ratio), max(1, grid[1] // window_ratio))
            self._ref_window, self._ref_grid = window, grid
        else:
            window = tuple(max(1, w * g // r) for w, g, r in zip(self._ref_window, grid, self._ref_grid))
        if self.config.window_rule == "hf" and window[0] != window[1]:
            raise ValueError(f"window_rule='hf' needs a square window, got {window}")
        resolution = grid
        for i, stage in enumerate(self.layers):
            if i > 0:
                resolution = tuple((r + 1) // 2 for r in resolution)
            stage.resolution = resolution
            for block in stage.blocks:
                block.set_input_size(resolution, window, rel_pos_interp=self.config.rel_pos_interp)
        self.config.img_size = self.patch_embed.img_size
        self.config.window_size = window if window[0] != window[1] else window[0]
        self.update_input_size(self.patch_embed.img_size, pool_size=resolution)

    # ----------------------------------------------------------------- forward
    def _run_stage(self, stage: SwinStage, x: torch.Tensor) -> torch.Tensor:
        x = stage.downsample(x)
        for block in stage.blocks:
            x = self._checkpointed(block, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised last-stage map (B, H/32, W/32, C_last), channels-last as timm."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = self._run_stage(stage, x)
        return self.norm(x)

    def forward_features_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like `forward_features`, also returning every block's window attention (B * nW, heads, N, N),
        windows taken in row-major order over the (padded, shifted for SW-MSA) map. Eager path."""
        x = self.patch_embed(x)
        attentions = []
        for stage in self.layers:
            x = stage.downsample(x)
            for block in stage.blocks:
                x, weights = block(x, return_attention=True)
                attentions.append(weights)
        return self.norm(x), attentions

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, H, W, C) -> logits (B, K), or pooled features (B, C) when `pre_logits`."""
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head.drop(x)
        return x if pre_logits else self.head.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone), as timm's: stage i gives (B, C_i, H_i, W_i) for 'NCHW' or
    # (B, H_i, W_i, C_i) for 'NHWC'; no prefix tokens (an empty (B, 0, C_i) with return_prefix_tokens)
    def _num_feature_levels(self) -> int:
        return len(self.layers)

    def _run_levels(self, x: torch.Tensor, last: int):
        x = self.patch_embed(x)
        for stage in self.layers[: last + 1]:
            x = self._run_stage(stage, x)
            yield x, None

    def _format_intermediate(self, y: torch.Tensor, ctx: Any, output_fmt: str):
        prefix = y.new_zeros(y.shape[0], 0, y.shape[-1])
        return (y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y), prefix

    # ----------------------------------------------------------------- weight import
    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Fit a timm or official Swin state dict to this model (each step is logged):
        official layout -> timm's (patch merging moves from the end of stage i to the start of
        stage i+1, `head` -> `head.fc`); saved buffers dropped; bias tables of another window size
        resampled; a head of another size left freshly initialised."""
        state = dict(state)
        buffers = [k for k in state if k.endswith(("relative_position_index", "attn_mask"))]
        for k in buffers:
            del state[k]
        if buffers:
            logger.info(
                "%s: dropped %d saved buffer(s) (relative_position_index, attn_mask): they are rebuilt",
                source,
                len(buffers),
            )
        if "layers.0.downsample.reduction.weight" in state:  # official: merging at the end of stages 1-3
            logger.info(
                "%s: official Swin layout: moving patch merging to the start of the next stage, head -> head.fc", source
            )
            from ..convert.official import convert_official_swin

            state = convert_official_swin(state)

        expected = self.state_dict()
        for k, v in list(state.items()):
            if (
                k.endswith("relative_position_bias_table")
                and k in expected
                and v.shape != expected[k].shape
                and v.ndim == 2
                and v.shape[1] == expected[k].shape[1]
            ):
                attn = self.get_submodule(k.rsplit(".", 1)[0])
                state[k] = resize_rel_pos_bias_table(v, attn.window_size, mode=self.config.rel_pos_interp)
                side = math.isqrt(v.shape[0])
                logger.info(
                    "%s: resampled %s from a %dx%d to a %dx%d table (%s)",
                    source,
                    k,
                    side,
                    side,
                    2 * attn.window_size[0] - 1,
                    2 * attn.window_size[1] - 1,
                    self.config.rel_pos_interp,
                )
        self._fit_head(state, expected, source)
        return state

    def _fit_head(self, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
        model_head = {k: v for k, v in expected.items() if k.startswith("head.")}
        ckpt_head = {k: v for k, v in state.items() if k.startswith("head.")}
        if ckpt_head.keys() == model_head.keys() and all(ckpt_head[k].shape == v.shape for k, v in model_head.items()):
            return
        if not model_head:
            logger.warning("%s: the model has no classifier (num_classes=0): ignoring the checkpoint's head", source)
        elif ckpt_head:
            n_ckpt = next((v.shape[0] for k, v in ckpt_head.items() if k.endswith("weight")), "?")
            logger.warning(
                "%s: the checkpoint's head has %s classes and the model's %d: it is re-initialised and must be trained",
                source,
                n_ckpt,
                self.num_classes,
            )
        else:
            logger.warning(
                "%s: the checkpoint has no head (a feature/pre-training checkpoint): the model's "
                "%d-class head is freshly initialised and must be trained",
                source,
                self.num_classes,
            )
        for k in ckpt_head:
            del state[k]
        state.update({k: v.clone() for k, v in model_head.items()})


# --------------------------------------------------------------------------------------------
# Resampling a relative-position-bias table to another window size.
def _geometric_positions(src: int, dst: int) -> list[float]:
    """BEiT/timm: the `src` table entries sit on a grid whose spacing grows geometrically from the
    centre so that it spans the `dst` table; returns their coordinates (centre 0)."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:  # bisect the ratio q with sum_{i<src//2} q^i = dst//2
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return [-d for d in reversed(dis)] + [0.0] + dis


def _linear_weights(points: torch.Tensor, x: torch.Tensor):
    """Linear interpolation of x on sorted `points` (ends clamped), as timm's RegularGridInterpolator:
    (left index, right index, left weight, right weight)."""
    right = torch.bucketize(x, points).clamp(max=len(points) - 1)
    left = (right - 1).clamp(min=0)
    dl, dr = (x - points[left]).clamp(min=0), (points[right] - x).clamp(min=0)
    both = (dl == 0) & (dr == 0)
    dl, dr = torch.where(both, 1.0, dl), torch.where(both, 1.0, dr)
    return left, right, dr / (dl + dr), dl / (dl + dr)


def resize_rel_pos_bias_table(table: torch.Tensor, window: tuple[int, int], mode: str = "geometric") -> torch.Tensor:
    """(S*S, heads) table of a square window -> ((2Mh-1)(2Mw-1), heads) for window (Mh, Mw).

    'geometric' reproduces timm's `resize_rel_pos_bias_table` (its checkpoint filter's rule, from
    BEiT): source entries on a geometric grid spanning the new table, linear interpolation.
    'bicubic' is the official repository's `F.interpolate(table, mode='bicubic')`."""
    n, heads = table.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot resample a relative position table of {n} entries: not a square window")
    dst = (2 * window[0] - 1, 2 * window[1] - 1)
    if (side, side) == dst:
        return table
    grid = table.float().T.reshape(heads, side, side)
    if mode == "bicubic":
        out = F.interpolate(grid[None], size=dst, mode="bicubic", align_corners=False)[0]
    else:
        (yl, yr, wyl, wyr), (xl, xr, wxl, wxr) = (
            _linear_weights(torch.tensor(_geometric_positions(side, d)), torch.arange(-(d // 2), d // 2 + 0.1, 1.0))
            for d in dst
        )
        out = sum(
            grid[:, iy][:, :, ix] * (wy[:, None] * wx[None, :])
            for iy, wy in ((yl, wyl), (yr, wyr))
            for ix, wx in ((xl, wxl), (xr, wxr))
        )
    return out.reshape(heads, -1).T.contiguous().to(table.dtype)


# --------------------------------------------------------------------------------------------
# Named configurations (paper table: Swin-T/S/B/L; C = embed_dim).
SWIN_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def _register_all() -> None:
    for size in SWIN_SIZES:
        register_model(f"swin_{size}_patch4_window7_224", "swin", dict(SWIN_SIZES[size], window_size=7), crop_pct=0.9)
    for size in ("base", "large"):
        register_model(
            f"swin_{size}_patch4_window12_384",
            "swin",
            dict(SWIN_SIZES[size], img_size=384, window_size=12),
            crop_pct=1.0,
        )

    # Small models for CPU training: 28x28 grayscale (grid 14 -> 7, window 7) and 32x32 RGB
    # (grid 16 -> 8 -> 4, window 4); every grid is a multiple of the window, so nothing is padded.
    micro = dict(embed_dim=32, mlp_ratio=2.0, num_classes=10)
    register_model(
        "swin_micro_patch2_window7_28",
        "swin",
        dict(micro, img_size=28, patch_size=2, in_chans=1, window_size=7, depths=(2, 2), num_heads=(2, 4)),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        crop_pct=1.0,
    )
    register_model(
        "swin_micro_patch2_window4_32",
        "swin",
        dict(micro, img_size=32, patch_size=2, window_size=4, depths=(2, 2, 2), num_heads=(2, 4, 8)),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        crop_pct=1.0,
    )


_register_all()
