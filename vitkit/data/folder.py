"""Image folders: one sub-folder per class, images decoded lazily with Pillow (a torch `Dataset`).

`scan_image_folder(root)` lists `root/<class>/**/<image file>` without opening any file (classes
sorted by name, files sorted by path, hidden files ignored, image extensions only, as torchvision's
`ImageFolder`): only regular files, each directory entered once (symlink loops cut), each file once
(links to the same inode de-duplicated), and a class folder without images is an error naming it.
Listing 1.28M files costs a directory read per folder, not a decode per file.

`ImageFolderDataset[i]` decodes one image, converts it (RGBA/LA/transparent palettes composited
over white; 3 channels, or 1 for greyscale folders), resizes the shorter side to `img_size` and
centre-crops to (img_size, img_size), and returns (float32 (C, H, W) in [0, 1], label). An
unreadable file is met here, in the DataLoader worker that loads it: it is logged by name on the
"vitkit" logger and the next image takes its place (as timm's `ImageDataset`; after
`MAX_CONSECUTIVE_ERRORS` unreadable files in a row it stops), or, with `strict=True`, it raises
`ValueError` naming the file. Picklable, so it works with DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger("vitkit")

__all__ = ["FolderScanError", "IMG_EXTENSIONS", "ImageFolderDataset", "probe_modes", "scan_image_folder"]

_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("image folders are read with Pillow: pip install 'vitkit[data]' (or pillow)") from None
    return Image, ImageOps


# extensions listed as images: torchvision's IMG_EXTENSIONS plus .pbm and .gif (Pillow reads both), any case
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_CONSECUTIVE_ERRORS = 10  # unreadable images in a row before ImageFolderDataset stops (as timm's ImageDataset)


class FolderScanError(FileNotFoundError):
    """An image folder cannot be listed as `root/<class>/<images>` (no class folders, an empty class, ...)."""


def _list_class(
    class_dir: str,
    reserved: dict[tuple[int, int], str],
    seen_dirs: dict[tuple[int, int], str],
    problems: list[str],
    extensions: Sequence[str],
) -> tuple[list[tuple[str, tuple[int, int]]], list[str]]:
    """([(path, file id)], names without one of `extensions`) under `class_dir`, sorted, by listing only.

    Directories are identified by (st_dev, st_ino): a directory met twice (a symlink loop such as
    `cls/loop -> ..`, or a link to another class folder or the root) is not entered again. Only regular
    files are listed; FIFOs, sockets, devices and broken links are reported in `problems`, never opened.
    """
    files: list[tuple[str, tuple[int, int]]] = []
    other: list[str] = []
    stack = [class_dir]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append(f"{d}: cannot list ({e.strerror or e})")
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=True):
                    sub = e.stat(follow_symlinks=True)
                    key = (sub.st_dev, sub.st_ino)
                    owner = reserved.get(key) or seen_dirs.get(key)
                    if owner is not None:
                        problems.append(f"{e.path}: a link back to {owner} (a loop or another class); not entered")
                        continue
                    seen_dirs[key] = e.path
                    subdirs.append(e.path)
                    continue
                ext_ok = os.path.splitext(e.name)[1].lower() in extensions
                if e.is_file(follow_symlinks=True):
                    if not ext_ok:
                        other.append(e.path)
                        continue
                    if e.is_symlink():
                        s = e.stat(follow_symlinks=True)
                        fid = (s.st_dev, s.st_ino)
                    else:  # the inode from the directory entry: no stat call per file
                        fid = (st.st_dev, e.inode())
                    files.append((e.path, fid))
                elif ext_ok:
                    kind = "a broken link" if e.is_symlink() and not os.path.exists(e.path) else "not a regular file"
                    problems.append(f"{e.path}: {kind} (a FIFO, socket or device is never opened); skipped")
            except OSError as err:
                problems.append(f"{e.path}: {err.strerror or err}; skipped")
        stack.extend(reversed(subdirs))  # depth first, in sorted order
    return files, other


def scan_image_folder(
    root: str | Path,
    strict: bool = False,
    classes: Sequence[str] | None = None,
    *,
    extensions: Sequence[str] = IMG_EXTENSIONS,
    kind: str = "image",
) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples [(path, label)], classes) of `root/<class>/**/<image files>`, by listing only.

    As torchvision's `ImageFolder` / timm's `ImageDataset`: classes are the sorted sub-folder names
    (hidden ones ignored), files are those with an image extension (`IMG_EXTENSIONS`, any case), and
    nothing is decoded here: an unreadable file is met, reported by name and skipped (or an error
    with `strict=True`) when `ImageFolderDataset` loads it. Only regular files are listed (a FIFO
    named `x.png` would block a reader forever), directories are entered once each (symlink loops
    are cut), and a file reached twice (a symlink or hard link to the same inode) is listed once,
    under the first class that has it, so it cannot land in two splits. Whatever is skipped is
    logged on the "vitkit" logger, or raises `FolderScanError` with `strict=True`.

    A class folder with no image files is an error naming it (torchvision's `allow_empty=False`).
    `extensions` (lower case, with the dot) and `kind` ("image" in messages) serve other media: the
    video folder lists its files with them.
    `classes` fixes the class list (val/test folders use the train classes); a class folder that is
    not in it is an error.
    """
    root = Path(root)
    try:
        with os.scandir(root) as it:
            found = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=True))
    except OSError as e:
        raise FolderScanError(f"cannot list {root}: {e.strerror or e}") from None
    if not found:
        raise FolderScanError(f"{root} has no class sub-folders: expected {root}/<class name>/<{kind} files>")
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"{root} has class folders that the train split lacks: {extra}")
    index = {c: i for i, c in enumerate(classes)}
    reserved: dict[tuple[int, int], str] = {}
    for d in [root] + [root / c for c in found]:
        s = os.stat(d)
        reserved.setdefault((s.st_dev, s.st_ino), str(d))
    seen_dirs: dict[tuple[int, int], str] = {}
    seen_files: dict[tuple[int, int], str] = {}
    problems: list[str] = []
    samples: list[tuple[str, int]] = []
    empty, ignored = [], []
    for c in found:
        files, other = _list_class(str(root / c), reserved, seen_dirs, problems, tuple(extensions))
        ignored += other
        n = 0
        for path, fid in files:
            first = seen_files.setdefault(fid, path)
            if first != path:
                problems.append(f"{path}: the same file as {first} (a link); listed once")
                continue
            samples.append((path, index[c]))
            n += 1
        if n == 0:
            empty.append(str(root / c))
    if problems:
        if strict:
            raise FolderScanError(
                f"{root}: {len(problems)} problem(s) while listing (strict=True): "
                + "; ".join(problems[:5])
                + ("; ..." if len(problems) > 5 else "")
            )
        for p in problems:
            logger.warning("%s", p)
    if ignored:
        logger.warning(
            "%s: ignored %d file(s) without a listed extension (%s), e.g. %s",
            root,
            len(ignored),
            " ".join(extensions),
            ", ".join(ignored[:3]),
        )
    if empty:
        raise FolderScanError(
            f"{root}: class folder(s) with no {kind} files: {', '.join(empty)}. Supported extensions: "
            f"{', '.join(extensions)}. Add {kind}s or remove the folder(s) (each sub-folder is a class)."
        )
    return samples, list(classes)


