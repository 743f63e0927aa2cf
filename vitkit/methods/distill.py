"""DeiT knowledge distillation: soft, hard, and through a distillation token.

Paper
    Touvron et al., "Training data-efficient image transformers & distillation through attention",
    ICML 2021 (arXiv:2012.12877), section 4. With Z_s, Z_t the student's and the teacher's logits,
    psi the softmax, y the label and K the number of classes:

    soft (eq. 2):  L = (1 - lambda) CE(psi(Z_s), y) + lambda tau^2 KL(psi(Z_t / tau) || psi(Z_s / tau))
    hard (eq. 3):  L = 1/2 CE(psi(Z_s), y) + 1/2 CE(psi(Z_s), y_t),   y_t = argmax_c Z_t(c)

    With the distillation token the student has two heads: the class head takes the label term
    and the distillation head the teacher term (Z_s is the class head's output in the first
    term and the distillation head's in the second). At test time the paper averages the two
    heads' softmax-free logits (`distilled_output='mean'` of vitkit's distilled ViT; 'cls' and
    'dist' use one head).
Reference code
    facebookresearch/deit `losses.py` (`DistillationLoss`) and `main.py` (defaults
    `--distillation-alpha 0.5 --distillation-tau 1.0`); timm 1.0 `task/token_distillation.py`.

Normalisation of the KL term (`kl_reduction`)
    'batchmean' (default): KL summed over the K classes, averaged over the B images, times
        tau^2: exactly the paper's per-image KL and what timm's distillation tasks compute
        (`F.kl_div(..., reduction='batchmean', log_target=True) * tau**2`).
    'deit': DeiT's reference code, `F.kl_div(..., reduction='sum', log_target=True) * tau**2 /
        outputs_kd.numel()`: the sum over the batch and the classes divided by B * K. It is the
        'batchmean' value divided by K (1/1000 on ImageNet, 1/10 here), so lambda means a K times
        smaller teacher weight under DeiT's code than under the paper's formula. Use 'deit' to
        reuse hyper-parameters tuned with DeiT's code.
    Both use the teacher's log-probabilities as the target (`log_target=True`), as DeiT does.

Targets
    y may be integer labels, smoothed by `label_smoothing`, or soft targets (B, K) from
    mixup/cutmix (label smoothing already folded in; the teacher then sees the same mixed images,
    as in DeiT). The teacher's hard label y_t is never smoothed (DeiT's code; the paper applies
    label smoothing to "the true labels").

Defaults
    alpha (lambda) = 0.5 for hard distillation (the paper's 1/2, DeiT's default). For soft
    distillation alpha = 0.1 and tau = 3.0 (Hinton-style values DeiT's soft-distillation runs
    were reported with); both can be set with `--distill.alpha` / `--distill.tau`.

Caching the teacher's logits (`cache_logits`)
    Valid only when the student trains on exactly the images the logits were computed on: no
    random crop, flip, RandAugment, erasing or mixup/cutmix (`--aug.*` all off) and the same
    preprocessing. Then the frozen teacher's logits per training image never change and one pass
    over the training set replaces one teacher forward per step. With augmentation the teacher
    must see each augmented batch (DeiT computes the teacher on the augmented, mixed images), so
    `cache_logits` with augmentation is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger("vitkit")

DISTILL_TYPES = ("none", "soft", "hard")
KL_REDUCTIONS = ("batchmean", "deit")
DEFAULT_ALPHA = {"soft": 0.1, "hard": 0.5}


# ------------------------------------------------------------------------------------ losses
def soft_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float, kl_reduction: str = "batchmean"
) -> torch.Tensor:
    """tau^2 KL(psi(Z_t / tau) || psi(Z_s / tau)) (DeiT eq. 2's teacher term); see the module
    docstring for `kl_reduction` ('batchmean': per image, 'deit': divided by B * K)."""
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)  # sum_b sum_c p_t (log p_t - log p_s)
    denom = student_logits.shape[0] if kl_reduction == "batchmean" else student_logits.numel()
    return kl * (tau * tau) / denom


def hard_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CE(psi(Z_s), y_t) with y_t = argmax Z_t (DeiT eq. 3's teacher term), averaged over the batch."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


class DistillationLoss(nn.Module):
    """The training loss of a (possibly distilled) student; `loss = criterion(outputs, target, teacher_logits)`.

    `outputs` is the student's logits (B, K), or (class logits, distillation logits) from a
    student with a distillation token. `target` is (B,) labels or (B, K) soft targets.

    - 'none': cross-entropy on the labels; a two-headed student trains both heads on the labels
      (the mean of the two losses), vitkit's behaviour without a teacher.
    - 'soft' / 'hard': (1 - alpha) CE(class logits, y) + alpha * teacher term on the
      distillation logits (the same logits when the student has one head).
    """

    def __init__(
        self,
        type: str = "none",
        alpha: float | None = None,
        tau: float = 3.0,
        label_smoothing: float = 0.0,
        kl_reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        if type not in DISTILL_TYPES:
            raise ValueError(f"distillation type must be one of {DISTILL_TYPES}, got {type!r}")
        alpha = DEFAULT_ALPHA.get(type, 0.0) if alpha is None else float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--distill.alpha={alpha} must be in [0, 1] (the weight of the teacher term)")
        if tau <= 0:
            raise ValueError(f"--distill.tau={tau} must be > 0 (the softmax temperature)")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"--distill.kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        self.type, self.alpha, self.tau = type, alpha, float(tau)
        self.label_smoothing, self.kl_reduction = float(label_smoothing), kl_reduction

    def base(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CE(psi(Z_s), y): hard labels with label smoothing, or soft targets (mixup/cutmix) as given."""
        smoothing = self.label_smoothing if target.ndim == 1 else 0.0  # soft targets already carry it
        return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)

    def forward(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        two_heads = isinstance(outputs, tuple)
        logits, logits_kd = outputs if two_heads else (outputs, outputs)
        base = self.base(logits, target)
        if self.type == "none":
            return 0.5 * (base + self.base(logits_kd, target)) if two_heads else base
        if teacher_logits is None:
            raise ValueError(f"{self.type} distillation needs the teacher's logits")
        if self.type == "soft":
            teacher_term = soft_distillation_loss(logits_kd, teacher_logits, self.tau, self.kl_reduction)
        else:
            teacher_term = hard_distillation_loss(logits_kd, teacher_logits)
        return (1.0 - self.alpha) * base + self.alpha * teacher_term

    def extra_repr(self) -> str:
        return f"type={self.type!r}, alpha={self.alpha}, tau={self.tau}, kl_reduction={self.kl_reduction!r}"


# ------------------------------------------------------------------------------------ the teacher
def load_teacher(path: str | Path, model_name: str | None = None) -> nn.Module:
    """A frozen teacher in eval mode from a model directory (`save_pretrained`, a Hugging Face
    ViT/DeiT directory), a run directory (`vitkit train --out`: its `model/`), or a weights file
    with `model_name` (its number of classes is read from the file's `head.weight`)."""
    from ..hub import (
        CheckpointError,
        from_pretrained,
        load_state_dict_checked,
        read_checkpoint,
    )
    from ..registry import create_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"--distill.teacher={path} does not exist: give a model directory, a run directory "
            f"(vitkit train --out), or a weights file with --distill.teacher_model=NAME"
        )
    if path.is_dir():
        if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
            path = path / "model"  # a run directory
        model = from_pretrained(path)
    else:
        if not model_name:
            raise ValueError(
                f"--distill.teacher={path} is a weights file: name its architecture with "
                f"--distill.teacher_model=NAME (e.g. resnet_micro_28)"
            )
        state = read_checkpoint(path)
        head = state.get("head.weight")
        if head is None:
            raise CheckpointError(f"{path} has no classifier (no head.weight): a teacher must predict classes")
        model = create_model(model_name, num_classes=head.shape[0])
        load_state_dict_checked(model, state, source=str(path))
    return model.eval().requires_grad_(False)


