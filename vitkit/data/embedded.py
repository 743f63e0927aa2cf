"""Real datasets bundled with installed packages (no download, no network).

`load_digits`: the UCI optical-recognition handwritten digits as shipped by scikit-learn
(1,797 greyscale 8x8 images, 10 classes, pixel values 0..16; CC BY 4.0). Split deterministically
and stratified by class with a fixed seed: 80% train / 20% test by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """(train, test) splits of scikit-learn's digits as (N, 1, 8, 8) tensors in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError(
            "the digits dataset ships with scikit-learn: pip install 'vitkit[data]' (or scikit-learn)"
        ) from None
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # 0..16 -> [0, 1]
    labels = torch.from_numpy(bunch.target).long()
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):  # stratified: the same share of every class in the test split
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    classes = [str(c) for c in range(10)]
    return Split(images[train_idx], labels[train_idx], classes), Split(images[test_idx], labels[test_idx], classes)
