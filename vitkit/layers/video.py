"""Pieces the video families share (ViViT, TimeSformer, MViT): tubelet embedding, space-time
position embeddings, and inflation of image-model weights to video.

Clips are (B, C, T, H, W), the layout of `nn.Conv3d` (Hugging Face's video models take
(B, T, C, H, W); the converters and the data pipeline say where they transpose).

Tubelet embedding (ViViT, Arnab et al. 2021, section 3.2 "Tubelet embedding", fig. 3): a 3-D
convolution with kernel = stride = (t, h, w) turns a clip into nt * nh * nw tokens, each covering
t frames and an h x w patch. With t = 1 it is ViT's patch embedding applied frame by frame
(TimeSformer); MViT's patchify conv overlaps (kernel 3x7x7, stride 2x4x4, padding 1x3x3).

Inflation (ViViT section 3.4, "Initialisation"): a 2-D patch filter E_image (D, C, h, w) becomes
a 3-D filter of temporal size t either by repeating it over time and dividing by t ("filter
inflation", I3D: E = [E_image, ..., E_image] / t, so a static clip gives the image features) or
by putting it at the central frame and zeros elsewhere ("central frame initialisation",
E = [0, ..., E_image, ..., 0]). Position embeddings of an image model are repeated over time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .tracing import is_fx_tracing

__all__ = ["TubeletEmbed", "inflate_patch_weight", "sincos_pos_embed_1d", "sincos_pos_embed_3d", "to_3tuple"]


def to_3tuple(x: int | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 3:
            raise ValueError(f"expected an int or a triple (time, height, width), got {x!r}")
        return int(x[0]), int(x[1]), int(x[2])
    return int(x), int(x), int(x)


class TubeletEmbed(nn.Module):
    """(B, C, T, H, W) clip -> (B, N, D) tokens in (t, h, w) order, N = nt * nh * nw.

    `kernel_size` = `stride` (non-overlapping tubelets) unless given separately (MViT)."""

    def __init__(
        self,
        num_frames: int,
        img_size: tuple[int, int],
        kernel_size: tuple[int, int, int],
        in_chans: int,
        embed_dim: int,
        stride: tuple[int, int, int] | None = None,
        padding: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        super().__init__()
        self.kernel_size = to_3tuple(kernel_size)
        self.stride = to_3tuple(stride) if stride is not None else self.kernel_size
        self.padding = to_3tuple(padding)
        self.num_frames = num_frames
        self.img_size = img_size
        self.in_chans = in_chans
        if stride is None:  # non-overlapping: every frame and pixel must fall in a tubelet
            for size, k, what in zip((num_frames, *img_size), self.kernel_size, ("num_frames", "height", "width")):
                if size % k:
                    raise ValueError(
                        f"clip {what} {size} is not divisible by the tubelet size {k}: choose a {what} that "
                        f"is a multiple of {k} (for example {max(k, size // k * k)})"
                    )
        self.grid_size = self.feat_size((num_frames, *img_size))
        self.num_patches = math.prod(self.grid_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, self.kernel_size, stride=self.stride, padding=self.padding)

    def feat_size(self, thw: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(thw, self.kernel_size, self.stride, self.padding))

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(
                f"expected clips of shape (B, C, T, H, W), got a tensor of shape {tuple(x.shape)}"
                + (": add a time axis (x.unsqueeze(2)) for single images" if x.ndim == 4 else "")
            )
        _, C, T, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(
                f"the model expects {self.in_chans} input channel(s) but the clips have {C}: clips are "
                f"(B, C, T, H, W); if yours are (B, T, C, H, W) (Hugging Face's layout) use x.transpose(1, 2)"
            )
        if (T, H, W) != (self.num_frames, *self.img_size):
            raise ValueError(
                f"clip size {T} frames x {H}x{W} does not match the model's {self.num_frames} frames x "
                f"{self.img_size[0]}x{self.img_size[1]}: sample {self.num_frames} frames and resize, or create the "
                f"model with num_frames={T}, img_size=({H}, {W})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fx_tracing():  # shapes are symbolic while torch.fx traces (vitkit.layers.tracing)
            self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, t, h, w) -> (B, t*h*w, D)


def inflate_patch_weight(weight: torch.Tensor, t: int, mode: str = "average") -> torch.Tensor:
    """A 2-D patch filter (D, C, h, w) -> a 3-D tubelet filter (D, C, t, h, w) (ViViT section 3.4).

    'average': repeated over the t frames and divided by t (filter inflation: a static clip gives
    exactly the image model's patch embedding); 'central': the image filter at the central frame
    (index t // 2), zeros elsewhere."""
    if weight.ndim != 4:
        raise ValueError(f"expected a 2-D conv weight (D, C, h, w), got shape {tuple(weight.shape)}")
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    if mode == "central":
        out = weight.new_zeros(weight.shape[0], weight.shape[1], t, *weight.shape[2:])
        out[:, :, t // 2] = weight
        return out
    raise ValueError(f"inflation mode must be 'average' or 'central', got {mode!r}")


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sin-cos embedding (Vaswani et al. 2017): (n,) positions -> (n, dim), [sin | cos]."""
    if dim % 2:
        raise ValueError(f"sin-cos embeddings need an even dimension, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int], temperature: float = 10000.0) -> torch.Tensor:
    """Fixed space-time sin-cos embeddings (n_t * n_h * n_w, dim) in (t, h, w) token order.

    The channels are split as in MAE-ST (Feichtenhofer et al. 2022): a quarter encodes time, the rest
    is the 2-D spatial embedding of MAE (half for h, half for w). `dim` must be divisible by 16."""
    if dim % 16:
        raise ValueError(f"3-D sin-cos position embeddings need embed_dim divisible by 16, got {dim}")
    nt, nh, nw = grid
    d_t, d_s = dim // 4, dim * 3 // 8
    t = sincos_pos_embed_1d(d_t, torch.arange(nt), temperature)  # (nt, d_t)
    h = sincos_pos_embed_1d(d_s, torch.arange(nh), temperature)  # (nh, d_s)
    w = sincos_pos_embed_1d(d_s, torch.arange(nw), temperature)
    t = t[:, None, None].expand(nt, nh, nw, d_t)
    h = h[None, :, None].expand(nt, nh, nw, d_s)
    w = w[None, None, :].expand(nt, nh, nw, d_s)
    return torch.cat([t, h, w], dim=-1).reshape(nt * nh * nw, dim)
