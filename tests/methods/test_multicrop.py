"""Multi-crop views (vitkit/methods/multicrop.py): sizes, crop geometry, photometric ops, determinism."""

import math

import pytest
import torch

from vitkit.methods.multicrop import (
    MultiCrop,
    ViewSpec,
    adjust_hue,
    crop_boxes,
    dino_view_specs,
    gaussian_blur,
    msn_view_specs,
    resized_crop,
    view_size,
)


def test_view_sizes_follow_the_papers_ratio_rounded_to_the_patch():
    assert view_size(224, 96, 16) == 96 and view_size(224, 224, 16) == 224
    assert view_size(28, 96, 4) == 12 and view_size(28, 224, 4) == 28
    assert view_size(8, 96, 2) == 4 and view_size(8, 96, 16) == 16  # never below one patch
    specs = dino_view_specs(224, num_local=8, patch_size=16)
    assert [s.size for s in specs] == [224, 224] + [96] * 8
    assert [s.blur for s in specs[:3]] == [1.0, 0.1, 0.5] and [s.solarize for s in specs[:3]] == [0.0, 0.2, 0.0]
    assert specs[0].scale == (0.4, 1.0) and specs[2].scale == (0.05, 0.4)
    m = msn_view_specs(224, num_focal=10, patch_size=16)
    assert len(m) == 12 and m[0].scale == (0.3, 1.0) and m[2].scale == (0.05, 0.3) and m[2].size == 96
    assert (
        m[0].brightness == pytest.approx(0.4)
        and m[0].saturation == pytest.approx(0.4)
        and m[0].hue == pytest.approx(0.1)
    )


def test_crop_boxes_respect_scale_ratio_and_bounds():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(2000, 28, 28, (0.05, 0.4), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    frac = h * w / 784
    assert frac.min() >= 0.03 and frac.max() <= 0.45  # rounding to whole pixels widens the range a little
    ratio = w / h
    assert ratio.min() >= 0.6 and ratio.max() <= 1.6


def test_resized_crop_is_exact_for_the_whole_image_and_for_a_half():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    torch.testing.assert_close(resized_crop(x, whole, 8), x)
    left_half = torch.tensor([[0.0, 0.0, 8.0, 4.0]])  # top, left, height, width
    out = resized_crop(x, left_half, 4)  # 8x4 crop to 4x4: rows averaged pairwise... sampled at row centres
    torch.testing.assert_close(out[0, 0, :, :], x[0, 0, 0::2, :4] + 4.0)  # bilinear between rows 2i, 2i+1


def test_hue_blur_and_identity_ops():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 6, 6, generator=g)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(adjust_hue(x, torch.ones(4)), x, atol=1e-5, rtol=0)  # a full turn
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    torch.testing.assert_close(adjust_hue(red, torch.tensor([1 / 3])).flatten(), torch.tensor([0.0, 1.0, 0.0]))
    const = torch.full((2, 1, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([0.5, 1.5])), const)
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    out = gaussian_blur(impulse, torch.tensor([1.0]))
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 4, 4].item() == pytest.approx((1 / math.sqrt(2 * math.pi)) ** 2, rel=0.02)


@pytest.mark.parametrize("channels", [1, 3])
def test_multicrop_shapes_range_and_determinism(channels):
    mean, std = (0.5,) * channels, (0.25,) * channels
    x = (torch.rand(5, channels, 28, 28, generator=torch.Generator().manual_seed(2)) - 0.5) / 0.25
    specs = dino_view_specs(28, num_local=3, patch_size=4)
    views = MultiCrop(specs, mean, std, torch.Generator().manual_seed(3))(x)
    again = MultiCrop(specs, mean, std, torch.Generator().manual_seed(3))(x)
    assert [tuple(v.shape) for v in views] == [(5, channels, 28, 28)] * 2 + [(5, channels, 12, 12)] * 3
    for v, w in zip(views, again):
        torch.testing.assert_close(v, w)
        raw = v * 0.25 + 0.5
        assert torch.isfinite(v).all() and raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert not torch.allclose(views[0], views[1])


def test_no_augmentation_spec_returns_the_image():
    x = torch.rand(3, 3, 16, 16)
    plain = ViewSpec(16, (1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, jitter=0.0, greyscale=0.0, blur=0.0)
    (out,) = MultiCrop([plain], (0.0,) * 3, (1.0,) * 3)(x)
    torch.testing.assert_close(out, x)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="scale"):
        ViewSpec(8, (0.5, 0.1))
    with pytest.raises(ValueError, match="channels"):
        MultiCrop(dino_view_specs(8, 1), (0.5,), (0.5,))(torch.rand(2, 3, 8, 8))
