"""Capture every attention layer's weights during one ordinary forward pass.

    with capture_attention(model) as cap:
        logits = model(images)
    cap.attentions          # [(B, heads, N_q, N_k), ...], one per attention call, in execution order
    cap.records[i].name     # 'blocks.3.attn', 'layers.1.blocks.0.attn', 'stage2.blocks.5.attn', ...

Inside the block attention runs on the eager path (softmax(q k^T / sqrt(d)) v, the only one that
materialises the weights); outside it the fused SDPA kernel stays the default. The model is not
changed and its output is the eager path's output (equal to the fused one up to float rounding).

How a model family opts in: its attention module calls `vitkit.layers.record_attention(self, weights)`
on its eager path with the softmax weights (B, heads, N_q, N_k). `vitkit.layers.Attention` (ViT, DeiT
and any family built from it), Swin's `WindowAttention`, CvT's `ConvAttention`, MViT's pooling
attention and ViViT model 4's factorised dot-product attention (two records per block: the space
heads, then the time heads) do. Nothing else is
needed for capture; for the spatial analyses each record also gets:
    - `num_prefix_tokens`: from the nearest enclosing module (or the model) with a
      `num_prefix_tokens` attribute ([CLS], distillation token), else 0;
    - the token grids of queries and keys, inferred from the token counts and the image's aspect
      ratio (None when the count does not factor into such a grid). For video input (B, C, T, H, W)
      only a count equal to the model's spatial patch grid (`grid_size`) counts as a
      grid: per-frame spatial attention gets one, joint space-time and temporal attention do not;
    - for windowed attention (the enclosing block has `window_size` and `shift_size`, as Swin's),
      the window layout, so `AttentionRecord.image_attention()` maps windows back onto the image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers import attention_recorder


@dataclass(frozen=True)
class WindowLayout:
    """How (B * nW, heads, N, N) window attention tiles a (B, H, W) token map: padded to (Hp, Wp) and
    cyclically shifted by `shift` (SW-MSA) before the windows (row-major) were cut."""

    batch: int
    size: tuple[int, int]
    padded: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]

    def token_positions(self) -> torch.Tensor:
        """(nW, N, 2) integer (row, col) of each window token on the unshifted, padded map."""
        Hp, Wp = self.padded
        mh, mw = self.window
        rows = (torch.arange(Hp) + self.shift[0]) % Hp  # shifted row r holds original row r + s
        cols = (torch.arange(Wp) + self.shift[1]) % Wp
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)  # (Hp, Wp, 2)
        grid = grid.view(Hp // mh, mh, Wp // mw, mw, 2).permute(0, 2, 1, 3, 4)
        return grid.reshape(-1, mh * mw, 2)


@dataclass
class AttentionRecord:
    """One attention call: the softmax weights and what is needed to place its tokens on the image."""

    name: str
    weights: torch.Tensor  # (B, heads, N_q, N_k); windowed: (B * nW, heads, N, N)
    image_size: tuple[int, int]  # (H, W) pixels of the input
    num_prefix_tokens: int = 0
    query_grid: tuple[int, int] | None = None
    key_grid: tuple[int, int] | None = None
    window: WindowLayout | None = None

    @property
    def num_heads(self) -> int:
        return self.weights.shape[1]

    def image_attention(self) -> torch.Tensor:
        """Attention between the image's tokens, (B, heads, h w, h w) in row-major grid order, prefix
        tokens dropped. Windowed attention is scattered back onto the whole (unshifted, unpadded)
        map, zero between tokens of different windows."""
        if self.window is None:
            if self.query_grid is None or self.query_grid != self.key_grid:
                raise ValueError(
                    f"{self.name}: queries and keys are not one token grid "
                    f"({self.query_grid} vs {self.key_grid}); use `weights` directly"
                )
            P = self.num_prefix_tokens
            return self.weights[:, :, P:, P:]
        lay = self.window
        (H, W), (Hp, Wp) = lay.size, lay.padded
        pos = lay.token_positions()  # (nW, N, 2)
        flat = pos[..., 0] * Wp + pos[..., 1]  # (nW, N) index on the padded map
        nW, N = flat.shape
        w = self.weights.view(lay.batch, nW, self.num_heads, N, N)
        full = self.weights.new_zeros(lay.batch, self.num_heads, Hp * Wp, Hp * Wp)
        q_idx = flat[:, :, None].expand(nW, N, N).reshape(-1)
        k_idx = flat[:, None, :].expand(nW, N, N).reshape(-1)
        full[:, :, q_idx, k_idx] = w.permute(0, 2, 1, 3, 4).reshape(lay.batch, self.num_heads, -1)
        keep = torch.arange(Hp * Wp).view(Hp, Wp)[:H, :W].reshape(-1)
        return full[:, :, keep][:, :, :, keep]

    def token_centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel (y, x) centres of the query and key tokens, prefix tokens excluded: (h w, 2) each,
        or for windowed attention (nW, N, 2) on the padded, unshifted map (shared by both)."""
        H, W = self.image_size
        if self.window is not None:
            h, w = self.window.size
            pos = self.window.token_positions().float() + 0.5
            xy = pos * torch.tensor([H / h, W / w])
            return xy, xy
        if self.query_grid is None or self.key_grid is None:
            raise ValueError(f"{self.name}: its tokens do not form an image grid (weights {tuple(self.weights.shape)})")
        return _grid_centres(self.query_grid, (H, W)), _grid_centres(self.key_grid, (H, W))


