"""Frozen features of a backbone, the input of every evaluator in `vitkit.eval`.

The features are the pooled pre-logits vector, `forward_head(forward_features(x), pre_logits=True)`
(B, D), the representation the ViT paper's few-shot/linear evaluations and DINO's k-NN use
([CLS] or average pool by the model's `global_pool`; the mean of the two tokens for DeiT).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn


def _batches(data: Any, batch_size: int) -> Iterable[torch.Tensor]:
    """Image batches from a tensor (N, C, H, W), a Split-like object (`.images`), or an iterable
    of batches (a DataLoader) yielding tensors or (images, labels, ...) tuples / dicts."""
    if hasattr(data, "images"):
        data = data.images
    if isinstance(data, torch.Tensor):
        if data.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(data.shape)}")
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    for batch in data:
        if isinstance(batch, dict):
            batch = batch["image"] if "image" in batch else batch["images"]
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield batch


@torch.inference_mode()
def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def extract_features(
    model: nn.Module,
    images_or_loader: Any,
    batch_size: int = 256,
    normalize: tuple[Sequence[float], Sequence[float]] | str | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Pooled features (N, D), float32 on the CPU, in the order of the input.

    `images_or_loader`: a tensor (N, C, H, W), a Split-like object with `.images`, or an iterable of
    batches; floating-point images are taken as they are, uint8 images (MNIST's and CIFAR's in-memory
    splits) are scaled to [0, 1] first, as torchvision's `ToTensor` does. `normalize`: per-channel (mean, std) applied as (x - mean) / std, 'model' for the
    model's `pretrained_cfg` mean and std, or None when the images are already normalised.
    `device`: where the batches go; None is the model's device (the model itself is not moved).
    Runs in eval mode under `torch.inference_mode`, then restores the model's training flags.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(model.parameters(), None)
    model_device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else model_device
    if param is not None and device != model_device and not (device.type == model_device.type and device.index is None):
        raise ValueError(f"the model is on {model_device} but device={device}: move the model first")
    if normalize == "model":
        normalize = (model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    if normalize is not None:
        mean = torch.as_tensor(normalize[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.as_tensor(normalize[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    # Remember every module's flag (a caller may have frozen parts in eval mode on purpose).
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        out = []
        for x in _batches(images_or_loader, batch_size):
            if x.dtype == torch.uint8:  # 8-bit pixels: [0, 255] -> [0, 1], what `normalize` statistics assume
                x = x.to(device, non_blocking=True).float().div_(255)
            else:
                x = x.to(device, torch.float32, non_blocking=True)
            if normalize is not None:
                if x.shape[1] != mean.shape[1] and mean.shape[1] != 1:
                    raise ValueError(f"normalize has {mean.shape[1]} channels, the images {x.shape[1]}")
                x = (x - mean) / std
            out.append(_forward(model, x).float().cpu())
    finally:
        for m, training in modes.items():
            m.training = training
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out)
