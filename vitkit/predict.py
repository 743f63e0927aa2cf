"""Classify image files (video files, for video models) with a saved model (a vitkit or Hugging Face directory).

Preprocessing is the model's data config (`vitkit.data.resolve_data_config(model=model)`: input
size, interpolation, crop_pct, crop_mode, mean, std, from its `pretrained_cfg`) through timm's
evaluation transform (`vitkit.data.create_transform`), after vitkit's one image decoder
(`vitkit.data.load_image`, which the training loaders use too): the same file gives the same
tensor here, in `vitkit eval` and in training's evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .hub import from_pretrained
from .layers import to_2tuple


def load_video(path: str | Path, model) -> torch.Tensor:
    """One video file -> a normalised (C, T, H, W) clip for a video `model`: `num_frames` frames
    sampled uniformly over the video (the middle of T equal segments), shorter side resized to
    img_size / crop_pct (bilinear), centre crop (vitkit/data/video.py)."""
    from .data.video import load_clip

    cfg, c = model.pretrained_cfg, model.config
    clip = load_clip(path, c.num_frames, to_2tuple(c.img_size), stride=cfg.get("frame_stride"),
                     crop_pct=cfg.get("crop_pct", 1.0), in_chans=c.in_chans)
    mean = torch.tensor(cfg.get("mean", (0.5,) * c.in_chans)).view(-1, 1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5,) * c.in_chans)).view(-1, 1, 1, 1)
    return (clip - mean) / std


def image_transform(model):
    """The evaluation transform of `model`'s data config (a callable PIL image -> normalised (C, H, W))."""
    from .data.transforms import create_transform, model_data_config

    return create_transform(**model_data_config(model))


def load_image(path: str | Path, model, transform=None) -> torch.Tensor:
    """One image file -> a normalised (C, H, W) tensor for `model` (a video model: `load_video`).
    `transform`: `image_transform(model)`, built once by callers that read many files."""
    if getattr(model.config, "num_frames", None):  # video models (ViViT, TimeSformer, MViT) read videos
        return load_video(path, model)
    from .data.transforms import load_image as decode

    transform = transform if transform is not None else image_transform(model)
    return transform(decode(path, model.config.in_chans))


@torch.no_grad()
def predict_files(model_dir: str | Path, images: Sequence[str | Path], top_k: int = 3, bf16: bool = False,
                  details: bool = False):
    """Yield (path, [(label, probability), ...]) for each image, best first.

    `bf16` runs the model under bf16 autocast on the CPU (matmuls in bf16, softmax in fp32).
    `details` adds a third item, a dict: for early-exit models (DVT) the exit the image took and its
    GMACs ({"exit": k, "gmacs": g}), empty for other models."""
    from .precision import resolve_bf16

    bf16 = resolve_bf16(bf16, "cpu")  # True is honoured; warns where bf16 is emulated (slower than fp32)
    model = from_pretrained(model_dir).eval()
    names = model.pretrained_cfg.get("label_names")
    dynamic = hasattr(model, "forward_dynamic")  # early exit: which exit, at what cost
    costs = (model.config.exit_gmacs or model.measure_exit_gmacs()) if dynamic and details else None
    transform = None if getattr(model.config, "num_frames", None) else image_transform(model)
    for path in images:
        info = {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if dynamic:
                logits, exits = model.forward_dynamic(load_image(path, model, transform).unsqueeze(0))
                info = {"exit": int(exits[0]), "gmacs": costs[int(exits[0])]} if details else {}
            else:
                logits = model(load_image(path, model, transform).unsqueeze(0))
        probs = logits.float().softmax(-1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        top = [(names[i] if names else str(i), v.item()) for v, i in zip(values, indices.tolist())]
        yield (str(path), top, info) if details else (str(path), top)
