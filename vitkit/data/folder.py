"""Image folders: one sub-folder per class, images decoded lazily with Pillow (a torch `Dataset`).

`scan_image_folder(root)` lists `root/<class>/**/<file>` (classes sorted by name, files sorted by
path, hidden files ignored) and checks every file by decoding it (JPEGs in Pillow's fast reduced
"draft" mode), in threads. A file that is not a readable image (corrupt, truncated, a .txt, ...) is
reported by name on the "vitkit" logger and skipped, or raises `ValueError` naming it with
`strict=True`.

`ImageFolderDataset[i]` decodes one image, converts it (RGBA/LA/transparent palettes composited
over white; 3 channels, or 1 when every image of the folder is greyscale), resizes the shorter
side to `img_size` and centre-crops to (img_size, img_size), and returns (float32 (C, H, W) in
[0, 1], label). Picklable, so it works with DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger("vitkit")

__all__ = ["ImageFolderDataset", "scan_image_folder"]

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("image folders are read with Pillow: pip install 'vitkit[data]' (or pillow)") from None
    return Image, ImageOps


def _check(path: str) -> tuple[str | None, str | None]:
    """(mode, None) for a readable image, (None, reason) otherwise."""
    Image, _ = _pil()
    try:
        with Image.open(path) as im:
            mode = im.mode
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return mode, None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        return None, f"{type(e).__name__}: {e}"


def scan_image_folder(
    root: str | Path, strict: bool = False, classes: Sequence[str] | None = None
) -> tuple[list[tuple[str, int]], list[str], set[str]]:
    """(samples [(path, label)], classes, image modes seen) for `root/<class>/...`.

    `classes` fixes the class list (for val/test folders, which must use the train classes); a
    class folder that is not in it is an error.
    """
    root = Path(root)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(
            f"{root} has no class sub-folders: an image folder is {root}/<class name>/<image files>"
        )
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"{root} has class folders that the train split lacks: {extra}")
    index = {c: i for i, c in enumerate(classes)}
    candidates: list[tuple[str, int]] = []
    for c in found:
        for dirpath, dirnames, filenames in os.walk(root / c, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            candidates += [(os.path.join(dirpath, f), index[c]) for f in sorted(filenames) if not f.startswith(".")]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_check, [p for p, _ in candidates], chunksize=16))
    samples, modes, bad = [], set(), []
    for (path, label), (mode, reason) in zip(candidates, results):
        if mode is None:
            if strict:
                raise ValueError(f"{path} is not a readable image ({reason}); remove it, or pass strict=False to skip it")
            logger.warning("skipping %s: not a readable image (%s)", path, reason)
            bad.append(path)
        else:
            samples.append((path, label))
            modes.add(mode)
    if bad:
        logger.warning("%s: skipped %d unreadable file(s) of %d", root, len(bad), len(candidates))
    if not samples:
        raise FileNotFoundError(f"{root} has no readable images under its class folders {found}")
    return samples, list(classes), modes


def channels_for(modes: set[str]) -> int:
    """1 when every image is greyscale, else 3."""
    return 1 if modes and modes <= _GREY_MODES else 3


def load_image(path: str, in_chans: int, img_size: tuple[int, int] | None) -> np.ndarray:
    """(H, W, C) uint8: alpha composited over white, converted to L or RGB, resized + centre-cropped."""
    Image, ImageOps = _pil()
    with Image.open(path) as im:
        if img_size is not None and im.format == "JPEG":
            im.draft("RGB" if in_chans == 3 else "L", (img_size[1], img_size[0]))
        im.load()
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit greyscale: scale to 8 bit
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
            im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        im = im.convert("L" if in_chans == 1 else "RGB")
        if img_size is not None and im.size != (img_size[1], img_size[0]):
            im = ImageOps.fit(im, (img_size[1], img_size[0]), method=Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


class ImageFolderDataset(Dataset):
    """Lazily decoded images: `ds[i]` -> (float32 (C, H, W) in [0, 1], label int).

    Also `len(ds)`, `ds.labels` (int64 tensor), `ds.classes`, `ds.samples` [(path, label)] and
    `ds.load_batch(idx)` (decodes and stacks in this process). `transform`, if given, is applied
    to the float tensor (augmentation hook for the engine).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], in_chans: int,
                 img_size: tuple[int, int] | None, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.samples = list(samples)
        self.classes = list(classes)
        self.in_chans = in_chans
        self.img_size = img_size
        self.transform = transform
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, i: int) -> torch.Tensor:
        path, _ = self.samples[i]
        try:
            a = load_image(path, self.in_chans, self.img_size)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"cannot decode {path}: {type(e).__name__}: {e}") from e
        return torch.from_numpy(a.copy()).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.load_uint8(i).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.samples[i][1]

    def load_batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and stack (no `batch` method on purpose: `hasattr(ds, "batch")` marks in-memory data)."""
        idx = torch.as_tensor(idx, dtype=torch.long).flatten().tolist()
        xs = [self[i][0] for i in idx]
        return torch.stack(xs), self.labels[idx]

    def subset(self, idx: torch.Tensor) -> "ImageFolderDataset":
        idx = torch.as_tensor(idx, dtype=torch.long).tolist()
        return ImageFolderDataset([self.samples[i] for i in idx], self.classes, self.in_chans, self.img_size,
                                  self.transform)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({len(self)} images, {len(self.classes)} classes, "
                f"in_chans={self.in_chans}, img_size={self.img_size})")
