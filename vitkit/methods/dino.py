"""DINO: self-distillation with no labels, around any vitkit backbone.

Paper
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (arXiv:2104.14294). A student g_s and a teacher g_t (same architecture + DINO head) see
    different crops; the student is trained to match the teacher's sharpened, centred output
    distribution, eq. 2-3: min_s sum_{x in {x1g, x2g}} sum_{x' in V, x' != x} H(P_t(x), P_s(x')),
    with P(x) = softmax(g(x) / tau). The teacher is an exponential moving average of the student
    (section 3.1, lambda following a cosine schedule from 0.996 to 1), its output is centred with
    a running mean c <- m c + (1 - m) mean(g_t) (eq. 4, m = 0.9) and sharpened by a low temperature
    (tau_t warmed up linearly 0.04 -> 0.07 over the first 30 of 100 epochs; tau_s = 0.1).
Reference code
    facebookresearch/dino: `vision_transformer.py` (`DINOHead`), `main_dino.py` (`DINOLoss`,
    `cosine_scheduler`, the momentum update, `cancel_gradients_last_layer`), `utils.py`
    (`MultiCropWrapper`: crops of one resolution go through the backbone together).
Deviations
    - Schedules are per optimizer step and given as fractions of the run (the loop calls
      `on_step_end(step, total_steps)`): `teacher_temp_warmup=0.3` is DINO's 30 of 100 epochs and
      `freeze_last_layer=0.01` its 1 of 100 epochs; DINO steps the temperature once per epoch.
    - Freezing the last layer multiplies its gradient by 0 in the graph instead of setting
      `p.grad = None` after backward, so DistributedDataParallel sees every parameter used. With
      the weight norm's g fixed to 1, weight decay on v changes no output, so the two agree.
    - The centre is all-reduced only when a process group exists (DINO assumes one).
    - The weight norm is `torch.nn.utils.parametrizations.weight_norm`, so the last layer's keys
      are `parametrizations.weight.original0` (g) / `original1` (v), not `weight_g` / `weight_v`.
The collapse monitor (paper section 5.3, fig. 7): `teacher_entropy` = mean H(P_t) (log K under a
uniform collapse, 0 under a one-hot collapse), `kl` = mean KL(P_t || P_s) (0 under any collapse),
and `feature_std` of the teacher's backbone features (0 when every image maps to one point).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_method
from .base import PretrainMethod, feature_std
from .multicrop import MultiCrop, dino_view_specs, view_size

__all__ = [
    "DINO",
    "DINOHead",
    "DINOLoss",
    "cls_attention_maps",
    "cosine_momentum",
    "ema_update",
    "plot_cls_attention",
    "teacher_temperature",
]


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a bottleneck, L2 normalisation, then a
    weight-normalised linear layer without bias whose norm g is fixed to 1 (`norm_last_layer`).

    On ViT-S (in_dim 384) with the defaults it has 22,352,128 parameters (counting g), of which
    22,286,592 are trained."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            # use_bn: batch norm after each hidden linear layer (DINO's option, used for its ResNet-50)
            def hidden(i: int) -> list[nn.Module]:
                return [nn.Linear(i, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) + [nn.GELU()]

            layers: list[nn.Module] = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor, last_layer_grad: float = 1.0) -> Tensor:
        """(B, in_dim) -> (B, out_dim) logits; `last_layer_grad=0` blocks the last layer's gradient."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        w = self.last_layer.weight
        if last_layer_grad != 1.0:
            w = w.detach() + last_layer_grad * (w - w.detach())  # same value, scaled gradient
        return F.linear(x, w)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's teacher momentum: final + (base - final) (1 + cos(pi step / total)) / 2 (0.996 -> 1)."""
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def teacher_temperature(
    step: int, total_steps: int, warmup_temp: float = 0.04, temp: float = 0.07, warmup: float = 0.3
) -> float:
    """Teacher temperature: linear from `warmup_temp` to `temp` over the first `warmup` of the run, then flat."""
    warm_steps = warmup * total_steps
    if step >= warm_steps or warm_steps <= 0:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warm_steps


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (DINO section 3.1)."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - momentum)


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over all crop pairs but
    same-view ones (eq. 3), and the centre update (eq. 4). `center` is a buffer (saved, resumable)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_out: Sequence[Tensor],
        teacher_out: Sequence[Tensor],
        teacher_temp: float,
        update_center: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """`student_out`: one (B, K) tensor per crop (globals first); `teacher_out`: one per global crop.

        Returns (loss, mean teacher entropy); then moves the centre towards the teachers' batch mean."""
        teacher_logits = torch.cat(list(teacher_out)).float()
        probs = F.softmax((teacher_logits - self.center) / teacher_temp, dim=-1).detach()
        probs = probs.chunk(len(teacher_out))
        total, terms = 0.0, 0
        for iq, q in enumerate(probs):
            for v, s in enumerate(student_out):
                if v == iq:  # same view: skipped
                    continue
                total = total + torch.sum(-q * F.log_softmax(s.float() / self.student_temp, dim=-1), dim=-1).mean()
                terms += 1
        if terms == 0:
            raise ValueError("DINO needs at least two crops (the teacher sees the global ones)")
        with torch.no_grad():
            p = torch.cat(probs)
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean()
        if update_center:
            self.update_center(teacher_logits)
        return total / terms, entropy

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """c <- m c + (1 - m) mean over the batch (all processes when a process group exists)."""
        batch_sum = teacher_logits.detach().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_logits.shape[0]), device=batch_sum.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1.0 - self.center_momentum)


