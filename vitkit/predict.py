"""Classify image files (video files, for video models) with a saved model (a vitkit or Hugging Face directory).

Preprocessing follows the model's `pretrained_cfg`, as timm's evaluation transform does: resize
the shorter side to img_size / crop_pct (bicubic), centre-crop img_size, scale to [0, 1],
normalise with the model's mean/std; images are converted to greyscale or RGB to match the
model's input channels.
"""

from __future__ import annotations

import math
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


def load_image(path: str | Path, model) -> torch.Tensor:
    """One image file -> a normalised (C, H, W) tensor for `model` (a video model: `load_video`)."""
    if getattr(model.config, "num_frames", None):  # video models (ViViT, TimeSformer, MViT) read videos
        return load_video(path, model)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading image files needs Pillow: pip install 'vitkit[data]'") from None
    cfg = model.pretrained_cfg
    in_chans = model.config.in_chans
    height, width = to_2tuple(model.config.img_size)
    try:
        with Image.open(path) as im:
            im = im.convert("L" if in_chans == 1 else "RGB")
            scale = max(height, width) / cfg.get("crop_pct", 1.0) / min(im.size)
            resized = (max(width, math.floor(im.size[0] * scale)), max(height, math.floor(im.size[1] * scale)))
            im = im.resize(resized, Image.BICUBIC)
            left, top = (im.size[0] - width) // 2, (im.size[1] - height) // 2
            im = im.crop((left, top, left + width, top + height))
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float().div_(255)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as e:  # the header's size alone, before any pixel is decoded
        raise ValueError(f"{path} is refused: {e} (Pillow's guard against decompression bombs). If the image is "
                         f"genuine, downscale it first") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e})") from None
    x = x.view(height, width, -1).permute(2, 0, 1)
    mean = torch.tensor(cfg.get("mean", (0.5,) * in_chans)).view(-1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5,) * in_chans)).view(-1, 1, 1)
    return (x - mean) / std


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
    for path in images:
        info = {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if dynamic:
                logits, exits = model.forward_dynamic(load_image(path, model).unsqueeze(0))
                info = {"exit": int(exits[0]), "gmacs": costs[int(exits[0])]} if details else {}
            else:
                logits = model(load_image(path, model).unsqueeze(0))
        probs = logits.float().softmax(-1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        top = [(names[i] if names else str(i), v.item()) for v, i in zip(values, indices.tolist())]
        yield (str(path), top, info) if details else (str(path), top)