def probe_modes(paths: Sequence[str]) -> set[str]:
    """The Pillow modes of `paths`, from their headers (no pixel data is decoded); unreadable files are left out."""
    Image, _ = _pil()
    modes = set()
    for path in paths:
        try:
            with Image.open(path) as im:
                modes.add(im.mode)
        except Exception:  # noqa: BLE001 - reported by name when the loader meets the file
            continue
    return modes


def channels_for(modes: set[str]) -> int:
    """1 when every image is greyscale, else 3."""
    return 1 if modes and modes <= _GREY_MODES else 3


def folder_transform(img_size: tuple[int, int] | None):
    """The geometry an image folder applies by default: the shorter side resized (bicubic) to the size and
    centre-cropped, the whole image kept (crop_pct 1.0); None keeps the decoded size."""
    if img_size is None:
        return None
    from .transforms import ImageTransform

    return ImageTransform(img_size, "bicubic", crop_pct=1.0, crop_mode="center", normalize=False)


def load_image(path: str, in_chans: int, img_size: tuple[int, int] | None, preprocess=None) -> np.ndarray:
    """(H, W, C) uint8: decoded by vitkit's one decoder (vitkit.data.transforms.load_image: EXIF orientation,
    16-bit and float images scaled, alpha composited over white, L or RGB), then resized and cropped by
    `preprocess` (an `ImageTransform` with normalize=False), by default `folder_transform(img_size)`."""
    from .transforms import load_image as decode

    im = decode(path, in_chans)
    preprocess = preprocess if preprocess is not None else folder_transform(img_size)
    if preprocess is None:
        a = np.asarray(im, dtype=np.uint8)
        return a[:, :, None] if a.ndim == 2 else a
    return preprocess.to_uint8(im).permute(1, 2, 0).numpy()


