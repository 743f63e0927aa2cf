"""Few-shot linear evaluation by closed-form regularised least squares: the ViT paper's protocol.

Paper
    Dosovitskiy et al., ViT (arXiv:2010.11929), section 4.1 and appendix: "few-shot accuracies are
    obtained by solving a regularized least-squares regression problem that maps the (frozen)
    representation of a subset of training images to {-1, 1}^K target vectors".
Reference code
    google-research/big_vision `evaluators/fewshot_lsr.py` (and `configs/common_fewshot.py`):
      - n examples of every class drawn from the train set, per seed (default shots 1, 5, 10, 25
        and 3 seeds); the mean accuracy over seeds is reported, here with the std too;
      - features standardised by the mean and std (population std, + 1e-5) of those n*K examples;
      - a constant feature of value 100 appended for the bias, "large so it's almost
        unregularized" (its weight pays l2 / 100^2);
      - targets 2 * one_hot(y) - 1, one regression per class (one-vs-all), prediction = argmax;
      - w = (X^T X + l2 I)^-1 X^T Y, or X^T (X X^T + l2 I)^-1 Y when there are more dimensions
        than examples (the same solution, the smaller system);
      - l2 = 2^10, big_vision's fixed default (`l2_reg`), not tuned per dataset or shot.
Deviations
    - big_vision solves through an eigen-decomposition (cheap for many l2 values); we use a
      Cholesky solve in float64 (`ridge_regression`), which gives the same w.
    - Optional sweep: `l2_reg` may be a sequence; l2 is then chosen per shot and seed by the
      accuracy on `val_per_class` extra train examples per class that are not among the shots
      (more labels than n-shot strictly allows; the fixed default is the paper's protocol).
    - Accuracies are percentages; the std over seeds is the sample std (0 with one seed).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

BIAS_CONSTANT = 100.0  # big_vision: the bias feature's value, so its l2 penalty is negligible
L2_REG = 2.0**10  # big_vision's default `l2_reg`
SHOTS = (1, 5, 10, 25)


def ridge_regression(x: torch.Tensor, y: torch.Tensor, l2_reg: float) -> torch.Tensor:
    """argmin_w ||x w - y||^2 + l2_reg ||w||^2 in float64: (D, K) from x (N, D), y (N, K).

    Primal normal equations when N >= D, dual (kernel) form otherwise; Cholesky for l2_reg > 0,
    minimum-norm least squares for l2_reg == 0."""
    x = torch.as_tensor(x).double()
    y = torch.as_tensor(y, device=x.device).double()
    if y.ndim == 1:
        y = y[:, None]
    n, d = x.shape
    if l2_reg < 0:
        raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
    if l2_reg == 0:
        driver = "gelsd" if x.device.type == "cpu" else None
        return torch.linalg.lstsq(x, y, driver=driver).solution
    if n >= d:
        a = x.T @ x + l2_reg * torch.eye(d, dtype=x.dtype, device=x.device)  # (D, D)
        return torch.cholesky_solve(x.T @ y, torch.linalg.cholesky(a))
    a = x @ x.T + l2_reg * torch.eye(n, dtype=x.dtype, device=x.device)  # (N, N)
    return x.T @ torch.cholesky_solve(y, torch.linalg.cholesky(a))


class _LSRClassifier:
    """big_vision's pipeline: standardise by the shots, append the bias feature, regress."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, l2_reg: float) -> None:
        x = x.double()
        self.mean = x.mean(0, keepdim=True)
        self.std = x.std(0, keepdim=True, correction=0) + 1e-5
        targets = 2.0 * torch.nn.functional.one_hot(y, num_classes).double() - 1.0  # {-1, 1}^K
        self.w = ridge_regression(self._design(x), targets, l2_reg)  # (D + 1, K)

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.double() - self.mean) / self.std
        return torch.cat([x, torch.full_like(x[:, :1], BIAS_CONSTANT)], dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self._design(x) @ self.w).argmax(1)


def sample_shots(
    labels: torch.Tensor,
    shots: int,
    seed: int,
    num_classes: int,
    extra: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of `shots` random examples of every class (and of `extra` more per class, disjoint
    from them, for choosing l2). Raises if a class has too few examples."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    picked, held = [], []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < shots + extra:
            raise ValueError(
                f"class {c} has {len(idx)} train examples, fewer than the {shots + extra} needed "
                f"for {shots}-shot" + (f" with {extra} held out to choose l2" if extra else "")
            )
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.append(idx[:shots])
        held.append(idx[shots : shots + extra])
    return torch.cat(picked), torch.cat(held)


def few_shot_lsr(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    l2_reg: float | Sequence[float] = L2_REG,
    val_per_class: int = 10,
    num_classes: int | None = None,
) -> dict[int, dict]:
    """n-shot accuracy over seeds: {n: {'mean': %, 'std': %, 'accs': [% per seed], 'l2_reg': [per seed]}}.

    Every class in 0..num_classes-1 (default: 1 + the largest train label) needs n train examples."""
    train_features = torch.as_tensor(train_features)
    train_labels = torch.as_tensor(train_labels).long().flatten().to(train_features.device)
    test_features = torch.as_tensor(test_features).to(train_features.device)
    test_labels = torch.as_tensor(test_labels).long().flatten().to(train_features.device)
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    if not seeds:
        raise ValueError("seeds is empty")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    sweep = None if isinstance(l2_reg, numbers.Real) else [float(lam) for lam in l2_reg]
    results = {}
    for n in shots:
        if n < 1:
            raise ValueError(f"shots must be >= 1, got {n}")
        accs, chosen = [], []
        for seed in seeds:
            idx, val_idx = sample_shots(train_labels, n, seed, num_classes, extra=val_per_class if sweep else 0)
            idx, val_idx = idx.to(train_features.device), val_idx.to(train_features.device)
            x, y = train_features[idx], train_labels[idx]
            if sweep:
                best, best_acc = sweep[0], -1.0
                for lam in sweep:  # strict improvement: ties keep the earlier value
                    clf = _LSRClassifier(x, y, num_classes, lam)
                    acc = (clf.predict(train_features[val_idx]) == train_labels[val_idx]).sum().item()
                    if acc > best_acc:
                        best, best_acc = lam, acc
                lam = best
            else:
                lam = float(l2_reg)
            clf = _LSRClassifier(x, y, num_classes, lam)
            accs.append(100.0 * (clf.predict(test_features) == test_labels).sum().item() / max(len(test_labels), 1))
            chosen.append(lam)
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        results[int(n)] = {"mean": mean, "std": std, "accs": accs, "l2_reg": chosen}
    return results
