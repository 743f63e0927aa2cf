"""Video files: decoding with PyAV, frame sampling, short-side resize and crop, class folders.

    clip = load_clip("bikes.mp4", num_frames=8, img_size=224)          # (3, 8, 224, 224) in [0, 1]
    splits = load_dataset("video_folder", "~/clips", num_frames=8)   # root/<class>/<video files>

Decoding: PyAV (`pip install 'vitkit[video]'`), frames as RGB uint8 (or greyscale with
`in_chans=1`). Only the frames up to the last sampled index are decoded.

Frame sampling (`sample_frame_indices`), the two schemes video papers use:
    - `stride=None` -- uniform over the whole video (TSN / ViViT's "uniform frame sampling"):
      the video is cut into `num_frames` equal segments and the middle frame of each is taken, or
      a random frame of each with `random_offset=True` (training);
    - `stride=k` -- a dense clip of `num_frames` frames every k-th frame (TimeSformer 8x32: k=32/8,
      MViT 16x4: k=4): centred in the video, or at a random start with `random_offset=True`.
      A video shorter than the clip repeats its last frame.
Spatial: the shorter side is resized to `short_side` (default img_size / crop_pct, as timm's eval
transform; bilinear, antialiased), then a centre crop (or a random crop, training) of img_size.

Class folders: `root/<class>/**/<video>` (suffixes in `VIDEO_SUFFIXES`, hidden files ignored).
`scan_video_folder` opens every file's header: a file PyAV cannot open, or that has no video
stream or no frames, is reported by name on the "vitkit" logger and skipped (`strict=True`: a
`VideoDecodeError` naming it). A file that fails later, while decoding frames, raises
`VideoDecodeError` with its name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .folder import scan_image_folder

logger = logging.getLogger("vitkit")

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoDecodeError",
    "VideoFolderDataset",
    "count_frames",
    "load_clip",
    "read_frames",
    "resize_and_crop",
    "sample_frame_indices",
    "scan_video_folder",
]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv", ".gif"}
INSTALL_AV = "pip install 'vitkit[video]' (or pip install av)"


class VideoDecodeError(ValueError):
    """A video file could not be opened or decoded (the message names the file)."""


def _av():
    try:
        import av
    except ImportError:
        raise ImportError(f"video files are decoded with PyAV: {INSTALL_AV}") from None
    return av


def count_frames(path: str | Path) -> int:
    """Number of frames of the first video stream (from the header; counted by demuxing if absent)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream (is it an audio file?)")
            stream = container.streams.video[0]
            n = stream.frames
            if n <= 0:  # some containers (webm, some avi) do not store it: count the packets
                n = sum(1 for p in container.demux(stream) if p.size > 0)
    except VideoDecodeError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"video {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 -- PyAV raises InvalidDataError, OSError, ... for bad files
        raise VideoDecodeError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
    if n <= 0:
        raise VideoDecodeError(f"{path}: the video stream has no frames")
    return n


def read_frames(path: str | Path, indices: Sequence[int] | None = None, in_chans: int = 3) -> torch.Tensor:
    """Decode the frames at `indices` (all when None; repeats allowed) -> uint8 (T, C, H, W)."""
    av = _av()
    wanted = None if indices is None else sorted({int(i) for i in indices})
    last = None if wanted is None else wanted[-1]
    fmt = "gray" if in_chans == 1 else "rgb24"
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream (is it an audio file?)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            keep = None if wanted is None else set(wanted)
            for i, frame in enumerate(container.decode(stream)):
                if keep is None or i in keep:
                    frames[i] = frame.to_ndarray(format=fmt)
                if last is not None and i >= last:
                    break
    except VideoDecodeError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"video {path} does not exist") from None
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoDecodeError(f"{path}: no frame could be decoded")
    if indices is None:
        order = sorted(frames)
    else:  # a header can overstate the frame count: fall back to the last decoded frame
        have = max(frames)
        order = [min(int(i), have) for i in indices]
        order = [i if i in frames else max(k for k in frames if k <= i) for i in order]
    x = torch.from_numpy(np.stack([frames[i] for i in order]))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (T, C, H, W)


