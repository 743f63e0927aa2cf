"""Image folders: RGB/L/RGBA, corrupt and non-image files, layouts, strict mode, DataLoader."""

import io
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import ImageFolderDataset, load_dataset


def _img(mode, size, seed, path):
    rng = np.random.default_rng(seed)
    chans = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    a = rng.integers(0, 256, (size[1], size[0], chans), dtype=np.uint8)
    Image.fromarray(a[..., 0] if chans == 1 else a, mode).save(path)


def _make_folder(root, n_per_class=6, classes=("cat", "dog", "owl"), modes=("RGB", "L", "RGBA")):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            mode = modes[i % len(modes)]
            ext = ".png" if mode != "RGB" else ".jpg"
            _img(mode, (12 + i, 10), ci * 100 + i, root / c / f"{i:02d}_{mode}{ext}")


def _add_bad_files(root):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    (root / "cat" / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])  # truncated JPEG
    (root / "dog" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "owl" / "notes.png").write_text("not an image")
    return ["broken.jpg", "garbage.jpg", "notes.png"]


def test_flat_folder_modes_and_bad_files(tmp_path, caplog):
    _make_folder(tmp_path)
    bad = _add_bad_files(tmp_path)
    (tmp_path / "owl" / "notes.txt").write_text("not an image extension: not listed")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        s = load_dataset("folder", tmp_path, img_size=16, val_fraction=0.2, test_fraction=0.2, seed=0)
        # listing opens nothing: the bad files are listed, and met (logged by name, replaced) when loaded
        assert len(s.train) + len(s.val) + len(s.test) == 21
        assert (len(s.test), len(s.val)) == (3, 3)  # round(7 * 0.2) per class, then round(6 * 0.2)
        for ds in (s.train, s.val, s.test):
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
                path = ds.samples[i][0]
                if not any(path.endswith(b) for b in bad):
                    assert s.classes[y] == path.split("/")[-2]
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "vitkit")
    for name in bad:
        assert f"{name}: not a readable image" in warned
    assert "notes.txt" in warned and "without a listed extension" in warned
    assert not any(p.endswith("notes.txt") for ds in (s.train, s.val, s.test) for p, _ in ds.samples)
    assert len(s.mean) == 3 and all(0.2 < m < 0.8 for m in s.mean) and all(0.05 < v < 0.5 for v in s.std)


def test_strict_names_the_file(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "owl" / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png is not a readable image"):
        s = load_dataset("folder", tmp_path, strict=True, img_size=8)  # the statistics sample may meet it first
        for ds in (s.train, s.val, s.test):
            for i in range(len(ds)):
                ds[i]


def test_greyscale_folder_has_one_channel_and_alpha_is_composited(tmp_path):
    _make_folder(tmp_path, n_per_class=3, classes=("a", "b"), modes=("L",))
    s = load_dataset("folder", tmp_path, img_size=8, val_fraction=0.0, test_fraction=0.34)
    assert s.in_chans == 1 and s.val is None and len(s.mean) == 1
    assert s.train[0][0].shape == (1, 8, 8)
    # a fully transparent RGBA pixel becomes white
    rgba = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(rgba)
    ds = ImageFolderDataset([(str(rgba), 0)], ["a"], in_chans=3, img_size=(4, 4))
    assert torch.equal(ds[0][0], torch.ones(3, 4, 4))


def test_train_val_test_layout(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _make_folder(tmp_path / split, n_per_class=n, classes=("x", "y"))
    s = load_dataset("folder", tmp_path, img_size=10)
    assert (len(s.train), len(s.val), len(s.test)) == (12, 4, 6)
    assert all("/val/" in p for p, _ in s.val.samples) and all("/test/" in p for p, _ in s.test.samples)
    assert not hasattr(s.val, "batch")  # the engine reads `batch` as 'in memory'
    x, y = s.val.load_batch(torch.arange(4))
    assert x.shape == (4, 3, 10, 10) and y.tolist() == s.val.labels.tolist()
    # a train/ folder without test/: test carved from train
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    s2 = load_dataset("folder", tmp_path, img_size=10, test_fraction=0.5)
    assert (len(s2.train), len(s2.test)) == (6, 6)


def test_dataloader_workers_and_pickle(tmp_path):
    _make_folder(tmp_path, n_per_class=4, classes=("a", "b"))
    s = load_dataset("folder", tmp_path, img_size=8, val_fraction=0.0, test_fraction=0.25)
    ds = pickle.loads(pickle.dumps(s.train))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    xs, ys = zip(*loader)
    assert torch.cat(ys).tolist() == s.train.labels.tolist() and torch.cat(xs).shape == (6, 3, 8, 8)


def test_folder_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="pass data_dir"):
        load_dataset("folder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("folder", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no sub-folders; expected data_dir/train/<class>"):
        load_dataset("folder", tmp_path)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        load_dataset("folder", tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) with no image files: .*train/a\. Supported"):
        load_dataset("folder", tmp_path)
