"""Masked patch prediction: the ViT paper's self-supervised objective (BERT's masked language
modelling for patches).

Paper
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, section 4.6 and appendix B.1.2:
    "we corrupt 50% of patch embeddings by either replacing their embeddings with a learnable
    [mask] embedding (80%), a random other patch embedding (10%) or just keeping them as is (10%)
    ... we predict the 3-bit, mean color (i.e., 512 colors in total) of every corrupted patch".
    (Their ViT-B/16 gains 2% on ImageNet over training from scratch, 4% behind supervised
    pre-training.)
Deviations / choices
    - Exactly int(0.5 N) patches per image are corrupted (argsort of noise, as MAE's masking),
      rather than each patch independently with probability 0.5; the 80/10/10 split is drawn per
      corrupted patch. The "random other patch embedding" is a patch embedding drawn uniformly
      from the whole batch (the paper does not say from where; BERT draws from the vocabulary).
    - Grey (1-channel) images: the target is the 3-bit mean intensity, 8 classes (the paper's
      rule per channel; 2^(3C) classes in general: 512 for RGB).
    - The colour is taken from the un-normalised pixels in [0, 1]: the mean and std that the
      images were normalised with come from the backbone's `pretrained_cfg` (the pre-training
      loop sets them to the dataset's), or the `mean`/`std` options.
Relation to BEiT (Bao et al. 2022): BEiT also corrupts patches (blockwise, ~40%) and predicts a
class per masked patch, but its classes are the 8192 visual tokens of a pre-trained dVAE
tokenizer (DALL-E's), a far richer target than 512 mean colours. vitkit does not implement the
dVAE tokenizer; this module is the ViT paper's variant.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.vit import VisionTransformer
from . import register_method
from .base import PretrainMethod, feature_std


def mean_color_targets(pixels: Tensor, patch_size: int | tuple[int, int], bits: int = 3) -> Tensor:
    """(B, C, H, W) pixels in [0, 1] -> (B, N) class of each patch's mean colour, quantised to
    `bits` per channel: sum_c q_c * (2^bits)^(C - 1 - c) with q_c = floor(mean_c * 2^bits)."""
    levels = 2**bits
    mean = F.avg_pool2d(pixels.float(), patch_size)  # (B, C, h, w)
    q = (mean * levels).floor().clamp_(0, levels - 1).long()
    weights = levels ** torch.arange(q.shape[1] - 1, -1, -1, device=q.device)  # first channel most significant
    return (q * weights.view(1, -1, 1, 1)).sum(1).flatten(1)  # (B, N)


class MaskedPatchPrediction(PretrainMethod):
    """Corrupt half of the patch embeddings, predict the quantised mean colour of each corrupted patch."""

    name = "mpp"

    def __init__(
        self,
        backbone: VisionTransformer,
        mask_prob: float = 0.5,
        replace_mask: float = 0.8,
        replace_random: float = 0.1,
        bits: int = 3,
        mean: Any = None,
        std: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, VisionTransformer) or backbone.config.hybrid_layers or backbone.dynamic_img_size:
            raise ValueError(
                "masked patch prediction needs a plain vitkit ViT backbone (vit_* / deit_*, fixed "
                f"img_size): it replaces patch embeddings; got {type(backbone).__name__}"
            )
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if replace_mask < 0 or replace_random < 0 or replace_mask + replace_random > 1:
            raise ValueError(
                f"replace_mask ({replace_mask}) and replace_random ({replace_random}) must be >= 0 "
                f"with a sum <= 1 (the rest is kept unchanged)"
            )
        self.backbone = backbone
        self.mask_prob, self.replace_mask, self.replace_random, self.bits = (
            mask_prob,
            replace_mask,
            replace_random,
            bits,
        )
        in_chans = backbone.config.in_chans
        cfg = backbone.pretrained_cfg
        mean = mean if mean is not None else cfg.get("mean", (0.5,) * in_chans)
        std = std if std is not None else cfg.get("std", (0.5,) * in_chans)
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean/std need {in_chans} values (one per channel), got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.num_classes = (2**bits) ** in_chans  # 512 for RGB, 8 for grey
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim))
        self.head = nn.Linear(backbone.embed_dim, self.num_classes)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    def corrupt(self, tokens: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(B, N, D) patch embeddings -> (corrupted embeddings, bool mask (B, N) of the corrupted)."""
        B, N, D = tokens.shape
        dev = tokens.device
        n_corrupt = max(1, int(N * self.mask_prob))
        noise = torch.rand(B, N, generator=generator).to(dev)
        rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
        corrupted = rank < n_corrupt  # exactly n_corrupt per image
        u = torch.rand(B, N, generator=generator).to(dev)
        to_mask = corrupted & (u < self.replace_mask)
        to_random = corrupted & (u >= self.replace_mask) & (u < self.replace_mask + self.replace_random)
        source = torch.randint(0, B * N, (B, N), generator=generator).to(dev)
        random_tokens = tokens.reshape(B * N, D)[source]  # (B, N, D) patch embeddings from anywhere in the batch
        out = torch.where(to_random.unsqueeze(-1), random_tokens, tokens)
        out = torch.where(to_mask.unsqueeze(-1), self.mask_token.to(out.dtype).expand(B, N, D), out)
        return out, corrupted

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        bb = self.backbone
        targets = mean_color_targets(images * self.std + self.mean, bb.patch_size, self.bits)
        tokens, corrupted = self.corrupt(bb.patch_embed(images), generator)
        out = bb.forward_tokens(tokens)[:, bb.num_prefix_tokens :]  # (B, N, D)
        loss, acc = self.loss(out, targets, corrupted)
        return {"loss": loss, "acc": acc, "feature_std": feature_std(out.detach())}

    def loss(self, out: Tensor, targets: Tensor, corrupted: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the colour classes over the corrupted patches only (like BERT's MLM);
        -> (loss, accuracy in % on those patches)."""
        logits = self.head(out[corrupted])
        target = targets[corrupted]
        loss = F.cross_entropy(logits.float(), target)
        return loss, (logits.detach().argmax(-1) == target).float().mean() * 100


@register_method("mpp")
def mpp(backbone: VisionTransformer, **options: Any) -> MaskedPatchPrediction:
    """`vitkit pretrain mpp` (options: mask_prob, replace_mask, replace_random, bits, mean, std)."""
    return MaskedPatchPrediction(backbone, **options)