def check_teacher(
    teacher: nn.Module,
    num_classes: int,
    in_chans: int,
    img_size: tuple[int, int],
    classes: list[str] | None = None,
    dataset: str = "the data",
    source: str = "the teacher",
) -> None:
    """Refuse a teacher that cannot label this data: another number or order of classes, other
    channels, or another resolution (unless the teacher takes any size)."""
    t_classes = getattr(teacher, "num_classes", None)
    t_cfg = getattr(teacher, "config", None)
    fix = f"train a teacher on {dataset} first (e.g. vitkit train --model.name=resnet_micro_28 --data.name={dataset})"
    if t_classes != num_classes:
        raise ValueError(f"the teacher {source} predicts {t_classes} classes but {dataset} has {num_classes}: {fix}")
    names = getattr(teacher, "pretrained_cfg", {}).get("label_names")
    if classes is not None and names and list(names) != list(classes):
        raise ValueError(
            f"the teacher {source} was trained on classes {list(names)[:4]}... "
            f"({teacher.pretrained_cfg.get('dataset', 'another dataset')}) but {dataset} has "
            f"{list(classes)[:4]}...: {fix}"
        )
    t_chans = getattr(t_cfg, "in_chans", None)
    if t_chans is not None and t_chans != in_chans:
        raise ValueError(
            f"the teacher {source} takes {t_chans}-channel images but {dataset} has {in_chans} channel(s): {fix}"
        )
    t_size = getattr(t_cfg, "img_size", None)
    if t_size is not None and not getattr(t_cfg, "dynamic_img_size", False):
        t_size = tuple(t_size) if isinstance(t_size, (tuple, list)) else (t_size, t_size)
        if tuple(t_size) != tuple(img_size):
            raise ValueError(
                f"the teacher {source} was built for {t_size[0]}x{t_size[1]} images but {dataset} has "
                f"{img_size[0]}x{img_size[1]}: {fix}, or resize the data to the teacher's size "
                f"(--data.img_size={t_size[0]} for image folders)"
            )


