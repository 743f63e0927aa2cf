"""WebDataset-format tar shards: reading, per-rank and per-worker sharding, bad samples."""

import io
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.shards import TarShardDataset


def _write_shards(d, n_shards=4, per_shard=3, bad=False):
    paths = []
    for s in range(n_shards):
        path = d / f"train-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:02d}{i:03d}"
                buf = io.BytesIO()
                Image.fromarray(np.full((6, 5, 3), s * 10 + i, np.uint8)).save(buf, "PNG")
                members = {f"{key}.png": buf.getvalue(), f"{key}.cls": str(s * 100 + i).encode()}
                if bad and s == 0 and i == 1:
                    members[f"{key}.png"] = b"broken"
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def test_reads_all_samples(tmp_path):
    ds = TarShardDataset(_write_shards(tmp_path), img_size=4, rank=0, world_size=1)
    out = list(ds)
    assert [y for _, y in out] == [s * 100 + i for s in range(4) for i in range(3)]
    x, _ = out[4]
    assert x.shape == (3, 4, 4) and torch.allclose(x, torch.full_like(x, 11 / 255))


def test_sharded_per_rank_and_worker(tmp_path):
    shards = _write_shards(tmp_path)
    seen = []
    for rank in range(2):
        ds = TarShardDataset(shards, rank=rank, world_size=2, shuffle_shards=True, seed=1)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        labels = [int(y) for _, y in loader]
        assert len(labels) == 6
        seen += labels
    assert sorted(seen) == sorted(s * 100 + i for s in range(4) for i in range(3))  # each sample exactly once
    ds = TarShardDataset(shards, rank=0, world_size=1, shuffle_shards=True)
    orders = set()
    for e in range(4):
        ds.set_epoch(e)
        orders.add(tuple(ds.my_shards()))
    assert len(orders) > 1


def test_bad_sample_skipped_or_strict(tmp_path, caplog):
    shards = _write_shards(tmp_path, n_shards=1, bad=True)
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        labels = [y for _, y in TarShardDataset(shards, rank=0, world_size=1)]
    assert labels == [0, 2] and "00001" in caplog.text
    with pytest.raises(ValueError, match="00001"):
        list(TarShardDataset(shards, rank=0, world_size=1, strict=True))