def _grid_centres(grid: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """(h w, 2) pixel centres of an h x w grid of cells covering the image, row-major."""
    (h, w), (H, W) = grid, image_size
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (H / h)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (W / w)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def infer_grid(num_tokens: int, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) grid with h w = num_tokens and h / w closest to the image's H / W, or None."""
    if num_tokens <= 0:
        return None
    H, W = image_size
    h = max(1, round(math.sqrt(num_tokens * H / W)))
    for cand in (h, h - 1, h + 1):
        if cand > 0 and num_tokens % cand == 0:
            w = num_tokens // cand
            if abs(math.log((cand / w) / (H / W))) < 0.5:
                return cand, w
    return None


@dataclass
class AttentionCapture:
    """What `capture_attention` collected; `records` fill in as the model runs."""

    records: list[AttentionRecord] = field(default_factory=list)

    @property
    def attentions(self) -> list[torch.Tensor]:
        return [r.weights for r in self.records]

    def clear(self) -> None:
        self.records.clear()


def _prefix_tokens(model: nn.Module, name: str) -> int:
    """`num_prefix_tokens` of the nearest enclosing module that has one (the model last), else 0."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        value = getattr(model.get_submodule(".".join(parts[:i])), "num_prefix_tokens", None)
        if isinstance(value, int):
            return value
    return 0


@contextlib.contextmanager
def capture_attention(model: nn.Module, detach: bool = True) -> Iterator[AttentionCapture]:
    """Record the attention weights of every opted-in attention module of `model` run in this block
    (see the module docstring). `detach=False` keeps them in the autograd graph (for gradient-based
    attributions). With gradient checkpointing on and autograd enabled a block's attention is
    recorded again when it is recomputed in the backward pass."""
    names = {id(m): n for n, m in model.named_modules()}
    prefix = {id(m): _prefix_tokens(model, n) for n, m in model.named_modules() if n}
    capture = AttentionCapture()
    image_size: list[tuple[int, int]] = []
    video: list[bool] = []
    # the per-frame patch grid: the backbone interface's `grid_size`, or a timm model's `patch_embed.grid_size`
    grid = getattr(model, "grid_size", None) or getattr(getattr(model, "patch_embed", None), "grid_size", None)
    patch_grid = tuple(grid or ())[-2:]
    layouts: dict[int, WindowLayout] = {}
    hooks = []

    def on_model(_module, args):
        if args and torch.is_tensor(args[0]) and args[0].ndim >= 3:
            image_size.append(tuple(args[0].shape[-2:]))
            video.append(args[0].ndim == 5)

    def window_hook(attn: nn.Module):
        def hook(block, args):
            B, H, W = args[0].shape[:3]  # channels-last token map (B, H, W, C)
            # the window and shift this input gets (Swin's 'hf' window rule decides them per input)
            window, shift = (
                block.window_shift(H, W) if hasattr(block, "window_shift") else (block.window_size, block.shift_size)
            )
            mh, mw = window
            layouts[id(attn)] = WindowLayout(
                B, (H, W), (math.ceil(H / mh) * mh, math.ceil(W / mw) * mw), tuple(window), tuple(shift)
            )

        return hook

    hooks.append(model.register_forward_pre_hook(on_model))
    for module in model.modules():
        attn = getattr(module, "attn", None)
        if isinstance(attn, nn.Module) and hasattr(module, "window_size") and hasattr(module, "shift_size"):
            hooks.append(module.register_forward_pre_hook(window_hook(attn)))

    def record(module: nn.Module, weights: torch.Tensor) -> None:
        key = id(module)
        if key not in names:  # another model running in the same block
            return
        size = image_size[-1] if image_size else (0, 0)
        P = prefix.get(key, 0)
        layout = layouts.get(key)
        Nq, Nk = weights.shape[-2:]
        qg = kg = None
        if layout is None and size != (0, 0):
            qg, kg = infer_grid(Nq - P, size), infer_grid(Nk - P, size)
            if video and video[-1]:  # only the per-frame patch grid is an image grid
                qg, kg = (g if g is not None and g == patch_grid else None for g in (qg, kg))
        capture.records.append(
            AttentionRecord(
                names[key],
                weights.detach() if detach else weights,
                size,
                P,
                qg,
                kg,
                layout,
            )
        )

    try:
        with attention_recorder(record):
            yield capture
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def get_attention(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[AttentionRecord]]:
    """Run `model(images)` once and return (its output, the attention records of every layer)."""
    with capture_attention(model) as cap:
        out = model(images)
    if not cap.records:
        raise ValueError(
            f"{type(model).__name__} recorded no attention: its attention modules must call "
            "vitkit.layers.record_attention(self, weights) on their eager path (see vitkit.inspect.capture)"
        )
    return out, cap.records
