"""Position-embedding resampling: the ViT paper's "2D interpolation of the pre-trained position
embeddings, according to their location in the original image" (section 3.2), used to fine-tune
or run at a resolution other than the one a model was trained at.

Libraries differ here and the results differ by up to ~1.5 in value going from a 14x14 to a 24x24
grid: timm uses bicubic with antialias, Hugging Face plain bicubic (for bicubic, antialias
changes the result even when enlarging: torch then uses PIL's kernel, a = -0.5 instead of -0.75,
renormalised at the edges), DINO bicubic with a +0.1 offset on the scale factor, torchvision bilinear with
align_corners=True, the original JAX code scipy's linear `zoom`. vitkit's default is timm's
(bicubic, antialias=True, align_corners=False), so timm checkpoints load into vitkit exactly as
they load into timm; models built from a Hugging Face config use HF's rule (antialias off), so
they match HF's `interpolate_pos_encoding`. Both knobs are config fields. The prefix tokens ([CLS], distillation) have no
position on the grid and are carried over unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(
    posemb: torch.Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample (1, prefix + old_h*old_w, D) position embeddings to a (new_h, new_w) grid.

    `old_size` defaults to a square grid. Returns (1, prefix + new_h*new_w, D) in the input dtype.
    """
    n_grid = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(n_grid)
        if side * side != n_grid:
            raise ValueError(
                f"cannot infer the grid of {n_grid} position embeddings (not a square); pass old_size=(h, w)"
            )
        old_size = (side, side)
    if old_size[0] * old_size[1] != n_grid:
        raise ValueError(f"old_size {old_size} does not match {n_grid} grid position embeddings")
    new_size = (int(new_size[0]), int(new_size[1]))
    if tuple(old_size) == new_size:
        return posemb

    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim, dtype = grid.shape[-1], grid.dtype
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_size, mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
