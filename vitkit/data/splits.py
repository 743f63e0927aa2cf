"""Deterministic stratified splits and per-channel normalisation statistics."""

from __future__ import annotations

import torch

from .embedded import to_float01

__all__ = ["stratified_split", "channel_stats"]


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held-out) sorted index tensors: `round(n_c * fraction)` of every class c held out.

    Deterministic for a given (labels, fraction, seed): a torch generator seeded with `seed`
    shuffles each class in turn (classes in increasing label order), the same algorithm as
    `load_digits`. Both index lists are sorted, so the splits keep the source's order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"a split fraction must be in [0, 1), got {fraction}")
    labels = torch.as_tensor(labels).flatten()
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    # one stable sort groups every class's indices in increasing order (O(n log n), not one scan per class)
    order = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, return_counts=True)[1].tolist()
    for idx in torch.split(order, counts):
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    if not kept:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


@torch.no_grad()
def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of (N, C, ...) images or clips on the [0, 1] scale.

    Accumulated over chunks: uint8 images exactly, as integer sums of the 0-255 values and of their squares;
    other dtypes in float64. Sets of any size cost little extra memory.
    """
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    exact = images.dtype == torch.uint8
    for i in range(0, len(images), chunk):
        batch = images[i : i + chunk]
        if exact:
            x = batch.to(torch.int32)
            dims = (0, *range(2, x.dim()))  # every axis but the channels: (N, C, H, W), clips (N, C, T, H, W)
            total += x.sum(dim=dims, dtype=torch.int64).double() / 255
            total_sq += (x * x).sum(dim=dims, dtype=torch.int64).double() / 255**2
            count += batch.numel() // c
        else:
            x = to_float01(batch).double().transpose(0, 1).reshape(c, -1)
            total += x.sum(1)
            total_sq += (x * x).sum(1)
            count += x.shape[1]
    if count == 0:
        raise ValueError("cannot compute normalisation statistics of an empty split")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(max(v, 1e-6), 6) for v in std.tolist())
