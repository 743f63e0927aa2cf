"""Image -> sequence of patch embeddings: a conv with kernel = stride = patch size (the paper's
"linear projection of flattened patches", written as a conv so weights load as timm's `patch_embed.proj`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tracing import is_fx_tracing


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair (height, width), got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


def resample_patch_embed(
    weight: torch.Tensor, new_size: tuple[int, int], interpolation: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """A (D, C, p, p) patch-projection kernel for another patch size, as FlexiViT (Beyer et al. 2023) and
    timm's `resample_patch_embed`: the pseudo-inverse of resizing a patch, so that a resized image
    patch projected with the new kernel gives the old kernel's projection of the original patch."""
    old = tuple(weight.shape[-2:])
    new = to_2tuple(new_size)
    if old == new:
        return weight
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, device=weight.device, dtype=torch.float32).reshape(n_old, 1, *old)
    resize = F.interpolate(basis, size=new, mode=interpolation, antialias=antialias, align_corners=False)
    resize = resize.squeeze(1).permute(1, 2, 0).reshape(new[0] * new[1], n_old)  # (new pixels, old pixels)
    pinv = torch.linalg.pinv(resize)  # (old pixels, new pixels)
    d, c = weight.shape[:2]
    out = weight.reshape(d, c, n_old).float() @ pinv
    return out.reshape(d, c, *new).to(weight.dtype)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D), or (B, H/p, W/p, D) when `flatten=False` (dynamic image size)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        flatten: bool = True,
        strict_img_size: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self._set_img_size(img_size)
        self.in_chans = in_chans
        self.flatten = flatten
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def _set_img_size(self, img_size: int | tuple[int, int]) -> None:
        img_size = to_2tuple(img_size)
        for s, p, what in zip(img_size, self.patch_size, ("height", "width")):
            if s % p != 0:
                raise ValueError(
                    f"image {what} {s} is not divisible by the patch size {p}: choose an img_size that is a "
                    f"multiple of {p} (for example {max(p, s // p * p)})"
                )
        self.img_size = img_size
        self.grid_size = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def set_input_size(
        self, img_size: int | tuple[int, int] | None = None, patch_size: int | tuple[int, int] | None = None
    ) -> None:
        """timm's `PatchEmbed.set_input_size`: another image size (the grid follows) and/or patch size (the
        projection kernel is resampled by `resample_patch_embed`, its bias kept)."""
        new_patch = None if patch_size is None else to_2tuple(patch_size)
        if new_patch is not None and new_patch != self.patch_size:
            old_proj, old_patch = self.proj, self.patch_size
            self.patch_size = new_patch
            try:
                self._set_img_size(self.img_size if img_size is None else img_size)
            except ValueError:
                self.patch_size = old_patch
                raise
            w = old_proj.weight
            proj = nn.Conv2d(
                old_proj.in_channels,
                old_proj.out_channels,
                kernel_size=new_patch,
                stride=new_patch,
                bias=old_proj.bias is not None,
                device=w.device,
                dtype=w.dtype,
            )
            with torch.no_grad():
                proj.weight.copy_(resample_patch_embed(w.detach(), new_patch))
                if old_proj.bias is not None:
                    proj.bias.copy_(old_proj.bias)
            proj.weight.requires_grad_(w.requires_grad)
            if proj.bias is not None:
                proj.bias.requires_grad_(old_proj.bias.requires_grad)
            self.proj = proj.train(old_proj.training)
        elif img_size is not None:
            self._set_img_size(img_size)

    def feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != self.in_chans:
            raise ValueError(
                f"the model expects {self.in_chans} input channel(s) but the images have {C}: create the model "
                f"with in_chans={C} or convert the images (e.g. grayscale -> RGB by repeating the channel)"
            )
        if self.strict_img_size and (H, W) != self.img_size:
            raise ValueError(
                f"input size ({H}x{W}) does not match the model's img_size {self.img_size[0]}x{self.img_size[1]}: "
                f"resize the images, create the model with img_size=({H}, {W}) (position embeddings are "
                f"resampled when loading weights), or pass dynamic_img_size=True"
            )
        if H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(
                f"input size ({H}x{W}) is not divisible by the patch size {self.patch_size[0]}x{self.patch_size[1]}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fx_tracing():  # fx: shapes are symbolic, the check cannot run (see layers/tracing.py)
            self.check_input(x)
        x = self.proj(x)  # (B, D, H/p, W/p)
        if self.flatten:
            return x.flatten(2).transpose(1, 2)  # (B, N, D)
        return x.permute(0, 2, 3, 1)  # (B, H/p, W/p, D)
