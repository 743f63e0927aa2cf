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
    """An in-memory split: the engine's fast path (batches are tensor indexing, no DataLoader).

    `images` is (N, C, H, W) and keeps the source's precision: **uint8 (0..255)** for sources that
    are 8-bit (MNIST, Fashion-MNIST, CIFAR: a quarter of the memory of float32), **float32 in
    [0, 1]** otherwise (the digits, 0..16 scaled). Consumers should not read `images` directly but
    call `batch(idx)` (or index the split, as a torch `Dataset`), which always returns float32 in
    [0, 1].
    """

    images: torch.Tensor  # (N, C, H, W) uint8 0..255 or float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, H, W) float32 in [0, 1], labels (B,) int64) for an index tensor/list/slice."""
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return to_float01(self.images[idx]), self.labels[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """One sample (C, H, W) float32 in [0, 1] and its label: a map-style torch Dataset."""
        return to_float01(self.images[i]), int(self.labels[i])

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.images[idx], self.labels[idx], self.classes)


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [0, 1]; float images are returned as float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


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
