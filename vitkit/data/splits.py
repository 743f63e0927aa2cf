"""Deterministic stratified splits and per-channel normalisation statistics."""

from __future__ import annotations

import numpy as np
import torch

from .embedded import to_float01

__all__ = ["channel_stats", "stats_from_sums", "stratified_split", "uint8_channel_sums"]


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
    # one stable sort groups every class's indices in increasing order (O(n log n), not one scan per class);
    # numpy's, single-threaded: torch's threaded sort of 10^5 labels is slower on a busy machine
    order = torch.from_numpy(np.argsort(labels.numpy(), kind="stable"))
    counts = np.unique(labels.numpy(), return_counts=True)[1].tolist()
    for idx in torch.split(order, counts):
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    if not kept:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return (
        torch.from_numpy(np.sort(torch.cat(kept).numpy())),
        torch.from_numpy(np.sort(torch.cat(held).numpy())),
    )


_LEVELS = np.arange(256, dtype=np.int64)


def uint8_channel_sums(images: torch.Tensor | np.ndarray, channel_axis: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(sums, sums of squares, values per channel) of uint8 `images`, per channel, exactly (int64).

    One 256-bin histogram per channel (`np.bincount` of the values shifted by 256 x the channel index), then
    sum = sum_v v x count(v) and sum_v v^2 x count(v): a pass over the bytes, no wide temporaries. `channel_axis`
    is the channels' axis: 1 for (N, C, H, W) batches and clips, 0 for one (C, H, W) image, -1 for (H, W, C)."""
    a = images.numpy() if torch.is_tensor(images) else np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"uint8_channel_sums takes uint8 images, not {a.dtype}")
    axis = channel_axis % a.ndim
    c = a.shape[axis]
    shape = [1] * a.ndim
    shape[axis] = c
    offsets = (np.arange(c, dtype=np.int32) * 256).reshape(shape)
    hist = np.bincount((a + offsets).ravel(), minlength=256 * c).reshape(c, 256)
    return hist @ _LEVELS, hist @ (_LEVELS * _LEVELS), a.size // c if c else 0


def stats_from_sums(total: np.ndarray, total_sq: np.ndarray, count: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] scale from exact uint8 sums (`uint8_channel_sums`, added up)."""
    if count == 0:
        raise ValueError("cannot compute normalisation statistics of an empty split")
    mean = torch.as_tensor(total, dtype=torch.float64) / 255 / count
    std = (torch.as_tensor(total_sq, dtype=torch.float64) / 255**2 / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(max(v, 1e-6), 6) for v in std.tolist())


@torch.no_grad()
def channel_stats(images: torch.Tensor, chunk: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of (N, C, ...) images or clips on the [0, 1] scale.

    Accumulated over chunks: uint8 images exactly, from integer sums of the 0-255 values and of their squares
    (`uint8_channel_sums`); other dtypes in float64. Sets of any size cost little extra memory.
    """
    c = images.shape[1]
    if images.dtype == torch.uint8:
        total, total_sq, count = np.zeros(c, np.int64), np.zeros(c, np.int64), 0
        for i in range(0, len(images), chunk):
            s, sq, n = uint8_channel_sums(images[i : i + chunk].contiguous(), channel_axis=1)
            total, total_sq, count = total + s, total_sq + sq, count + n
        return stats_from_sums(total, total_sq, count)
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for i in range(0, len(images), chunk):
        x = to_float01(images[i : i + chunk]).double().transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        count += x.shape[1]
    if count == 0:
        raise ValueError("cannot compute normalisation statistics of an empty split")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(max(v, 1e-6), 6) for v in std.tolist())