def _patch_size(backbone: nn.Module) -> int | None:
    """The backbone's patch size in pixels (the `patch_size` of the backbone interface, its height);
    None for a backbone without patch tokens."""
    p = getattr(backbone, "patch_size", None)
    return int(p[0] if isinstance(p, (tuple, list)) else p) if p else None


def _img_size(backbone: nn.Module) -> int:
    s = getattr(getattr(backbone, "config", None), "img_size", None)
    if s is None:
        raise ValueError("the backbone has no config.img_size: pass img_size=... to the method")
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def _norm_stats(backbone: nn.Module, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The batch normalisation: given, or the backbone's `pretrained_cfg` (the loops set it from the data)."""
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    mean = mean if mean is not None else cfg.get("mean")
    std = std if std is not None else cfg.get("std")
    if mean is None or std is None:
        raise ValueError(
            "the method needs the normalisation of its input batches to make views: pass mean=(...) and "
            "std=(...) or set backbone.pretrained_cfg['mean'/'std']"
        )
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def local_view_size(backbone: nn.Module, img_size: int, local_size: int | None, paper_local: int) -> int:
    """Local crops smaller than the global ones need a backbone that takes any size (ViT:
    `dynamic_img_size=True`); otherwise they are made at the global size (same crops, more compute)."""
    size = local_size or view_size(img_size, paper_local, _patch_size(backbone))
    if size != img_size and not getattr(backbone, "dynamic_img_size", False):
        return img_size
    return size


class DINO(PretrainMethod):
    """Student (backbone + DINO head, trained) and momentum teacher (their EMA) on multi-crop views."""

    name = "dino"

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
        num_local: int = 8,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        local_size: int | None = None,
        hflip: float = 0.5,
        momentum: float = 0.996,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer: float = 0.01,
        img_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1] (DINO: 0.996)")
        if min(teacher_temp, warmup_teacher_temp, student_temp) <= 0:
            raise ValueError("temperatures must be > 0 (DINO: teacher 0.04 -> 0.07, student 0.1)")
        if not 0.0 <= teacher_temp_warmup <= 1.0 or not 0.0 <= freeze_last_layer <= 1.0:
            raise ValueError("teacher_temp_warmup and freeze_last_layer are fractions of the run, in [0, 1]")
        if num_local < 0:
            raise ValueError(f"num_local={num_local} must be >= 0")
        # the width of forward_head(pre_logits=True), what the head takes (timm's head_hidden_size)
        embed_dim = (
            getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None) or backbone.embed_dim
        )
        self.backbone = backbone
        self.head = DINOHead(embed_dim, out_dim, hidden_dim, bottleneck_dim, nlayers, norm_last_layer, use_bn)
        self.teacher = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.loss_fn = DINOLoss(out_dim, student_temp, center_momentum)
        self.base_momentum, self.momentum = momentum, momentum
        self.teacher_temp_final, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup = teacher_temp_warmup
        self.teacher_temp = warmup_teacher_temp if teacher_temp_warmup > 0 else teacher_temp
        self.freeze_last_layer = freeze_last_layer
        self.last_layer_frozen = freeze_last_layer > 0
        size = img_size or _img_size(backbone)
        specs = dino_view_specs(
            size,
            num_local,
            _patch_size(backbone),
            tuple(global_scale),
            tuple(local_scale),
            local_view_size(backbone, size, local_size, 96),
            hflip,
        )
        self._views = {"specs": specs, "mean": mean, "std": std, "generator": generator}
        self.multicrop: MultiCrop | None = None
        self.teacher.eval()

    def train(self, mode: bool = True) -> DINO:
        super().train(mode)
        self.teacher.eval()  # no stochastic depth / dropout in the teacher (DINO builds it with drop_path 0)
        return self

    def make_views(self, images: Tensor) -> list[Tensor]:
        if self.multicrop is None:
            mean, std = _norm_stats(self.backbone, self._views["mean"], self._views["std"])
            self.multicrop = MultiCrop(self._views["specs"], mean, std, self._views["generator"])
        return self.multicrop(images)

    @staticmethod
    def _encode(backbone: nn.Module, crops: Sequence[Tensor]) -> Tensor:
        """DINO's MultiCropWrapper: one backbone call per run of same-size crops; pooled features."""
        out, i = [], 0
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape[-2:] == crops[i].shape[-2:]:
                j += 1
            x = torch.cat(list(crops[i:j]))
            out.append(backbone.forward_head(backbone.forward_features(x), pre_logits=True))
            i = j
        return torch.cat(out)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        views = self.make_views(images)
        b = images.shape[0]
        with torch.no_grad():
            t_feats = self._encode(self.teacher, views[:2])
            t_out = self.teacher_head(t_feats).chunk(2)
        s_out = self.head(self._encode(self.backbone, views), 0.0 if self.last_layer_frozen else 1.0)
        s_out = s_out.split(b)
        loss, entropy = self.loss_fn(s_out, t_out, self.teacher_temp, update_center=self.training)
        ref = images.new_zeros(())
        return {
            "loss": loss,
            "teacher_entropy": entropy.detach(),
            "kl": (loss.detach() - entropy),
            "feature_std": feature_std(t_feats),
            "teacher_temp": ref + self.teacher_temp,
            "momentum": ref + self.momentum,
        }

    def on_step_end(self, step: int, total_steps: int) -> None:
        """EMA of the student into the teacher with this step's momentum, then the next step's schedules."""
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.teacher, self.backbone, self.momentum)
        ema_update(self.teacher_head, self.head, self.momentum)
        nxt = step + 1
        self.teacher_temp = teacher_temperature(
            nxt, total_steps, self.warmup_teacher_temp, self.teacher_temp_final, self.teacher_temp_warmup
        )
        self.last_layer_frozen = nxt < self.freeze_last_layer * total_steps

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The teacher's backbone: the one DINO evaluates and releases (k-NN, linear probe, fine-tuning)."""
        return {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}


