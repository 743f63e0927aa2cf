"""Classify image files with a saved model (a vitkit or Hugging Face directory).

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


def load_image(path: str | Path, model) -> torch.Tensor:
    """One image file -> a normalised (C, H, W) tensor for `model`."""
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
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({e})") from None
    x = x.view(height, width, -1).permute(2, 0, 1)
    mean = torch.tensor(cfg.get("mean", (0.5,) * in_chans)).view(-1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5,) * in_chans)).view(-1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict_files(model_dir: str | Path, images: Sequence[str | Path], top_k: int = 3):
    """Yield (path, [(label, probability), ...]) for each image, best first."""
    model = from_pretrained(model_dir).eval()
    names = model.pretrained_cfg.get("label_names")
    for path in images:
        probs = model(load_image(path, model).unsqueeze(0)).softmax(-1)[0]
        values, indices = probs.topk(min(top_k, probs.numel()))
        yield str(path), [(names[i] if names else str(i), v.item()) for v, i in zip(values, indices.tolist())]