def sample_frame_indices(
    num_total: int,
    num_frames: int,
    stride: int | None = None,
    random_offset: bool = False,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Frame indices of one clip (see the module docstring): uniform over the video
    (`stride=None`, TSN segments) or every `stride`-th frame; centred, or random with `random_offset`."""
    if num_total < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame to sample from and to sample, got {num_total} and {num_frames}")
    if stride is None:
        edges = torch.linspace(0, num_total, num_frames + 1, dtype=torch.float64)
        lo, width = edges[:-1], edges[1:] - edges[:-1]
        offset = torch.rand(num_frames, generator=generator, dtype=torch.float64) if random_offset else 0.5
        return (lo + offset * width).floor().clamp_(0, num_total - 1).long().tolist()
    if stride < 1:
        raise ValueError(f"stride must be a positive number of frames, got {stride}")
    span = (num_frames - 1) * stride + 1
    room = max(num_total - span, 0)
    start = int(torch.randint(room + 1, (1,), generator=generator)) if random_offset else room // 2
    return [min(start + i * stride, num_total - 1) for i in range(num_frames)]


def resize_and_crop(
    frames: torch.Tensor,
    img_size: tuple[int, int],
    short_side: int | None = None,
    random_crop: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (T, C, H, W) -> float (T, C, h, w) in [0, 1]: shorter side resized to `short_side`
    (default max(img_size)), bilinear with antialias, then a centre (or random) crop of `img_size`."""
    h, w = img_size
    short_side = short_side or max(h, w)
    H, W = frames.shape[-2:]
    scale = short_side / min(H, W)
    size = (max(h, round(H * scale)), max(w, round(W * scale)))
    x = frames.float().div_(255)
    if size != (H, W):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    if random_crop:
        top = int(torch.randint(size[0] - h + 1, (1,), generator=generator))
        left = int(torch.randint(size[1] - w + 1, (1,), generator=generator))
    else:
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return x[..., top : top + h, left : left + w]


def load_clip(
    path: str | Path,
    num_frames: int,
    img_size: int | tuple[int, int],
    *,
    stride: int | None = None,
    crop_pct: float = 1.0,
    in_chans: int = 3,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One video file -> float (C, T, H, W) in [0, 1]: frames sampled (random offset and crop when
    `train`), shorter side resized to img_size / crop_pct, cropped to img_size."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    indices = sample_frame_indices(count_frames(path), num_frames, stride, random_offset=train, generator=generator)
    frames = read_frames(path, indices, in_chans=in_chans)
    short = int(max(size) / crop_pct)
    return resize_and_crop(frames, size, short, random_crop=train, generator=generator).transpose(0, 1)


# ------------------------------------------------------------------------------------ folders
def _probe(path: str) -> str | None:
    try:
        count_frames(path)
        return None
    except (VideoDecodeError, FileNotFoundError) as e:
        return str(e)


def scan_video_folder(
    root: str | Path, strict: bool = False, classes: Sequence[str] | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples [(path, label)], classes) for `root/<class>/**/<video>`, listed as `scan_image_folder`
    lists images; every listed video's container is then probed, and unreadable files are logged by
    name and skipped (or raise with `strict`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist (expected {root}/<class>/<video files>)")
    # listed as image folders are: regular files only (a FIFO is never probed), symlink loops cut, links once,
    # empty classes an error
    candidates, classes = scan_image_folder(root, strict, classes, extensions=sorted(VIDEO_SUFFIXES), kind="video")
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(pool.map(_probe, [p for p, _ in candidates]))
    bad = [msg for msg in problems if msg]
    if bad and strict:
        raise VideoDecodeError(f"{len(bad)} unreadable video(s) in {root}: " + "; ".join(bad[:5]))
    for msg in bad:
        logger.warning("skipping an unreadable video: %s", msg)
    samples = [s for s, msg in zip(candidates, problems) if not msg]
    if not samples:
        raise FileNotFoundError(f"{root} holds no readable video files (suffixes {sorted(VIDEO_SUFFIXES)})")
    return samples, list(classes)


class VideoFolderDataset(Dataset):
    """(clip float (C, T, H, W) in [0, 1], label) per video; `train` samples a random offset and
    crop (from torch's global RNG, so DataLoader workers draw different ones), else the centred
    clip and crop. Picklable, so it works with DataLoader workers."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        num_frames: int,
        img_size: tuple[int, int],
        stride: int | None = None,
        in_chans: int = 3,
        crop_pct: float = 1.0,
        train: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.num_frames, self.img_size, self.stride = num_frames, tuple(img_size), stride
        self.in_chans, self.crop_pct, self.train = in_chans, crop_pct, train
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        clip = load_clip(
            path,
            self.num_frames,
            self.img_size,
            stride=self.stride,
            crop_pct=self.crop_pct,
            in_chans=self.in_chans,
            train=self.train,
        )
        return clip, label

    def subset(self, idx: torch.Tensor, train: bool | None = None) -> VideoFolderDataset:
        return VideoFolderDataset(
            [self.samples[int(i)] for i in idx],
            self.classes,
            self.num_frames,
            self.img_size,
            self.stride,
            self.in_chans,
            self.crop_pct,
            self.train if train is None else train,
        )


VIDEO_FOLDER_STATS_SAMPLE = 16  # clips decoded (evenly spaced over the train split) for mean/std
_LAYOUT = "data_dir/train/<class>/<videos> (+ optional val/ and test/), or a flat data_dir/<class>/<videos>"


def load_video_folder(
    data_dir,
    val_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    img_size=None,
    test_fraction: float = 0.2,
    *,
    num_frames: int = 8,
    stride: int | None = None,
):
    """`load_dataset("video_folder", data_dir)`: clips of `num_frames` frames at `img_size`
    (default 224), uniform sampling (or every `stride`-th frame); the train split samples a random
    offset and crop per epoch, val/test the centred clip. Missing val/test splits are carved
    (stratified, seeded); mean/std come from up to 16 evenly spaced train clips."""
    from .datasets import DatasetSplits
    from .splits import channel_stats, stratified_split

    if data_dir is None:
        raise ValueError(f"video_folder: pass data_dir=, the folder laid out as {_LAYOUT}")
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"video_folder: data_dir {d} does not exist (expected {_LAYOUT})")
    if img_size is None:
        size = (224, 224)
    else:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if (d / "train").is_dir():
        samples, classes = scan_video_folder(d / "train", strict)
        given = {s: scan_video_folder(d / s, strict, classes)[0] for s in ("val", "test") if (d / s).is_dir()}
    else:
        samples, classes = scan_video_folder(d, strict)
        given = {}

    def make(s, train=False):
        return VideoFolderDataset(s, classes, num_frames, size, stride, train=train)

    full = make(samples, train=True)
    if "test" in given:
        train, test = full, make(given["test"])
    else:
        keep, held = stratified_split(full.labels, test_fraction, seed)
        train, test = full.subset(keep), full.subset(held, train=False)
    if "val" in given:
        val = make(given["val"])
    elif val_fraction > 0:
        keep, held = stratified_split(train.labels, val_fraction, seed + 1)
        train, val = train.subset(keep), train.subset(held, train=False)
    else:
        val = None
    n = len(train)
    if n == 0:
        raise ValueError(f"video_folder: the train split of {d} is empty")
    probe = train.subset(torch.arange(n), train=False)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, VIDEO_FOLDER_STATS_SAMPLE))})
    mean, std = channel_stats(torch.stack([probe[i][0] for i in picks]))
    return DatasetSplits("video_folder", train, val, test, classes, mean, std, 3, size)
