"""MSN: Masked Siamese Networks, around any vitkit backbone that can drop patch tokens.

Paper
    Assran et al., "Masked Siamese Networks for Label-Efficient Learning", ECCV 2022
    (arXiv:2204.07141). An anchor view with a random subset of its patches dropped goes through the
    encoder (only the kept tokens are computed), an unmasked target view through a momentum
    (EMA) copy of it; both [CLS] representations are projected, and compared to K learnable
    prototypes by a soft nearest neighbour p = softmax(z . q / tau) (section 3, eq. 1). The anchor
    prediction is trained towards the sharpened target prediction p+ (sharpen(p, T) =
    p^(1/T) / sum p^(1/T)), with the mean-entropy-maximisation regulariser (ME-MAX) on the average
    anchor prediction: loss = mean_i H(p+_i, p_i) - lambda H(mean_i p_i)  (eq. 2).
Reference code
    facebookresearch/msn: `src/losses.py` (`init_msn_loss`: `snn`, `sharpen`, the ME-MAX term
    written as log K - H(mean p), `distributed_sinkhorn` with 3 iterations), `src/msn_train.py`
    (target = imgs[0] through the target encoder, anchors = imgs[1:] with `patch_drop`,
    prototypes uniform(-1/sqrt(d), 1/sqrt(d)) and excluded from weight decay), `src/deit.py` (the
    projection head fc1-bn1-gelu1-fc2-bn2-gelu2-fc3).
Defaults (configs/pretrain/msn_vits16.yaml): 1024 prototypes of dimension 256, projection hidden
    2048 with batch norm, tau = 0.1 for anchors and targets, sharpening T = 0.25 (the target is
    thus a softmax at 0.1 x 0.25 = 0.025), ME-MAX weight 1, Sinkhorn on, patch drop 0.15 (ViT-S/16;
    the paper uses 0.3 for ViT-B/16 and 0.7 for ViT-L/7), 1 random + 10 focal anchor views, EMA
    momentum 0.996 -> 1 (cosine). 1024 prototypes is the ImageNet value; for MNIST-sized data it
    is more than the number of modes but ME-MAX spreads the predictions over them anyway.
Deviations
    - The mask is drawn per sample (MAE-style), MSN's code draws one token subset per batch.
    - ME-MAX and Sinkhorn reduce over all processes only when a process group exists.
The collapse monitor: `feature_std` of the target encoder's features, `target_entropy` (mean
entropy of the sharpened targets; near 0 is healthy, log K would be uniform collapse),
`prototypes_used` (how many prototypes are some target's arg-max; 1 = collapse).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_method
from .base import PretrainMethod, feature_std
from .dino import (
    _img_size,
    _norm_stats,
    _patch_size,
    cosine_momentum,
    ema_update,
    local_view_size,
)
from .multicrop import MultiCrop, msn_view_specs

__all__ = ["MSN", "MSNProjector", "me_max", "msn_loss", "random_keep_indices", "sharpen", "sinkhorn", "snn"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class MSNProjector(nn.Module):
    """MSN's projection head (deit.py, `bottleneck=1`, `use_bn=True`): Linear-BN-GELU-Linear-BN-GELU-Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(in_dim, hidden_dim)),
                    ("bn1", nn.BatchNorm1d(hidden_dim)),
                    ("gelu1", nn.GELU()),
                    ("fc2", nn.Linear(hidden_dim, hidden_dim)),
                    ("bn2", nn.BatchNorm1d(hidden_dim)),
                    ("gelu2", nn.GELU()),
                    ("fc3", nn.Linear(hidden_dim, out_dim)),
                ]
            )
        )
        for m in self.fc.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def snn(query: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """Soft nearest neighbour over prototypes (eq. 1): softmax(cos(query, prototypes) / temperature), (B, K)."""
    return F.softmax(F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature, dim=-1)


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """p^(1/T) renormalised per row (MSN's target sharpening, T = 0.25)."""
    sharp = p ** (1.0 / temperature)
    return sharp / sharp.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sinkhorn(q: Tensor, num_iters: int = 3) -> Tensor:
    """Sinkhorn-Knopp balancing of assignments q (B, K) (MSN's `distributed_sinkhorn`, SwAV's algorithm):
    alternately every prototype gets total mass 1/K and every sample 1/B; rows come back summing to 1,
    columns to about B/K. B counts the samples of every process when a process group exists."""
    q = q.T.clone()  # (K, B)
    k = q.shape[0]
    b = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if _distributed():
        dist.all_reduce(b)
        dist.all_reduce(total)
    q /= total
    for _ in range(num_iters):
        rows = q.sum(dim=1, keepdim=True)
        if _distributed():
            dist.all_reduce(rows)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.T


def me_max(probs: Tensor) -> Tensor:
    """ME-MAX regulariser log K - H(mean_i p_i) >= 0 (0 when the average prediction is uniform).

    The mean runs over all processes (a differentiable all-reduce) when a process group exists."""
    avg = probs.mean(dim=0)
    if _distributed():
        from torch.distributed.nn.functional import all_reduce

        avg = all_reduce(avg) / dist.get_world_size()
    return (avg * torch.log(avg.clamp_min(1e-30))).sum() + math.log(avg.numel())


def msn_loss(
    anchors: Tensor,
    targets: Tensor,
    prototypes: Tensor,
    temperature: float = 0.1,
    sharpen_temperature: float = 0.25,
    me_max_weight: float = 1.0,
    entropy_weight: float = 0.0,
    use_sinkhorn: bool = True,
) -> dict[str, Tensor]:
    """MSN's objective (losses.py). `anchors` (V*B, d): V anchor views of the B images, view-major;
    `targets` (B, d) from the target encoder. Returns loss, its parts and the targets' statistics."""
    b = targets.shape[0]
    if anchors.shape[0] % b:
        raise ValueError(f"{anchors.shape[0]} anchor rows are not a whole number of views of {b} targets")
    probs = snn(anchors, prototypes, temperature)  # step 1: anchor predictions
    with torch.no_grad():  # step 2: sharpened (and balanced) targets
        t = sharpen(snn(targets, prototypes, temperature), sharpen_temperature)
        if use_sinkhorn:
            t = sinkhorn(t)
        t = t.repeat(anchors.shape[0] // b, 1)
    ce = torch.sum(-t * torch.log(probs.clamp_min(1e-30)), dim=1).mean()  # step 3: H(p+, p)
    reg = me_max(probs) if me_max_weight else probs.new_zeros(())  # step 4
    ent = torch.sum(-probs * torch.log(probs.clamp_min(1e-30)), dim=1).mean()
    loss = ce + me_max_weight * reg + (entropy_weight * ent if entropy_weight else 0.0)
    with torch.no_grad():
        t_ent = torch.sum(-t * torch.log(t.clamp_min(1e-30)), dim=1).mean()
        used = torch.tensor(float(t[:b].argmax(dim=1).unique().numel()), device=t.device)
    return {
        "loss": loss,
        "ce": ce.detach(),
        "me_max": reg.detach(),
        "anchor_entropy": ent.detach(),
        "target_entropy": t_ent,
        "prototypes_used": used,
    }


def random_keep_indices(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample random patches to keep: (B, K) sorted indices, K = floor(N (1 - mask_ratio)) >= 1
    (MSN's `patch_drop` rule); the other N - K patches are dropped before the encoder."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1) (MSN ViT-S/16: 0.15)")
    keep = max(1, math.floor(num_patches * (1.0 - mask_ratio) + 1e-9))
    noise = torch.rand(batch, num_patches, generator=generator)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values.to(device)


class MSN(PretrainMethod):
    """Encoder + projector + prototypes (trained) and their momentum target encoder (EMA)."""

    name = "msn"

    def __init__(
        self,
        backbone: nn.Module,
        num_prototypes: int = 1024,
        out_dim: int = 256,
        hidden_dim: int = 2048,
        mask_ratio: float = 0.15,
        num_focal: int = 10,
        rand_scale: Sequence[float] = (0.3, 1.0),
        focal_scale: Sequence[float] = (0.05, 0.3),
        focal_size: int | None = None,
        hflip: float = 0.5,
        jitter_strength: float = 0.5,
        temperature: float = 0.1,
        sharpen_temperature: float = 0.25,
        me_max_weight: float = 1.0,
        entropy_weight: float = 0.0,
        use_sinkhorn: bool = True,
        momentum: float = 0.996,
        img_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_prototypes < 2:
            raise ValueError(f"num_prototypes={num_prototypes} must be >= 2 (MSN: 1024)")
        if temperature <= 0 or sharpen_temperature <= 0:
            raise ValueError("temperature and sharpen_temperature must be > 0 (MSN: 0.1 and 0.25)")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1] (MSN: 0.996)")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1) (MSN ViT-S/16: 0.15)")
        if mask_ratio > 0 and not getattr(backbone, "accepts_keep_indices", False):
            raise ValueError(
                f"{type(backbone).__name__}.forward_features cannot drop tokens (it takes no keep_indices: "
                f"accepts_keep_indices is off): use a ViT backbone, or mask_ratio=0"
            )
        if not getattr(backbone, "num_prefix_tokens", 0):
            raise ValueError(
                f"MSN uses the [CLS] token as the representation and {type(backbone).__name__} has none "
                f"(num_prefix_tokens=0): build a ViT backbone with class_token=True"
            )
        embed_dim = getattr(backbone, "num_features", None) or backbone.embed_dim
        self.backbone = backbone
        self.projector = MSNProjector(embed_dim, hidden_dim, out_dim)
        bound = (1.0 / out_dim) ** 0.5
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, out_dim).uniform_(-bound, bound))
        self.target = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.mask_ratio = mask_ratio
        self.loss_options = {
            "temperature": temperature,
            "sharpen_temperature": sharpen_temperature,
            "me_max_weight": me_max_weight,
            "entropy_weight": entropy_weight,
            "use_sinkhorn": use_sinkhorn,
        }
        self.base_momentum, self.momentum = momentum, momentum
        size = img_size or _img_size(backbone)
        specs = msn_view_specs(
            size,
            num_focal,
            _patch_size(backbone),
            tuple(rand_scale),
            tuple(focal_scale),
            local_view_size(backbone, size, focal_size, 96),
            hflip,
            jitter_strength,
        )
        self._views = {"specs": specs, "mean": mean, "std": std, "generator": generator}
        self.multicrop: MultiCrop | None = None
        self.target.eval()

    def train(self, mode: bool = True) -> MSN:
        super().train(mode)
        self.target.eval()  # no stochastic depth in the target; its projector keeps batch statistics as in MSN
        return self

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"prototypes"}  # msn_train.py: prototypes are WD_exclude

    def make_views(self, images: Tensor) -> list[Tensor]:
        if self.multicrop is None:
            mean, std = _norm_stats(self.backbone, self._views["mean"], self._views["std"])
            self.multicrop = MultiCrop(self._views["specs"], mean, std, self._views["generator"])
        return self.multicrop(images)

    def encode_masked(self, x: Tensor) -> Tensor:
        """[CLS] features of x with `mask_ratio` of each image's patches dropped before the encoder."""
        if self.mask_ratio == 0:
            return self.backbone.forward_features(x)[:, 0]
        p = _patch_size(self.backbone)
        n = (x.shape[-2] // p) * (x.shape[-1] // p)
        keep = random_keep_indices(x.shape[0], n, self.mask_ratio, x.device, self._views["generator"])
        return self.backbone.forward_features(x, keep_indices=keep)[:, 0]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        views = self.make_views(images)
        target_view, anchor_views = views[0], views[1:]
        with torch.no_grad():
            t_feats = self.target.forward_features(target_view)[:, 0]
            t_proj = self.target_projector(t_feats)
        # anchors: one encoder call per run of same-size views (the random view, then the focal views)
        feats, i = [], 0
        while i < len(anchor_views):
            j = i
            while j < len(anchor_views) and anchor_views[j].shape[-2:] == anchor_views[i].shape[-2:]:
                j += 1
            feats.append(self.encode_masked(torch.cat(anchor_views[i:j])))
            i = j
        anchors = self.projector(torch.cat(feats))
        out = msn_loss(anchors.float(), t_proj.float(), self.prototypes.float(), **self.loss_options)
        out["feature_std"] = feature_std(t_feats)
        out["momentum"] = images.new_zeros(()) + self.momentum
        return out

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA of encoder and projector into the target (cosine momentum 0.996 -> 1)."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.target, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The target encoder (MSN evaluates and releases it)."""
        return {k: v.detach().clone() for k, v in self.target.state_dict().items()}


@register_method("msn")
def msn(backbone: nn.Module, **options) -> MSN:
    """`vitkit pretrain msn`: MSN around `backbone` (options: the `MSN` constructor's)."""
    return MSN(backbone, **options)
