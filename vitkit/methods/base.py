"""The self-supervised pre-training interface shared by MAE, masked patch prediction, DINO and MSN.

A method is an `nn.Module` that wraps a vitkit backbone (any model with the public backbone
interface, `vitkit.models.Backbone`: `forward_features`, `forward_head`, `num_prefix_tokens`,
`num_features`, `patch_size`, `no_weight_decay`, `group_matcher`, `pretrained_cfg`, ...) and
turns a batch of images into a loss. It makes its own views or masks from the batch, on the
tensor and batched (no per-sample Python, no data-loader changes), so one generic loop
(`vitkit/train/pretrain.py`) trains every method:

    method = create_method("mae", backbone, mask_ratio=0.75)      # vitkit/methods/__init__.py
    for step, images in ...:                                      # images: (B, C, H, W), normalised
        out = method(images)                                      # {"loss": scalar, ...detached logs}
        out["loss"].backward(); optimizer.step()
        method.on_step_end(step, total_steps)                     # EMA / momentum / temperatures
    method.encoder_state_dict()                                   # -> `vitkit train --finetune`

Contract (what the loop relies on):
    - `forward(images)` returns a dict with a scalar `"loss"` that carries the gradient; every other
      entry is a detached scalar tensor that the loop averages over the epoch and logs (use
      `feature_std` below for the collapse monitor, under the key `"feature_std"`).
    - `backbone` is the encoder whose weights fine-tuning takes; `encoder_state_dict()` returns its
      state dict (timm/vitkit keys, loadable with `create_model(name, pretrained=...)`).
    - `on_step_end(step, total_steps)` runs after each optimizer step (0-based `step`) on the
      unwrapped module (not through DDP); put momentum-teacher updates and schedules there.
    - Parameters that must not be trained (a momentum teacher, fixed sin-cos tables) have
      `requires_grad=False`; the loop's optimizer takes only trainable ones, and excludes from
      weight decay the 1-D parameters and the names `no_weight_decay()` returns (default: the
      backbone's names, prefixed with `backbone.`).
    - Under `torchrun` the loop wraps the method in DistributedDataParallel; a method may call
      `torch.distributed` only when `torch.distributed.is_initialized()` (e.g. DINO's centre).
    - Factories registered with `register_method` take the backbone first, then keyword options
      (from a recipe's `method:` mapping): `factory(backbone, **options) -> PretrainMethod`.
    - Before building the method the loop sets `backbone.pretrained_cfg["mean"/"std"]` to the
      normalisation of the images it will pass, so a method can undo it (colour targets, colour
      jitter); the backbone is built with `num_classes=0`.
    - Optional hooks the loop calls when present: `save_pretrained(dir)` (the whole method as a
      vitkit model directory, MAE) and `save_figure(images, path)` (MAE's reconstructions).
Optional parts of the backbone interface that methods may use (vitkit ViTs have them):
    - `forward_features(x, keep_indices=(B, K))`, where `accepts_keep_indices` is true, encodes only
      K patches per image (after adding position embeddings; prefix tokens are kept): MAE's visible
      patches, MSN's masked anchors;
    - `patch_embed(x)` and `forward_tokens(patch_embeddings, keep_indices=None)` run the rest of the
      model on patch embeddings the method altered (masked patch prediction's corrupted embeddings).
Methods read no private attribute of the backbone (tests/test_layering.py checks it).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PretrainMethod(nn.Module):
    """A self-supervised method wrapping a vitkit backbone (any model with the backbone interface)."""

    name: ClassVar[str]
    backbone: nn.Module  # the encoder whose weights fine-tuning takes

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) normalised images -> {"loss": scalar with grad, other detached scalar logs}."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(images) -> dict with 'loss'")

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step: momentum/EMA/temperature schedules. Default: nothing."""

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights (vitkit/timm keys), for `vitkit train --finetune`."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (besides all 1-D parameters)."""
        skip = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        prefix = next((n for n, m in self.named_children() if m is self.backbone), "backbone")
        return {f"{prefix}.{n}" for n in skip}


@torch.no_grad()
def feature_std(features: Tensor) -> Tensor:
    """Collapse monitor: the mean over dimensions of the per-dimension standard deviation across
    the batch of L2-normalised features (SimSiam, Chen & He 2021, section 4.1).

    Collapsed features (every image mapped to the same vector) give 0; features spread uniformly
    on the unit sphere give about 1/sqrt(D). `features`: (B, D), or (B, N, D) tokens, which are
    averaged over N first. Returns a detached scalar."""
    if features.ndim == 3:
        features = features.mean(dim=1)
    if features.ndim != 2:
        raise ValueError(f"feature_std expects (B, D) or (B, N, D) features, got shape {tuple(features.shape)}")
    if features.shape[0] < 2:
        return features.new_zeros(())
    z = F.normalize(features.float(), dim=-1)
    return z.std(dim=0).mean()
