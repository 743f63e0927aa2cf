"""Hugging Face `datasets` as a source, offline: a DatasetDict written by save_to_disk, a local parquet
folder and an imagefolder, each decoded to the same tensors as the same images in a vitkit image folder."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import ImageFolderDataset, load_dataset

datasets = pytest.importorskip("datasets")

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not the user's cache


def _png(i: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(i)
    a = rng.integers(0, 256, (7 + i % 3, 9, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def _dict(n_train=12, n_test=6, mode="RGB"):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})

    def part(offset, n):
        return datasets.Dataset.from_dict(
            {
                "image": [{"bytes": _png(offset + i, mode), "path": None} for i in range(n)],
                "label": [i % 3 for i in range(n)],
            },
            features=features,
        )

    return datasets.DatasetDict({"train": part(0, n_train), "test": part(100, n_test)})


def _same_as_folder(split, tmp_path, offset):
    """The tensors of `split` equal those vitkit's image folder decodes from the same PNG files."""
    paths = []
    for k, (row, y) in enumerate(zip(split.rows, split.labels.tolist())):
        p = tmp_path / f"ref{offset}_{k}.png"
        p.write_bytes(_png(offset + row))
        paths.append((str(p), y))
    ref = ImageFolderDataset(paths, CLASSES, split.in_chans, split.img_size)
    for i in range(len(split)):
        x, y = split[i]
        rx, ry = ref[i]
        assert y == ry and torch.equal(x, rx)


def test_a_dataset_saved_with_save_to_disk(tmp_path):
    _dict().save_to_disk(str(tmp_path / "saved"))
    s = load_dataset(f"hf:{tmp_path / 'saved'}", img_size=8, val_fraction=0.25, seed=1)
    assert s.name.startswith("hf:") and s.classes == CLASSES and s.in_chans == 3 and s.img_size == (8, 8)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 6)  # val carved from train (stratified), test given
    assert sorted(s.train.rows + s.val.rows) == list(range(12))
    _same_as_folder(s.train, tmp_path, 0)
    _same_as_folder(s.test, tmp_path, 100)
    loader = torch.utils.data.DataLoader(s.train, batch_size=4, num_workers=1)  # decoded in a worker process
    xs, ys = zip(*loader)
    assert torch.cat(ys).tolist() == s.train.labels.tolist() and torch.cat(xs).shape == (9, 3, 8, 8)
    assert len(s.mean) == 3 and all(0.3 < m < 0.7 for m in s.mean)
    # the same through name="hf", data_dir=
    assert load_dataset("hf", tmp_path / "saved", img_size=8, val_fraction=0.25, seed=1).mean == s.mean


def test_a_local_parquet_folder_and_greyscale(tmp_path):
    d = _dict(mode="L")
    (tmp_path / "pq").mkdir()
    for split, part in d.items():
        part.to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    s = load_dataset("hf", tmp_path / "pq", img_size=6, val_fraction=0.0)
    assert s.classes == CLASSES and s.in_chans == 1 and (len(s.train), len(s.test)) == (12, 6)
    assert s.train[0][0].shape == (1, 6, 6)


def test_an_imagefolder_and_unreadable_images(tmp_path, caplog):
    for split, n in (("train", 6), ("test", 3)):
        for i in range(n):
            c = tmp_path / "imf" / split / CLASSES[i % 3]
            c.mkdir(parents=True, exist_ok=True)
            (c / f"{i}.png").write_bytes(_png(i))
    s = load_dataset("hf", tmp_path / "imf", img_size=8, val_fraction=0.0)
    assert s.classes == CLASSES and (len(s.train), len(s.test)) == (6, 3)
    broken = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {
                    "image": [{"bytes": b"\x89PNG broken", "path": None}, {"bytes": _png(1), "path": None}],
                    "label": [0, 1],
                },
                features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}),
            )
        }
    )
    broken.save_to_disk(str(tmp_path / "broken"))
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        b = load_dataset("hf", tmp_path / "broken", img_size=8, val_fraction=0.0, test_fraction=0.5)
        [b.train[i] for i in range(len(b.train))] + [b.test[i] for i in range(len(b.test))]
    assert "broken[train][0]: not a readable image" in caplog.text


def test_errors_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="hf: name the dataset"):
        load_dataset("hf")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]})}).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(ValueError, match=r"has the columns \['text'\]; vitkit needs an image column"):
        load_dataset("hf", tmp_path / "t")


def test_a_hub_id_read_offline_from_the_datasets_cache(tmp_path, monkeypatch):
    """`load_dataset("hf:ORG/NAME")` offline reads the Arrow cache that datasets' own `load_dataset` writes:
    `$HF_DATASETS_CACHE/ORG___NAME/default/0.0.0/<hash>/NAME-<split>.arrow`. The cache is written here by
    `datasets.load_dataset` from the dataset's parquet files (the files a Hub repo holds); a local folder
    is cached under its own name, so that folder is then moved to the name the Hub id gives (ORG___NAME)."""
    import shutil

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: the variable alone is too late
    repo = tmp_path / "tiny-pets"
    (repo / "data").mkdir(parents=True)
    for split, part in _dict().items():
        part.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))
    datasets.load_dataset(str(repo), cache_dir=str(tmp_path / "first-load"))
    shutil.move(tmp_path / "first-load" / "tiny-pets", datasets.config.HF_DATASETS_CACHE / "org___tiny-pets")
    shutil.rmtree(repo)  # only the cache is left
    assert list((datasets.config.HF_DATASETS_CACHE / "org___tiny-pets").glob("default/0.0.0/*/tiny-pets-train.arrow"))

    s = load_dataset("hf:org/tiny-pets", img_size=8, val_fraction=0.25, seed=1)
    assert s.name == "hf:org/tiny-pets" and s.classes == CLASSES and s.in_chans == 3
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 6)
    _same_as_folder(s.train, tmp_path, 0)
    _same_as_folder(s.test, tmp_path, 100)
    xs, ys = zip(*torch.utils.data.DataLoader(s.train, batch_size=4, num_workers=1))  # the cache in a worker
    assert torch.cat(ys).tolist() == s.train.labels.tolist() and torch.cat(xs).shape == (9, 3, 8, 8)
    assert load_dataset("hf", "org/tiny-pets", img_size=8, val_fraction=0.25, seed=1).mean == s.mean

    with pytest.raises(FileNotFoundError, match=r"hf: org/absent is not in the local datasets cache \(.*hf-cache\)"):
        load_dataset("hf:org/absent")
    with pytest.raises(FileNotFoundError, match="holds no dataset that datasets can read"):
        (tmp_path / "empty").mkdir()
        load_dataset("hf", tmp_path / "empty")
