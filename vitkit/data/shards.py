"""WebDataset-format tar shards, read with the standard library (no `webdataset` dependency).

A shard is a tar whose members are grouped into samples by their key (the name up to the first
dot of the base name): `000123.jpg` + `000123.cls` is one sample. `TarShardDataset` is a torch
`IterableDataset` yielding (float32 (C, H, W) in [0, 1], label int): image from the first member
with an image extension, label from `.cls` (an integer as text) or `.json` ({"label": int}).

Sharding: the shard list is split first across distributed ranks (`shards[rank::world_size]`)
and then across DataLoader workers of that rank (`[worker::num_workers]`), so every shard is read
by exactly one worker of one rank per epoch. Use at least as many shards as ranks x workers.
`shuffle_shards` with `set_epoch(e)` reorders the shards per epoch (same order on every rank:
seeded with (seed, epoch)).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .folder import _pil

logger = logging.getLogger("vitkit")

__all__ = ["TarShardDataset", "iter_tar_samples"]

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")


def iter_tar_samples(path: str | Path) -> Iterator[dict[str, bytes]]:
    """{'__key__': key, ext: bytes, ...} per sample, in tar order (members of a key are adjacent)."""
    current: dict | None = None
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            if "." not in base or base.startswith("."):
                continue
            prefix = member.name[: len(member.name) - len(base)]
            key, ext = base.split(".", 1)
            key = prefix + key
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield current


class TarShardDataset(IterableDataset):
    def __init__(self, shards: Sequence[str | Path], in_chans: int = 3, img_size: int | tuple[int, int] | None = None,
                 rank: int | None = None, world_size: int | None = None, shuffle_shards: bool = False,
                 seed: int = 0, strict: bool = False):
        if not shards:
            raise ValueError("TarShardDataset needs at least one shard path")
        self.shards = [str(s) for s in shards]
        self.in_chans = in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else img_size
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
        self.rank, self.world_size = rank, world_size
        self.shuffle_shards, self.seed, self.strict, self.epoch = shuffle_shards, seed, strict, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self, worker: int = 0, num_workers: int = 1) -> list[str]:
        shards = list(self.shards)
        if self.shuffle_shards:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        return shards[self.rank :: self.world_size][worker::num_workers]

    def _decode(self, sample: dict[str, bytes]) -> tuple[torch.Tensor, int] | None:
        Image, ImageOps = _pil()
        key = sample["__key__"]
        ext = next((e for e in _IMAGE_EXTS if e in sample), None)
        try:
            if ext is None:
                raise ValueError(f"no image member (one of {', '.join(_IMAGE_EXTS)})")
            if "cls" in sample:
                label = int(sample["cls"].decode().strip())
            elif "json" in sample:
                label = int(json.loads(sample["json"])["label"])
            else:
                raise ValueError("no label member (.cls or .json with 'label')")
            with Image.open(io.BytesIO(sample[ext])) as im:
                im = im.convert("RGBA").convert("RGB") if self.in_chans == 3 else im.convert("L")
                if self.img_size is not None and im.size != (self.img_size[1], self.img_size[0]):
                    im = ImageOps.fit(im, (self.img_size[1], self.img_size[0]), method=Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # noqa: BLE001
            if self.strict:
                raise ValueError(f"sample {key!r}: {type(e).__name__}: {e}") from e
            logger.warning("skipping sample %r: %s: %s", key, type(e).__name__, e)
            return None
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0), label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in self.my_shards(worker, num_workers):
            for sample in iter_tar_samples(shard):
                out = self._decode(sample)
                if out is not None:
                    yield out