@register_method("dino")
def dino(backbone: nn.Module, **options) -> DINO:
    """`vitkit pretrain dino`: DINO around `backbone` (options: the `DINO` constructor's)."""
    return DINO(backbone, **options)


# ------------------------------------------------------------------------------------ emerging properties
@torch.no_grad()
def cls_attention_maps(backbone: nn.Module, images: Tensor) -> Tensor:
    """Self-attention of the last block's [CLS] query to the patches, per head: (B, heads, gh, gw).

    The paper's figure 1 / 3 ("emerging properties"): with DINO the heads attend to object parts."""
    if not hasattr(backbone, "forward_features_with_attention"):
        raise ValueError(
            f"{type(backbone).__name__} cannot return attention weights (no forward_features_with_attention)"
        )
    if not getattr(backbone, "num_prefix_tokens", 0):
        raise ValueError("the backbone has no [CLS] token (num_prefix_tokens=0): there is no [CLS] attention to show")
    _, attentions = backbone.forward_features_with_attention(images)
    attn = attentions[-1][:, :, 0, backbone.num_prefix_tokens :]  # (B, heads, N)
    n = attn.shape[-1]
    h, w = images.shape[-2:]
    gh = round(math.sqrt(n * h / w))
    if n % gh:
        raise ValueError(f"cannot lay {n} patches on a grid for a {h}x{w} image")
    return attn.reshape(attn.shape[0], attn.shape[1], gh, n // gh)


def plot_cls_attention(
    backbone: nn.Module,
    images: Tensor,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    title: str = "last-layer [CLS] self-attention",
) -> Path:
    """Write a PNG: each row an image (normalised input) and its per-head [CLS] attention maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..hub import atomic_write

    was_training = backbone.training
    backbone.eval()
    maps = cls_attention_maps(backbone, images).float().cpu()
    backbone.train(was_training)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    pics = (images.float().cpu() * s + m).clamp(0, 1)
    b, heads = maps.shape[:2]
    fig, axes = plt.subplots(b, heads + 1, figsize=(1.4 * (heads + 1), 1.4 * b), squeeze=False, layout="constrained")
    for i in range(b):
        img = pics[i].permute(1, 2, 0).numpy()
        axes[i, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        for k in range(heads):
            axes[i, k + 1].imshow(maps[i, k].numpy(), cmap="inferno")
            if i == 0:
                axes[i, k + 1].set_title(f"head {k}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
