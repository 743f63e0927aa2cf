"""Batched training augmentation (vitkit.data.augment): shapes, ranges, determinism, exact mixup/cutmix targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitkit.data import augment as A
from vitkit.data.augment import AugmentConfig, BatchAugment, parse_randaugment

ALL = AugmentConfig(
    random_resized_crop=True, hflip=0.5, randaugment="rand-m9-n2-mstd0.5", mixup=0.8, cutmix=1.0, random_erasing=0.25
)
CONFIGS = {
    "crop": AugmentConfig(random_resized_crop=True),
    "flip": AugmentConfig(hflip=0.5),
    "randaugment": AugmentConfig(randaugment="rand-m9-n2"),
    "randaugment_inc": AugmentConfig(randaugment="rand-m9-n3-inc1-mstd101"),
    "erasing": AugmentConfig(random_erasing=1.0),
    "mixup": AugmentConfig(mixup=0.8),
    "cutmix": AugmentConfig(cutmix=1.0),
    "all": ALL,
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 16, c: int = 3, h: int = 28, w: int = 28, seed: int = 0):
    g = gen(seed)
    return torch.rand(b, c, h, w, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("c", [1, 3])
def test_shape_dtype_range(name, c):
    x, y = batch(c=c, h=28, w=32)
    aug = BatchAugment(CONFIGS[name], num_classes=10, label_smoothing=0.1, generator=gen())
    assert aug.active
    x2, y2 = aug(x, y)
    assert x2.shape == x.shape and x2.dtype == x.dtype
    assert x2.min() >= 0 and x2.max() <= 1 and torch.isfinite(x2).all()
    if aug.mixing:
        assert y2.shape == (len(y), 10) and y2.dtype == torch.float32
        torch.testing.assert_close(y2.sum(1), torch.ones(len(y)))
    else:
        assert y2.dtype == torch.int64 and torch.equal(y2, y)
    assert not torch.equal(x2, x)


def test_inactive_is_identity():
    x, y = batch()
    aug = BatchAugment(AugmentConfig(), num_classes=10, label_smoothing=0.1)
    assert not aug.active
    x2, y2 = aug(x, y)
    assert x2 is x and y2 is y and y2.dtype == torch.int64
    assert not BatchAugment(AugmentConfig(mixup=1.0, mix_prob=0.0), 10).active


def test_hflip_p1_is_flip():
    x, y = batch()
    x2, _ = BatchAugment(AugmentConfig(hflip=1.0), 10, generator=gen())(x, y)
    assert torch.equal(x2, x.flip(-1))


def test_hflip_is_per_image():
    x, y = batch(b=64)
    x2, _ = BatchAugment(AugmentConfig(hflip=0.5), 10, generator=gen())(x, y)
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(x2, x)]
    kept = [torch.equal(a, b) for a, b in zip(x2, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


@pytest.mark.parametrize("c", [1, 3])
def test_random_resized_crop_full_is_identity(c):
    x, y = batch(c=c)
    cfg = AugmentConfig(random_resized_crop=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    x2, _ = BatchAugment(cfg, 10, generator=gen())(x, y)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=0)


def test_random_resized_crop_zooms_into_the_image():
    # a horizontal ramp: a crop of width cw starting at column `left`, resized back, is again a ramp whose
    # first and last sample lie inside the original range, and is steeper (zoomed) when the crop is small
    w = 32
    ramp = torch.linspace(0, 1, w).expand(8, 1, w, w).contiguous()
    cfg = AugmentConfig(random_resized_crop=True, scale=(0.1, 0.3))
    x2, _ = BatchAugment(cfg, 10, generator=gen())(ramp, torch.zeros(8, dtype=torch.int64))
    slope = (x2[:, 0, :, -1] - x2[:, 0, :, 0]).mean(1)
    assert (slope < 0.95).all() and (slope > 0).all()
    assert torch.allclose(x2[:, 0], x2[:, 0, :1].expand_as(x2[:, 0]), atol=1e-5)  # rows unchanged: x-only ramp


def test_random_resized_crop_non_square_fallback():
    x, y = batch(h=16, w=64)  # ratio 4 is outside (3/4, 4/3) at scale 1: centre crop fallback
    cfg = AugmentConfig(random_resized_crop=True, scale=(1.0, 1.0))
    x2, _ = BatchAugment(cfg, 10, generator=gen())(x, y)
    assert x2.shape == x.shape and x2.min() >= 0 and x2.max() <= 1


def _recover_lam(y2, y, k, s):
    off, on = s / k, 1 - s + s / k
    i = int(torch.nonzero(y != y.flip(0))[0])
    return float((y2[i, y[i]] - off) / (on - off))


def _hand_targets(y, k, s, lam):
    off, on = s / k, 1 - s + s / k
    eye = torch.full((k, k), off) + torch.eye(k) * (on - off)
    return lam * eye[y] + (1 - lam) * eye[y.flip(0)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_targets(smoothing):
    x, y = batch(b=15)  # odd batch: the middle image mixes with itself
    aug = BatchAugment(AugmentConfig(mixup=0.8), 10, label_smoothing=smoothing, generator=gen(3))
    x2, y2 = aug(x, y)
    lam = _recover_lam(y2, y, 10, smoothing)
    assert 0 < lam < 1
    torch.testing.assert_close(y2, _hand_targets(y, 10, smoothing, lam))
    torch.testing.assert_close(x2, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(y2.sum(1), torch.ones(len(y)))
    # lam is Beta(0.8, 0.8) drawn by NumPy seeded from the generator: the same generator state, the same lam
    g = gen(3)
    g.manual_seed(3)
    torch.rand(2, generator=g)
    seed = int(torch.randint(0, 2**62, (1,), generator=g).item())
    assert lam == pytest.approx(float(np.random.default_rng(seed).beta(0.8, 0.8)), abs=1e-6)


def test_mixup_targets_match_timm():
    from vitkit.compat import make_torchvision_importable

    if not make_torchvision_importable():
        pytest.skip("torchvision not installed")
    mixup = pytest.importorskip("timm.data.mixup")
    x, y = batch(b=16)
    x2, y2 = BatchAugment(AugmentConfig(mixup=1.0), 10, label_smoothing=0.1, generator=gen(1))(x, y)
    lam = _recover_lam(y2, y, 10, 0.1)
    torch.testing.assert_close(y2, mixup.mixup_target(y, 10, lam=lam, smoothing=0.1))


def test_cutmix_box_area_matches_label_weight():
    b, h, w = 16, 28, 32
    x = torch.arange(b, dtype=torch.float32).div(b).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    y = torch.arange(b) % 10
    for seed in range(5):
        x2, y2 = BatchAugment(AugmentConfig(cutmix=1.0), 10, label_smoothing=0.1, generator=gen(seed))(x, y)
        changed = (x2 != x).any(1)  # (B, H, W); every pair differs, so the pasted box shows everywhere
        assert (changed == changed[0]).all()  # one box for the batch
        rows, cols = changed[0].any(1).nonzero(), changed[0].any(0).nonzero()
        area = int(changed[0].sum())
        if area:
            assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a filled rectangle
            torch.testing.assert_close(x2[:, :, changed[0]], x.flip(0)[:, :, changed[0]])
        lam = 1 - area / (h * w)
        torch.testing.assert_close(y2, _hand_targets(y, 10, 0.1, lam))


def test_mix_prob_zero_still_soft_and_switch():
    x, y = batch()
    x2, y2 = BatchAugment(AugmentConfig(mixup=1.0, cutmix=1.0, mix_prob=1e-9), 10, 0.1, generator=gen())(x, y)
    assert torch.equal(x2, x)
    torch.testing.assert_close(y2, _hand_targets(y, 10, 0.1, 1.0))  # smoothed one-hot, lam = 1
    # switch_prob=1: always cutmix (pixels either kept or copied from the partner, never blended)
    x2, _ = BatchAugment(AugmentConfig(mixup=1.0, cutmix=1.0, switch_prob=1.0), 10, generator=gen())(x, y)
    assert ((x2 == x) | (x2 == x.flip(0))).all()


@pytest.mark.parametrize("c", [1, 3])
def test_random_erasing_rectangle(c):
    x, y = batch(b=32, c=c)
    x2, _ = BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen())(x, y)
    erased = 0
    for a, b in zip(x2, x):
        changed = (a != b).any(0)
        if not changed.any():
            continue
        erased += 1
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(changed.sum()) == box  # all changed pixels fill one rectangle
        assert 0.02 * 28 * 28 - 20 <= box <= 28 * 28 / 3 + 20  # h, w rounded
    assert erased == 32


def test_random_erasing_probability():
    x, y = batch(b=200)
    x2, _ = BatchAugment(AugmentConfig(random_erasing=0.25), 10, generator=gen())(x, y)
    n = int((x2 != x).flatten(1).any(1).sum())
    assert 25 <= n <= 75


@pytest.mark.parametrize("spec", ["rand-m9-n2", "rand-m9-n2-mstd0.5", "rand-m10-n3-inc1", "rand-m5-n1-p1.0"])
def test_randaugment_range_and_determinism(spec):
    x, y = batch(b=32)
    cfg = AugmentConfig(randaugment=spec)
    a, _ = BatchAugment(cfg, 10, generator=gen(7))(x, y)
    b, _ = BatchAugment(cfg, 10, generator=gen(7))(x, y)
    c, _ = BatchAugment(cfg, 10, generator=gen(8))(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_randaugment_is_per_image():
    x = torch.rand(1, 3, 28, 28, generator=gen()).expand(32, -1, -1, -1).contiguous()
    x2, _ = BatchAugment(AugmentConfig(randaugment="rand-m9-n1-p1.0"), 10, generator=gen())(x, torch.zeros(32).long())
    distinct = {tuple(v.flatten()[:50].tolist()) for v in x2}
    assert len(distinct) > 5  # different ops/signs per image, not one op for the batch


def test_global_rng_when_no_generator():
    x, y = batch()
    aug = BatchAugment(ALL, 10, label_smoothing=0.1)
    torch.manual_seed(123)
    a = aug(x, y)
    torch.manual_seed(123)
    b = aug(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("bad", ["rand-x9", "augmix-m9", "rand-m9-n0", "rand-m9-n2-p2", "randm9", "", "rand-m-n2"])
def test_bad_randaugment_string(bad):
    with pytest.raises(ValueError, match="RandAugment|randaugment"):
        BatchAugment(AugmentConfig(randaugment=bad), 10)


def test_parse_randaugment():
    s = parse_randaugment("rand-m9-n3-mstd0.5-mmax10-inc1-p0.7")
    assert (s.magnitude, s.num_ops, s.magnitude_std, s.magnitude_max, s.increasing, s.prob) == (
        9,
        3,
        0.5,
        10,
        True,
        0.7,
    )
    assert parse_randaugment("rand-mstd101").magnitude_std == float("inf")


@pytest.mark.parametrize(
    "kw",
    [
        dict(hflip=1.5),
        dict(random_erasing=-0.1),
        dict(mixup=-1.0),
        dict(scale=(0.5, 0.1)),
        dict(ratio=(0.0, 1.0)),
        dict(mix_prob=2.0),
    ],
)
def test_bad_config(kw):
    with pytest.raises(ValueError):
        BatchAugment(AugmentConfig(**kw), 10)


def test_config_from_yaml_lists():
    x, y = batch()
    aug = BatchAugment(AugmentConfig(random_resized_crop=True, scale=[1.0, 1.0], ratio=[1.0, 1.0]), 10)
    torch.testing.assert_close(aug(x, y)[0], x, atol=1e-5, rtol=0)


def test_pixel_ops_match_pil():
    Image = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    a = (np.random.default_rng(0).random((32, 32, 3)) ** 2 * 255).astype(np.uint8)
    img = Image.fromarray(a, "RGB")
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
    one = torch.ones(1)
    cases = [
        (ImageOps.autocontrast(img), A.auto_contrast(x)),
        (ImageOps.equalize(img), A.equalize(x)),
        (ImageOps.posterize(img, 3), A.posterize(x, 3 * one.long())),
        (ImageOps.solarize(img, 100), A.solarize(x, 100 * one)),
        (ImageEnhance.Color(img).enhance(1.7), A.color(x, 1.7 * one)),
        (ImageEnhance.Contrast(img).enhance(0.3), A.contrast(x, 0.3 * one)),
        (ImageEnhance.Brightness(img).enhance(1.7), A.brightness(x, 1.7 * one)),
        (ImageEnhance.Sharpness(img).enhance(0.3), A.sharpness(x, 0.3 * one)),
    ]
    for pil, ours in cases:
        ref = torch.from_numpy(np.asarray(pil, dtype=np.float32)).permute(2, 0, 1)[None] / 255
        torch.testing.assert_close(ours, ref, atol=1.5 / 255, rtol=0)  # PIL rounds to 8 bits


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = batch(b=64)
    cfg = AugmentConfig(random_resized_crop=True, hflip=0.5, randaugment="rand-m9-n2", mixup=0.8, cutmix=1.0)
    a = BatchAugment(cfg, 10, 0.1, generator=gen())(x, y)
    b = BatchAugment(cfg, 10, 0.1, generator=gen())(x.cuda(), y.cuda())
    assert b[0].is_cuda and b[1].is_cuda
    torch.testing.assert_close(b[0].cpu(), a[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(b[1].cpu(), a[1])
    xe, _ = BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen())(x.cuda(), y.cuda())
    assert xe.is_cuda and xe.min() >= 0 and xe.max() <= 1 and not torch.equal(xe.cpu(), x)
    full = torch.full((64, 3, 28, 28), 7.0, device="cuda")  # normalised: standard normal noise on the device
    xn, _ = BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen(), normalised=True)(full, y.cuda())
    noise = xn[xn != 7.0]
    assert xn.is_cuda and noise.numel() > 1000 and noise.min() < 0 and abs(float(noise.std()) - 1) < 0.05


def test_random_erasing_on_normalised_images_is_timms_pixel_mode():
    """normalised=True: the images come normalised (vitkit.data.transforms.worker_pipeline), and random erasing
    fills its box with standard normal noise, as timm's RandomErasing(mode='pixel') does after normalisation:
    the same share of images erased, the same box areas and the same noise, in distribution."""
    from timm.data.random_erasing import RandomErasing

    b, c, h, w = 400, 3, 32, 32
    x = torch.full((b, c, h, w), 7.0)  # a value neither noise produces: the erased pixels are the changed ones
    y = torch.zeros(b, dtype=torch.long)
    ours, _ = BatchAugment(AugmentConfig(random_erasing=0.5), 10, generator=gen(), normalised=True)(x, y)
    torch.manual_seed(0)
    import random

    random.seed(0)
    theirs = RandomErasing(probability=0.5, mode="pixel", device="cpu")(x.clone())

    def stats(out):
        erased = (out != 7.0).any(1)  # (B, H, W)
        areas = erased.flatten(1).sum(1).double()
        noise = out[(out != 7.0)]
        return (areas > 0).double().mean(), areas[areas > 0].mean() / (h * w), noise.mean(), noise.std()

    (share, area, mean, std), (t_share, t_area, t_mean, t_std) = stats(ours), stats(theirs)
    assert abs(share - t_share) < 0.1 and abs(share - 0.5) < 0.1
    assert abs(area - t_area) < 0.03 and 0.12 < area < 0.22  # boxes of 2%-33% of the image, mean about 17.7%
    assert abs(mean) < 0.02 and abs(std - 1) < 0.02 and abs(t_mean) < 0.02 and abs(t_std - 1) < 0.02
    # on [0, 1] images the noise stays in [0, 1)
    unit, _ = BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen())(torch.full((8, c, h, w), 7.0), y[:8])
    assert unit[unit != 7.0].min() >= 0 and unit[unit != 7.0].max() < 1


def test_normalised_batches_refuse_randaugment_and_mix_as_before():
    with pytest.raises(ValueError, match="RandAugment works on images in \\[0, 1\\]"):
        BatchAugment(AugmentConfig(randaugment="rand-m9-n2"), 10, normalised=True)
    x, y = batch()
    cfg = AugmentConfig(mixup=0.8, cutmix=1.0, hflip=0.5)  # linear and geometric ops: the value range is irrelevant
    a, ya = BatchAugment(cfg, 10, generator=gen(3), normalised=True)(x * 4 - 2, y)
    b, yb = BatchAugment(cfg, 10, generator=gen(3))(x, y)
    torch.testing.assert_close(a, b * 4 - 2, rtol=0, atol=1e-5)
    torch.testing.assert_close(ya, yb)


def test_random_erasing_on_unit_images_with_the_later_normalisation_draws_timms_noise():
    """Images in [0, 1] normalised after the augmentation (in-memory datasets, tar shards): given that
    normalisation's mean/std, the erased pixels are standard normal once normalised, as with normalised=True."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.full((200, 3, 32, 32), 7.0)
    y = torch.zeros(200, dtype=torch.long)
    unit, _ = BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen(), mean=mean, std=std)(x, y)
    normed, _ = BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen(), normalised=True)(x, y)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    erased = unit != 7.0
    torch.testing.assert_close(erased, normed != 7.0)  # the same boxes from the same draws
    torch.testing.assert_close(((unit - m) / s)[erased], normed[erased], rtol=0, atol=1e-5)  # the same noise
    with pytest.raises(ValueError, match="mean and std together"):
        BatchAugment(AugmentConfig(random_erasing=1.0), 10, mean=mean)
    with pytest.raises(ValueError, match="with normalised=True leave them out"):
        BatchAugment(AugmentConfig(random_erasing=1.0), 10, normalised=True, mean=mean, std=std)
    with pytest.raises(ValueError, match="3 channels but the images have 1"):
        BatchAugment(AugmentConfig(random_erasing=1.0), 10, generator=gen(), mean=mean, std=std)(x[:, :1], y)