class Teacher(nn.Module):
    """A frozen model that takes the student's [0, 1] images and normalises them its own way
    (its `pretrained_cfg` mean/std, which `vitkit train` sets to its training data's)."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:  # always in eval mode (BatchNorm statistics, dropout)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model((x - self.mean) / self.std)
        return (out[0] + out[1]) / 2 if isinstance(out, tuple) else out  # a distilled teacher: both heads


@torch.no_grad()
def precompute_logits(
    teacher: nn.Module, data, device: str, batch_size: int = 512, progress: bool = True
) -> torch.Tensor:
    """The teacher's logits (N, K) for every image of an in-memory split, in order (float32, CPU)."""
    out = []
    for i in tqdm(
        range(0, len(data), batch_size), desc="teacher logits", unit="batch", disable=not progress, leave=False
    ):
        x, _ = data.batch(torch.arange(i, min(i + batch_size, len(data))))
        out.append(teacher(x.to(device)).float().cpu())
    return torch.cat(out)


@dataclass
class Distillation:
    """What the training loop needs: the loss, the teacher, and the cached train logits (or None)."""

    criterion: DistillationLoss
    teacher: Teacher | None = None
    cached: torch.Tensor | None = None

    def teacher_logits(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor | None:
        """Logits for the batch `x` (images in [0, 1]) whose train-set indices are `idx`."""
        if self.teacher is None:
            return None
        if self.cached is not None:
            return self.cached[idx].to(x.device)
        return self.teacher(x).float()


def build_distillation(
    cfg: Any,
    student: nn.Module,
    splits: Any,
    train_data: Any,
    augment_active: bool,
    label_smoothing: float,
    device: str,
    progress: bool = True,
) -> Distillation:
    """Check the `distill` settings against the student and the data; load, check and (optionally)
    pre-compute the teacher. `cfg` is a `vitkit.train.config.DistillConfig`."""
    if cfg.type not in DISTILL_TYPES:
        raise ValueError(f"--distill.type must be one of {', '.join(DISTILL_TYPES)}, got {cfg.type!r}")
    has_token = getattr(student, "dist_token", None) is not None
    if has_token and hasattr(student, "set_distilled_training"):
        # both heads' logits in training (timm's switch; off, a distilled model returns their mean)
        student.set_distilled_training(True)
    if cfg.type == "none":
        if cfg.teacher:
            raise ValueError(
                f"--distill.teacher={cfg.teacher} is set but --distill.type=none: choose "
                f"--distill.type=soft or hard, or drop the teacher"
            )
        if cfg.token:
            raise ValueError("--distill.token=true needs a teacher: set --distill.teacher=PATH and --distill.type")
        return Distillation(DistillationLoss("none", label_smoothing=label_smoothing))
    if not cfg.teacher:
        raise ValueError(
            f"--distill.type={cfg.type} needs a teacher: --distill.teacher=PATH (a model or run "
            f"directory, e.g. one written by vitkit train --model.name=resnet_micro_28)"
        )
    name = getattr(student, "model_name", None) or type(student).__name__
    if cfg.token and not has_token:
        raise ValueError(
            f"--distill.token=true but the student {name} has no distillation token: use a distilled "
            f"student (e.g. --model.name=deit_micro_distilled_patch4_28, or "
            f"--model.overrides.distilled=true for a ViT), or set --distill.token=false"
        )
    if cfg.token is False and has_token:
        raise ValueError(
            f"--distill.token=false but the student {name} has a distillation token (its second head "
            f"would take the teacher term): use a student without one (e.g. vit_micro_patch4_28), or "
            f"set --distill.token=true"
        )
    if cfg.cache_logits and augment_active:
        raise ValueError(
            "--distill.cache_logits=true is only valid when the student sees exactly the images the "
            "logits were computed on: turn every --aug.* option off, or set "
            "--distill.cache_logits=false (the teacher then runs on each augmented batch)"
        )
    model = load_teacher(cfg.teacher, cfg.teacher_model)
    check_teacher(
        model,
        len(splits.classes),
        splits.in_chans,
        tuple(splits.img_size),
        splits.classes,
        splits.name,
        source=str(cfg.teacher),
    )
    mean = model.pretrained_cfg.get("mean") or splits.mean
    std = model.pretrained_cfg.get("std") or splits.std
    teacher = Teacher(model, mean, std).to(device)
    criterion = DistillationLoss(cfg.type, cfg.alpha, cfg.tau, label_smoothing, cfg.kl_reduction)
    cached = None
    if cfg.cache_logits:
        if not hasattr(train_data, "batch"):
            raise ValueError("--distill.cache_logits=true needs an in-memory dataset (not an image folder)")
        cached = precompute_logits(teacher, train_data, device, progress=progress)
    logger.info(
        "distillation: %s, teacher %s (%s)%s",
        criterion.extra_repr(),
        cfg.teacher,
        getattr(model, "model_name", None) or type(model).__name__,
        ", cached train logits" if cached is not None else "",
    )
    return Distillation(criterion, teacher, cached)
