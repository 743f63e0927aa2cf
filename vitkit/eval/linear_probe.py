"""Linear probe: multinomial logistic regression on frozen, standardised features.

The ViT and DINO papers evaluate representations with a linear classifier on frozen features
(DINO trains it with SGD over 100 epochs of augmented images; `eval_linear.py`). On precomputed
features the problem is convex and small, so we solve it to convergence with full-batch L-BFGS,
as scikit-learn's `LogisticRegression` (lbfgs) does:

    minimise  mean cross-entropy(x_std W^T + b, y) + (wd / 2) ||W||_F^2      (bias not decayed)

with x_std the features standardised by the fitting set's mean and std. The weight decay `wd` is
chosen from a small grid by the accuracy on a held-out, class-stratified part of the train
features (`val_fraction`, split with `seed`); the probe is then refitted on all the train
features with that `wd` and scored on the test features. Weights start at zero, so the result is
a deterministic function of the data and the seed (on a given machine and thread count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from .metrics import topk_accuracy

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class LinearProbe:
    weight: torch.Tensor  # (K, D), acting on standardised features
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (D,) standardisation of the fitting set
    std: torch.Tensor  # (D,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (torch.as_tensor(features).to(self.weight) - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(1)


@dataclass
class LinearProbeResult:
    top1: float  # test accuracy (%)
    top5: float | None  # with >= 5 classes
    weight_decay: float  # the chosen one
    val_top1: dict[float, float] = field(default_factory=dict)  # held-out accuracy (%) per weight decay
    probe: LinearProbe | None = None  # refitted on all the train features


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 500,
) -> LinearProbe:
    """Full-batch L-BFGS (strong-Wolfe line search) from zero weights; see the module docstring."""
    x = torch.as_tensor(features).float()
    y = torch.as_tensor(labels, device=x.device).long()
    mean = x.mean(0)
    std = x.std(0, correction=0) + 1e-6  # a constant feature stays finite (and then 0)
    x = (x - mean) / std
    W = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y) + 0.5 * weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(W.detach(), b.detach(), mean, std)


def _stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): `fraction` of every class held out (>= 1 of a class with
    >= 2 samples, never all of it)."""
    g = torch.Generator().manual_seed(seed)
    fit, held = [], []
    labels = labels.cpu()
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = min(max(1, round(len(idx) * fraction)), len(idx) - 1) if len(idx) >= 2 else 0
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 500,
    num_classes: int | None = None,
) -> LinearProbeResult:
    """Fit a logistic-regression probe on the train features, report its test accuracy (%).

    The weight decay is chosen from `weight_decays` on a held-out `val_fraction` of the train
    features (ties go to the larger weight decay); a single value skips the selection."""
    train_features = torch.as_tensor(train_features).float()
    train_labels = torch.as_tensor(train_labels, device=train_features.device).long().flatten()
    test_features = torch.as_tensor(test_features, device=train_features.device).float()
    test_labels = torch.as_tensor(test_labels, device=train_features.device).long().flatten()
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    if not weight_decays:
        raise ValueError("weight_decays is empty")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max() if test_labels.numel() else 0)) + 1

    val_top1: dict[float, float] = {}
    if len(weight_decays) == 1:
        best = float(weight_decays[0])
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        fit_idx, val_idx = _stratified_split(train_labels, val_fraction, seed)
        if len(val_idx) == 0:
            raise ValueError(
                "too few train samples to hold some out for choosing the weight decay: pass a single weight decay"
            )
        for wd in sorted(map(float, weight_decays), reverse=True):  # strongest first: ties keep it
            probe = fit_logistic_regression(train_features[fit_idx], train_labels[fit_idx], num_classes, wd, max_iter)
            correct = (probe.predict(train_features[val_idx]) == train_labels[val_idx]).sum().item()
            val_top1[wd] = 100.0 * correct / len(val_idx)
        best = max(val_top1, key=lambda wd: val_top1[wd])  # first maximum in dict order

    probe = fit_logistic_regression(train_features, train_labels, num_classes, best, max_iter)
    acc = topk_accuracy(probe.logits(test_features), test_labels, ks=(1, 5))
    return LinearProbeResult(
        top1=acc[1],
        top5=acc[5] if num_classes >= 5 else None,
        weight_decay=best,
        val_top1=val_top1,
        probe=probe,
    )
