"""Masked autoencoders (MAE) as a pre-training method: `vitkit pretrain mae`.

Paper
    He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision Learners",
    CVPR 2022 (arXiv:2111.06377).

The model (encoder + decoder, masking, loss, the `mae_vit_*` names, the reconstruction figure)
lives in `vitkit/models/mae.py`, so `create_model` and `from_pretrained` build it without the
training code. This module adds the pre-training method interface (vitkit/methods/base.py) to it:
`MAEMethod` reports the collapse monitor `feature_std` with the loss, and the factory registered
as `mae` wraps any plain vitkit ViT. The model's public names are re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.mae import (
    MAEConfig,
    MaskedAutoencoder,
    check_backbone,
    patchify,
    plot_reconstruction,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)
from ..models.vit import VisionTransformer
from . import register_method
from .base import PretrainMethod, feature_std

__all__ = [
    "MAEConfig",
    "MAEMethod",
    "MaskedAutoencoder",
    "mae",
    "patchify",
    "plot_reconstruction",
    "random_masking",
    "sincos_pos_embed_2d",
    "unpatchify",
]


class MAEMethod(MaskedAutoencoder, PretrainMethod):
    """The MAE model as a pre-training method: `forward` adds `feature_std` of the encoded visible
    patch tokens to the loss. It saves as the `mae` model family (`save_pretrained`), so
    `from_pretrained` gives back a `MaskedAutoencoder` with the same weights."""

    name = "mae"

    def forward(
        self, images: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        loss, _, _, latent = self.forward_mae(images, noise, generator)
        P = self.num_prefix_tokens
        return {"loss": loss, "feature_std": feature_std(latent[:, P:] if latent.shape[1] > P else latent)}


@register_method("mae")
def mae(backbone: VisionTransformer, **options: Any) -> MAEMethod:
    """`vitkit pretrain mae`: MAE around a ViT backbone, re-initialised the MAE way
    (options: mask_ratio, norm_pix_loss, decoder_embed_dim, decoder_depth, decoder_num_heads, ...).

    The decoder defaults to the paper's (8 blocks of width 512) for backbones of width >= 384; a
    narrower backbone (the CPU-size micro models) gets 2 blocks of its own width, so the decoder
    stays "lightweight" relative to the encoder as the paper intends (section 3)."""
    check_backbone(backbone)
    if backbone.embed_dim < 384:
        width = backbone.embed_dim
        options = {
            "decoder_embed_dim": width,
            "decoder_depth": 2,
            "decoder_num_heads": max(1, width // 16),
            "decoder_mlp_ratio": backbone.config.mlp_ratio,
            **options,
        }
    return MAEMethod.from_backbone(backbone, **options)
