"""Image folders at scale: listing without decoding, FIFOs, symlink loops, links de-duplicated before
any split, empty classes, lazy decode errors in DataLoader workers, the seeded statistics sample."""

import logging
import os
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit.data.datasets as datasets_mod
from vitkit.data import ImageFolderDataset, channel_stats, load_dataset, scan_image_folder
from vitkit.data.folder import FolderScanError


def _folder(root, classes=("a", "b"), n=4, size=(9, 7)):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.random.default_rng(ci * 100 + i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i:02d}.png")
    return root


def _scan_in_thread(root, **kw):
    """scan_image_folder in a thread; a scan that blocks (opened a FIFO) is unblocked and reported."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", scan_image_folder(root, **kw)), daemon=True)
    t.start()
    t.join(60)
    return t, out


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path, caplog):
    _folder(tmp_path)
    fifo = tmp_path / "a" / "x.png"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        t, out = _scan_in_thread(tmp_path)
    if t.is_alive():  # it opened the FIFO: unblock it (a writer that closes at once) and fail
        with open(fifo, "wb"):
            pass
        pytest.fail("scan_image_folder blocked on a FIFO")
    samples, classes = out["r"]
    assert classes == ["a", "b"] and len(samples) == 8 and str(fifo) not in {p for p, _ in samples}
    assert f"{fifo}: not a regular file" in caplog.text
    with pytest.raises(FolderScanError, match=r"x\.png: not a regular file"):
        scan_image_folder(tmp_path, strict=True)


def test_symlink_loops_are_cut_and_every_file_is_listed_once(tmp_path, caplog):
    _folder(tmp_path, n=5)
    (tmp_path / "a" / "loop").symlink_to("..")  # a/loop -> the root: would list every class again, forever
    (tmp_path / "b" / "sub").mkdir()
    (tmp_path / "b" / "sub" / "self").symlink_to(".")  # b/sub/self -> b/sub
    (tmp_path / "b" / "sub" / "up").symlink_to("..")  # b/sub/up -> b
    (tmp_path / "b" / "again.png").symlink_to(tmp_path / "b" / "00.png")  # the same file under two names
    os.link(tmp_path / "a" / "01.png", tmp_path / "b" / "hard.png")  # a hard link into another class
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        samples, classes = scan_image_folder(tmp_path)
    paths = [p for p, _ in samples]
    real = [os.path.realpath(p) for p in paths]
    assert len(paths) == 10 and len(set(real)) == 10  # 5 + 5 files, each once
    assert sorted((os.path.basename(os.path.dirname(p)), y) for p, y in samples) == [("a", 0)] * 5 + [("b", 1)] * 5
    assert "a/loop: a link back to" in caplog.text and "b/sub/self: a link back to" in caplog.text
    assert "b/hard.png: the same file as" in caplog.text and "b/again.png: the same file as" in caplog.text
    # so no file lands in both train and test
    s = load_dataset("folder", tmp_path, img_size=8, val_fraction=0.2, test_fraction=0.4)
    splits = [{os.path.realpath(p) for p, _ in ds.samples} for ds in (s.train, s.val, s.test)]
    assert sum(map(len, splits)) == 10 and len(set.union(*splits)) == 10


def test_a_link_to_another_class_folder_is_not_entered(tmp_path, caplog):
    _folder(tmp_path, classes=("a", "b", "c"), n=2)
    (tmp_path / "a" / "more").symlink_to(tmp_path / "c")  # class c's images must not be labelled a
    (tmp_path / "b" / "x.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        samples, classes = scan_image_folder(tmp_path)
    assert [(os.path.relpath(p, tmp_path), y) for p, y in samples] == [
        ("a/00.png", 0),
        ("a/01.png", 0),
        ("b/00.png", 1),
        ("b/01.png", 1),
        ("c/00.png", 2),
        ("c/01.png", 2),
    ]
    assert "a/more: a link back to" in caplog.text and "b/x.jpg: a broken link" in caplog.text


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    _folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "README.txt").write_text("no images here")
    with pytest.raises(FolderScanError, match=r"class folder\(s\) with no image files: \S+/empty, \S+/textonly\."):
        load_dataset("folder", tmp_path, img_size=8)
    # the same in a given val split (a class missing from val altogether is fine)
    for split in ("train", "val"):
        _folder(tmp_path / "layout" / split, n=2)
    (tmp_path / "layout" / "val" / "b" / "00.png").unlink()
    (tmp_path / "layout" / "val" / "b" / "01.png").unlink()
    with pytest.raises(FolderScanError, match=r"no image files: \S+/val/b\."):
        load_dataset("folder", tmp_path / "layout", img_size=8)


def test_listing_opens_no_image_and_errors_come_from_the_loader_workers(tmp_path, caplog):
    _folder(tmp_path, n=3)
    (tmp_path / "a" / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n but truncated")
    (tmp_path / "b" / "zz.jpg").write_bytes(b"")
    samples, _ = scan_image_folder(tmp_path)  # listed: nothing is decoded (or even opened) here
    assert len(samples) == 7
    ds = ImageFolderDataset(samples, ["a", "b"], 3, (8, 8))
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=1)
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        x, y = next(iter(loader))
    # each unreadable file is replaced by the next readable one: labels follow the images actually loaded
    assert x.shape == (7, 3, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert torch.equal(x[1], x[2]) and torch.equal(x[6], x[0])
    strict = ImageFolderDataset(samples, ["a", "b"], 3, (8, 8), strict=True)
    with pytest.raises(ValueError, match=r"a/01\.png is not a readable image"):
        next(iter(torch.utils.data.DataLoader(strict, batch_size=7, num_workers=1)))
    every = ImageFolderDataset([(str(tmp_path / "b" / "zz.jpg"), 1)] * 3, ["a", "b"], 3, (8, 8))
    with pytest.raises(RuntimeError, match="3 unreadable images in a row"):
        every[0]


def test_statistics_come_from_a_seeded_sample(tmp_path, monkeypatch):
    _folder(tmp_path, n=12)
    monkeypatch.setattr(datasets_mod, "FOLDER_STATS_SAMPLE", 5)
    for seed in (0, 3):
        s = load_dataset("folder", tmp_path, img_size=6, val_fraction=0.0, test_fraction=0.25, seed=seed)
        pick = torch.randperm(len(s.train), generator=torch.Generator().manual_seed(seed))[:5].sort().values
        expected = channel_stats(torch.stack([s.train.load_uint8(i) for i in pick.tolist()]))
        assert (s.mean, s.std) == expected
        assert (
            load_dataset("folder", tmp_path, img_size=6, val_fraction=0.0, test_fraction=0.25, seed=seed).mean == s.mean
        )  # the same sample for the same listing and seed


def test_video_folders_are_listed_the_same_way(tmp_path):
    from vitkit.data.video import scan_video_folder

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "loop").symlink_to("..")
    fifo = tmp_path / "a" / "clip.mp4"
    os.mkfifo(fifo)  # probing it (PyAV opens the container) would block forever
    out = {}

    def scan():
        try:
            scan_video_folder(tmp_path)
        except Exception as e:  # noqa: BLE001 - checked below
            out["error"] = e

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # it opened the FIFO: unblock it and fail
        with open(fifo, "wb"):
            pass
        pytest.fail("scan_video_folder blocked on a FIFO")
    assert isinstance(out["error"], FolderScanError)
    assert re.search(r"class folder\(s\) with no video files: \S+/a\. Supported extensions", str(out["error"]))
