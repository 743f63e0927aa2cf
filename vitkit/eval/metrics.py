"""Classification metrics: top-k accuracy, confusion matrix, per-class accuracy, and a plot.

Conventions (the whole of `vitkit.eval`): accuracies are percentages in [0, 100] (as timm, DINO
and `vitkit train` report them); confusion matrices have true labels on rows and predictions on
columns (scikit-learn's layout).

Ties: the rank of the true class counts the classes with a strictly higher score plus the tied
classes with a lower index, i.e. ties break towards the lower class index. That is what
`argmax` does (it returns the first maximum), so top-1 accuracy is exactly `argmax == label`,
and the result never depends on how `torch.topk` happens to order equal values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..hub import atomic_write


def _check_labels(labels: torch.Tensor, num_classes: int, what: str = "labels") -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} must be in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def class_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K) scores, (N,) labels -> (N,) zero-based rank of the true class (ties to the lower index)."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    labels = torch.as_tensor(labels, device=scores.device).long().flatten()
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
    _check_labels(labels, scores.shape[1])
    true = scores.gather(1, labels[:, None])  # (N, 1)
    classes = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > true) | ((scores == true) & (classes[None, :] < labels[:, None]))
    return ahead.sum(1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy (%) for each k in `ks`: {k: percent}.

    A k at or above the number of classes gives 100% (the label is always among the top k)."""
    ranks = class_ranks(logits, labels)
    n = max(ranks.numel(), 1)
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out[int(k)] = 100.0 * (ranks < k).sum().item() / n
    return out


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts: entry [i, j] is the number of samples of class i predicted as j.

    `preds` are class indices (N,), or scores (N, K), reduced with argmax."""
    preds = torch.as_tensor(preds)
    if preds.ndim == 2:
        preds = preds.argmax(1)
    preds = preds.long().flatten().cpu()
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.numel()} predictions but {labels.numel()} labels")
    _check_labels(labels, num_classes)
    _check_labels(preds, num_classes, "predictions")
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float64 accuracy (%) of each class (the recall); NaN for a class with no samples."""
    return per_class_accuracy_from_cm(confusion_matrix(preds, labels, num_classes))


def per_class_accuracy_from_cm(cm: torch.Tensor) -> torch.Tensor:
    cm = torch.as_tensor(cm).double()
    support = cm.sum(1)
    return 100.0 * cm.diagonal() / support  # 0/0 -> NaN: no samples, no accuracy


def plot_confusion_matrix(
    cm: torch.Tensor,
    class_names: Sequence[str] | None,
    path: str | os.PathLike,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Write the confusion matrix as a PNG (colour = row-normalised rate when `normalize`, counts
    written in the cells up to 30 classes). Atomic: a temporary file in the same directory, then
    `os.replace`, so a reader never sees half a file. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switching

    cm = torch.as_tensor(cm).cpu()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be square (K, K), got shape {tuple(cm.shape)}")
    k = cm.shape[0]
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    counts = cm.double()
    shown = counts / counts.sum(1, keepdim=True).clamp_min(1) if normalize else counts

    size = min(4.0 + 0.35 * k, 30.0)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(shown.numpy(), cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class" if normalize else "count")
    ticks = range(k)
    ax.set_xticks(ticks, names, rotation=90 if k > 10 else 0)
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = 100.0 * counts.diagonal().sum().item() / max(counts.sum().item(), 1)
    ax.set_title(title if title is not None else f"accuracy {acc:.2f}% on {int(counts.sum())} samples")
    if k <= 30:
        threshold = 0.5 * (shown.max().item() or 1.0)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shown[i, j] > threshold else "black",
                )
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
