"""Position-embedding resampling: identity at the same size, prefix tokens untouched, timm's
numerics, constants stay constant, clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.layers import resample_abs_pos_embed

D = 8


def posemb(prefix: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, prefix + h * w, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_identity_when_sizes_equal(prefix):
    pe = posemb(prefix, 3, 5)
    out = resample_abs_pos_embed(pe, (3, 5), old_size=(3, 5), num_prefix_tokens=prefix)
    assert torch.equal(out, pe)
    sq = posemb(prefix, 4, 4)
    assert torch.equal(resample_abs_pos_embed(sq, (4, 4), num_prefix_tokens=prefix), sq)


@pytest.mark.parametrize("prefix", [0, 1, 2])
@pytest.mark.parametrize("new", [(6, 6), (2, 2), (3, 7)])
def test_prefix_tokens_unchanged_and_shape(prefix, new):
    pe = posemb(prefix, 4, 4)
    out = resample_abs_pos_embed(pe, new, num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + new[0] * new[1], D)
    assert torch.equal(out[:, :prefix], pe[:, :prefix])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_keeps_dtype(dtype):
    pe = posemb(1, 4, 4).to(dtype)
    assert resample_abs_pos_embed(pe, (6, 6)).dtype == dtype


@pytest.mark.parametrize(
    "old, new",
    [
        ((14, 14), (24, 24)),
        ((24, 24), (14, 14)),
        ((7, 7), (4, 9)),
        ((4, 6), (8, 3)),
        ((5, 5), (5, 5)),
        ((3, 8), (6, 16)),
    ],
)
@pytest.mark.parametrize("prefix", [0, 1, 2])
@pytest.mark.parametrize("interpolation, antialias", [("bicubic", True), ("bilinear", False)])
def test_matches_timm(old, new, prefix, interpolation, antialias):
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed as timm_resample

    pe = posemb(prefix, *old, seed=sum(old) + prefix)
    ours = resample_abs_pos_embed(
        pe, new, old_size=old, num_prefix_tokens=prefix, interpolation=interpolation, antialias=antialias
    )
    ref = timm_resample(
        pe, list(new), old_size=list(old), num_prefix_tokens=prefix, interpolation=interpolation, antialias=antialias
    )
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    old=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    new=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    prefix=st.integers(0, 2),
    value=st.floats(-3, 3, allow_nan=False),
)
def test_constant_stays_constant(old, new, prefix, value):
    pe = torch.full((1, prefix + old[0] * old[1], D), value)
    pe[:, :prefix] = 42.0
    out = resample_abs_pos_embed(pe, new, old_size=old, num_prefix_tokens=prefix)
    assert out.shape == (1, prefix + new[0] * new[1], D)
    torch.testing.assert_close(out[:, prefix:], torch.full_like(out[:, prefix:], value), atol=1e-5, rtol=1e-5)
    assert (out[:, :prefix] == 42.0).all()


def test_non_square_count_without_old_size_is_a_clear_error():
    pe = posemb(1, 3, 5)
    with pytest.raises(ValueError, match=r"not a square.*old_size"):
        resample_abs_pos_embed(pe, (6, 6))
    out = resample_abs_pos_embed(pe, (6, 10), old_size=(3, 5))  # fine with old_size
    assert out.shape == (1, 1 + 60, D)


def test_wrong_old_size_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match"):
        resample_abs_pos_embed(posemb(1, 4, 4), (6, 6), old_size=(3, 5))
