"""Hugging Face `datasets` as a vitkit source: `load_dataset("hf:ORG/NAME")` (or `name="hf"`,
`data_dir=ORG/NAME`), through the `datasets` library (`pip install vitkit[hf]`).

What `data_dir` may name:
- a Hub dataset id, `ORG/NAME`: `datasets.load_dataset(ORG/NAME)`, which downloads it, or, offline
  (`HF_HUB_OFFLINE=1` / `HF_DATASETS_OFFLINE=1`, or no network), reads the Arrow cache an earlier
  `load_dataset(ORG/NAME)` wrote (`$HF_DATASETS_CACHE/ORG___NAME/<config>/<version>/<hash>/`, by default
  under ~/.cache/huggingface/datasets); not cached there, it is an error that says so;
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: `datasets.load_from_disk`;
- any other local folder (parquet files, an `imagefolder` of `<split>/<class>/<image>`, ...):
  `datasets.load_dataset(folder)`, which picks the builder from the files.

The image column is the first `datasets.Image` feature (else a column named image/img); the label
column the first `ClassLabel` (its names are the classes), else a column named label/labels/
fine_label of integers (classes "0".."max"). Splits `train`, `validation` (or `val`, `valid`) and
`test` are used as given; missing ones are carved from train as for image folders (stratified,
seeded). Images are decoded lazily from their stored bytes in DataLoader workers by the same
decoder and preprocessing as image folders (`HFImageDataset` is an `ImageFolderDataset`), with the
same skip-or-strict handling of unreadable images; mean/std come from the same seeded sample of up
to 512 train images.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch

from .folder import ImageFolderDataset, load_image

logger = logging.getLogger("vitkit")

__all__ = ["HFImageDataset", "load_hf_splits"]

_LABEL_NAMES = ("label", "labels", "fine_label", "class", "target")
_IMAGE_NAMES = ("image", "img", "jpg", "png", "pixel_values")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "Hugging Face datasets are read with the `datasets` library: pip install 'vitkit[hf]' (or datasets)"
        ) from None
    return datasets


class HFImageDataset(ImageFolderDataset):
    """Rows of a Hugging Face dataset, decoded lazily: `ds[i]` -> (float32 (C, H, W) in [0, 1], label).

    `samples` are (`"NAME[split][row]"`, label): the names that warnings and errors report."""

    def __init__(
        self,
        table,
        image_column: str,
        rows: list[int],
        labels: list[int],
        classes,
        in_chans: int,
        img_size,
        name: str,
        strict: bool = False,
    ):
        datasets = _datasets()
        self.table = table.cast_column(image_column, datasets.Image(decode=False))  # stored bytes, decoded here
        self.image_column, self.rows, self.name = image_column, list(rows), name
        super().__init__(
            [(f"{name}[{r}]", y) for r, y in zip(self.rows, labels)], classes, in_chans, img_size, strict=strict
        )

    def image_source(self, i: int):
        cell = self.table[self.rows[i]][self.image_column]
        if isinstance(cell, dict) and cell.get("bytes"):
            return io.BytesIO(cell["bytes"])
        if isinstance(cell, dict) and cell.get("path"):
            return cell["path"]
        raise ValueError(f"{self.samples[i][0]}: the image cell holds neither bytes nor a path")

    def load_uint8(self, i: int) -> torch.Tensor:
        try:
            a = load_image(self.image_source(i), self.in_chans, self.img_size, self.preprocess)
        except Exception as e:  # noqa: BLE001 - reported by load_readable, by name
            raise RuntimeError(f"cannot decode {self.samples[i][0]}: {type(e).__name__}: {e}") from e
        return torch.from_numpy(a.copy()).permute(2, 0, 1)

    def subset(self, idx) -> "HFImageDataset":
        idx = torch.as_tensor(idx, dtype=torch.long).tolist()
        out = HFImageDataset.__new__(HFImageDataset)
        out.__dict__.update(self.__dict__)
        out.rows = [self.rows[i] for i in idx]
        out.samples = [self.samples[i] for i in idx]
        out.labels = self.labels[idx] if idx else torch.zeros(0, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return (
            f"HFImageDataset({self.name}: {len(self)} images, {len(self.classes)} classes, "
            f"in_chans={self.in_chans}, img_size={self.img_size})"
        )


def _columns(features, name: str) -> tuple[str, str, list[str] | None]:
    datasets = _datasets()
    image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((c for c in _IMAGE_NAMES if c in features), None)
    label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    names = list(features[label].names) if label else None
    label = label or next((c for c in _LABEL_NAMES if c in features), None)
    if image is None or label is None:
        raise ValueError(
            f"hf: {name} has the columns {list(features)}; vitkit needs an image column (a "
            f"datasets.Image feature, or one named {'/'.join(_IMAGE_NAMES)}) and a label column (a "
            f"ClassLabel, or integers named {'/'.join(_LABEL_NAMES)})"
        )
    return image, label, names


def _open(source: str):
    """A DatasetDict (or Dataset) for a Hub id, a save_to_disk folder or a local data folder."""
    datasets = _datasets()
    path = Path(source).expanduser()
    if path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or (path / "dataset_info.json").is_file()
        and (path / "state.json").is_file()
    ):
        return datasets.load_from_disk(str(path))
    if path.is_dir():
        try:
            return datasets.load_dataset(str(path))
        except FileNotFoundError as e:  # no data files datasets can read
            raise FileNotFoundError(
                f"hf: the folder {source} holds no dataset that datasets can read ({e}); pass a folder written by "
                "save_to_disk, or a folder of parquet / image files"
            ) from None
    try:
        return datasets.load_dataset(source)
    except ConnectionError as e:  # offline (HF_HUB_OFFLINE=1) or no network, and not in the local cache
        raise FileNotFoundError(
            f"hf: {source} is not in the local datasets cache ({datasets.config.HF_DATASETS_CACHE}) and the "
            f"Hub cannot be reached ({e}). Load it once with network access (datasets.load_dataset({source!r}) "
            "or this command without HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1), point HF_DATASETS_CACHE (or "
            "HF_HOME) at the cache that holds it, or pass a local folder"
        ) from None
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"hf: {source} is not a local folder and cannot be found on the Hub or in the local datasets "
            f"cache ({datasets.config.HF_DATASETS_CACHE}): {e}. Pass ORG/NAME of a Hub dataset, a folder "
            "written by save_to_disk, or a folder of parquet / image files"
        ) from None


def load_hf_splits(data_dir, val_fraction: float, seed: int, strict: bool, img_size, test_fraction: float):
    """`load_dataset('hf', ORG/NAME or folder)`: train/val/test `HFImageDataset`s, classes and statistics."""
    from .datasets import FOLDER_DEFAULT_SIZE, DatasetSplits, _size2, folder_stats
    from .splits import stratified_split

    if not data_dir:
        raise ValueError(
            "hf: name the dataset: load_dataset('hf:ORG/NAME') or --data.name=hf "
            "--data.data_dir=ORG/NAME (a Hub id, a save_to_disk folder or a local data folder)"
        )
    source = str(data_dir)
    loaded = _open(source)
    parts = dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}
    aliases = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}
    found = {k: next((parts[a] for a in names if a in parts), None) for k, names in aliases.items()}
    if found["train"] is None:
        raise ValueError(f"hf: {source} has the splits {sorted(parts)}, no 'train'")
    image_col, label_col, names = _columns(found["train"].features, source)
    size = _size2(img_size) or (FOLDER_DEFAULT_SIZE, FOLDER_DEFAULT_SIZE)

    def labels_of(table, split):
        ys = table[label_col]
        if not all(isinstance(y, int) for y in ys):
            raise ValueError(f"hf: {source}[{split}] column {label_col!r} must hold integer labels")
        return ys

    train_labels = labels_of(found["train"], "train")
    classes = names or [str(i) for i in range(max(train_labels, default=-1) + 1)]
    if not classes:
        raise ValueError(f"hf: the train split of {source} is empty")

    def make(split, table, rows=None):
        ys = labels_of(table, split)
        bad = [y for y in ys if not 0 <= y < len(classes)]
        if bad:
            raise ValueError(
                f"hf: {source}[{split}] has label {bad[0]}, outside the {len(classes)} classes of its train split"
            )
        rows = list(range(len(ys))) if rows is None else rows
        return HFImageDataset(
            table, image_col, rows, [ys[r] for r in rows], classes, 3, size, f"{source}[{split}]", strict
        )

    full = make("train", found["train"])
    if found["test"] is not None:
        train, test = full, make("test", found["test"])
    else:
        keep, held = stratified_split(full.labels, test_fraction, seed)
        train, test = full.subset(keep), full.subset(held)
    if found["val"] is not None:
        val = make("validation", found["val"])
    elif val_fraction > 0:
        keep, held = stratified_split(train.labels, val_fraction, seed + 1)
        train, val = train.subset(keep), train.subset(held)
    else:
        val = None
    if len(train) == 0:
        raise ValueError(f"hf: the train split of {source} is empty")
    in_chans, mean, std = folder_stats(train, seed, lambda i: _header_mode(train, i))
    for ds in (train, val, test):
        if ds is not None:
            ds.in_chans = in_chans
    return DatasetSplits(f"hf:{source}", train, val, test, list(classes), mean, std, in_chans, size)


def _header_mode(ds: HFImageDataset, i: int) -> str | None:
    from .folder import _pil

    Image, _ = _pil()
    try:
        with Image.open(ds.image_source(i)) as im:
            return im.mode
    except Exception:  # noqa: BLE001 - met and reported by the loader
        return None