class ImageFolderDataset(Dataset):
    """Lazily decoded images: `ds[i]` -> (float32 (C, H, W) in [0, 1], label int).

    Also `len(ds)`, `ds.labels` (int64 tensor), `ds.classes`, `ds.samples` [(path, label)] and
    `ds.load_batch(idx)` (decodes and stacks in this process). `transform`, if given, is applied
    to the float tensor (augmentation hook for the engine). `preprocess` resizes and crops each
    decoded image (a `vitkit.data.ImageTransform` with normalize=False; default
    `folder_transform(img_size)`); `vitkit train` / `eval` set it from the model's data config.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        in_chans: int,
        img_size: tuple[int, int] | None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preprocess=None,
        strict: bool = False,
    ):
        self.samples = list(samples)
        self.strict = strict
        self.classes = list(classes)
        self.in_chans = in_chans
        self.img_size = img_size
        self.transform = transform
        self.preprocess = preprocess if preprocess is not None else folder_transform(img_size)
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, i: int) -> torch.Tensor:
        path, _ = self.samples[i]
        try:
            a = load_image(path, self.in_chans, self.img_size, self.preprocess)
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(f"cannot decode {path}: {type(e).__name__}: {e}") from e
        return torch.from_numpy(a.copy()).permute(2, 0, 1)

    def load_readable(self, i: int) -> tuple[torch.Tensor, int]:
        """(uint8 (C, H, W), label) of image i, or of the next readable one when i cannot be decoded
        (logged by name; `strict=True` raises `ValueError` naming the file instead)."""
        for attempt in range(min(MAX_CONSECUTIVE_ERRORS, len(self.samples))):
            j = (i + attempt) % len(self.samples)
            try:
                return self.load_uint8(j), self.samples[j][1]
            except RuntimeError as e:
                path = self.samples[j][0]
                reason = str(e.__cause__ or e)
                if self.strict:
                    raise ValueError(
                        f"{path} is not a readable image ({type(e.__cause__ or e).__name__}: {reason}); "
                        "remove it, or pass strict=False (--data.strict=false) to skip it"
                    ) from e
                logger.warning("skipping %s: not a readable image (%s); the next image takes its place", path, reason)
        raise RuntimeError(
            f"{min(MAX_CONSECUTIVE_ERRORS, len(self.samples))} unreadable images in a row from "
            f"{self.samples[i][0]} on: is this an image folder? (see the warnings above)"
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, label = self.load_readable(i)
        x = x.float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, label

    def load_batch(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and stack (no `batch` method on purpose: `hasattr(ds, "batch")` marks in-memory data)."""
        idx = torch.as_tensor(idx, dtype=torch.long).flatten().tolist()
        items = [self[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)

    def subset(self, idx: torch.Tensor) -> "ImageFolderDataset":
        idx = torch.as_tensor(idx, dtype=torch.long).tolist()
        return ImageFolderDataset(
            [self.samples[i] for i in idx],
            self.classes,
            self.in_chans,
            self.img_size,
            self.transform,
            self.preprocess,
            self.strict,
        )

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({len(self)} images, {len(self.classes)} classes, "
            f"in_chans={self.in_chans}, img_size={self.img_size})"
        )
