"""WebDataset tar shards: reading, per-rank and per-worker sharding, splits, writing, training on them,
and the format checked against the `webdataset` package itself when it is installed."""

import io
import json
import logging
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit.data.shards as shards_mod
from vitkit.data import load_dataset
from vitkit.data.shards import (
    ShardBatches,
    TarShardDataset,
    expand_shards,
    split_of,
    write_shards,
)

ALL = sorted(s * 100 + i for s in range(4) for i in range(3))


def _write_shards(d, n_shards=4, per_shard=3, bad=False, prefix="train"):
    paths = []
    for s in range(n_shards):
        path = d / f"{prefix}-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{prefix}{s:02d}{i:03d}"
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
    assert [y for _, y in out] == ALL
    x, _ = out[4]
    assert x.shape == (3, 4, 4) and torch.allclose(x, torch.full_like(x, 11 / 255))


def test_brace_patterns_and_missing_shards(tmp_path):
    _write_shards(tmp_path)
    names = [p.rsplit("/", 1)[-1] for p in expand_shards(str(tmp_path / "train-{000000..000003}.tar"))]
    assert names == [f"train-{i:06d}.tar" for i in range(4)]
    assert expand_shards(str(tmp_path / "train-{000001,000003}.tar"))[1].endswith("train-000003.tar")
    assert len(expand_shards(tmp_path)) == 4 == len(expand_shards(str(tmp_path / "train-*.tar")))
    with pytest.raises(FileNotFoundError, match=r"1 of 5 shard.*train-000004.tar"):
        expand_shards(str(tmp_path / "train-{000000..000004}.tar"))
    with pytest.raises(ValueError, match="at least one shard"):
        TarShardDataset(_write_shards(tmp_path, n_shards=1), rank=0, world_size=2)


def test_sharded_per_rank_and_per_worker_disjoint_union_all(tmp_path, monkeypatch):
    shards = _write_shards(tmp_path, n_shards=8)
    everything = sorted(s * 100 + i for s in range(8) for i in range(3))
    seen = {}
    for rank in range(2):
        for worker in range(2):  # what DataLoader worker `worker` of 2 on process `rank` of 2 reads
            monkeypatch.setattr(shards_mod, "get_worker_info", lambda w=worker: SimpleNamespace(id=w, num_workers=2))
            ds = TarShardDataset(shards, rank=rank, world_size=2, shuffle_shards=True, seed=1)
            ds.set_epoch(3)
            seen[rank, worker] = [int(y) for _, y in ds]
            assert len(seen[rank, worker]) == 6  # 2 shards of 3 each
    monkeypatch.undo()
    labels = [y for v in seen.values() for y in v]
    assert sorted(labels) == everything  # disjoint (no repeats) and together all samples
    # the same through real DataLoader worker processes
    union = []
    for rank in range(2):
        ds = TarShardDataset(shards, rank=rank, world_size=2, shuffle_shards=True, seed=1)
        union += [int(y) for _, y in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)]
    assert sorted(union) == everything
    # a new shard order every epoch, the same on every rank
    ds = TarShardDataset(shards, rank=0, world_size=1, shuffle_shards=True)
    orders = set()
    for e in range(4):
        ds.set_epoch(e)
        orders.add(tuple(ds.my_shards()))
    assert len(orders) > 1


def test_shard_batches_equal_steps_per_rank(tmp_path):
    # 5 shards of 3 over 2 ranks: rank 0 owns 3 shards, rank 1 owns 2, yet both take len(data) // batch
    # steps; rank 1 starts a second pass. Deterministic per (seed, epoch): a resumed run sees the same.
    shards = _write_shards(tmp_path, n_shards=5)
    data = TarShardDataset(shards, rank=0, world_size=1, num_samples=15)
    for workers in (0, 2):
        runs = {}
        for rank in range(2):
            b = ShardBatches(data, batch_size=4, rank=rank, world=2, seed=0, num_workers=workers, shuffle_buffer=0)
            assert len(b) == 3 and b.num_workers == workers
            batches = list(b.epoch(1))
            assert len(batches) == 3 and all(x.shape == (2, 3, 6, 5) and len(y) == 2 for x, y in batches)
            runs[rank] = [int(v) for _, y in batches for v in y]
            again = [int(v) for _, y in ShardBatches(data, 4, rank, 2, 0, workers, 0).epoch(1) for v in y]
            assert again == runs[rank]
            shuffled = [
                [int(v) for _, y in ShardBatches(data, 4, rank, 2, 0, workers).epoch(1) for v in y] for _ in range(2)
            ]
            assert shuffled[0] == shuffled[1]  # the shuffle buffer is seeded too
        if workers == 0:  # 6 samples per rank fit in its first pass: the ranks read different shards
            assert not set(runs[0]) & set(runs[1]) and len(set(runs[0])) == len(set(runs[1])) == 6
    with pytest.raises(ValueError, match="fewer than one batch"):
        ShardBatches(data, batch_size=32, rank=0, world=1, seed=0)


def test_bad_sample_skipped_or_strict(tmp_path, caplog):
    shards = _write_shards(tmp_path, n_shards=1, bad=True)
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        labels = [y for _, y in TarShardDataset(shards, rank=0, world_size=1)]
    assert labels == [0, 2] and "train00001" in caplog.text
    with pytest.raises(ValueError, match="train00001"):
        list(TarShardDataset(shards, rank=0, world_size=1, strict=True))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ValueError, match="junk.tar: not a readable tar"):
        list(TarShardDataset([tmp_path / "junk.tar"], rank=0, world_size=1))


def test_write_shards_round_trip_and_load_dataset(tmp_path):
    src = load_dataset("digits", val_fraction=0.0, seed=0)
    written = write_shards(src, tmp_path, maxcount=300, progress=False)
    n_train, n_test = len(src.train), len(src.test)
    assert len(written["train"]) == -(-n_train // 300) and len(written["test"]) == -(-n_test // 300)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["classes"] == src.classes and meta["counts"] == {"train": n_train, "test": n_test}

    s = load_dataset("shards", str(tmp_path / "train-{000000..000004}.tar"), val_fraction=0.2, seed=0)
    assert s.in_chans == 1 and s.img_size == (8, 8) and s.classes == src.classes
    assert len(s.test) == n_test  # the test-* shards next to the train shards are the test split
    assert len(s.train) + len(s.val) == n_train and 0.15 < len(s.val) / n_train < 0.25
    ours = sorted((x.mul(255).round().to(torch.uint8).flatten().tolist(), y) for x, y in s.test)
    # digits are 17 grey levels (k/16): PNG holds them as round(255 k/16), losslessly
    ref = sorted(
        (src.test.images[i].mul(255).round().to(torch.uint8).flatten().tolist(), int(src.test.labels[i]))
        for i in range(n_test)
    )
    assert ours == ref
    # val and train are disjoint and together the train shards, split by a seeded key hash
    train_keys = [k for p in written["train"] for k, _ in shards_mod.index_shards([str(p)])]
    in_val = [split_of(k, 0, 0.2, None) == "val" for k in train_keys]
    assert sum(in_val) == len(s.val)
    assert len(list(s.val)) == len(s.val) and len(list(s.train)) == len(s.train)
    assert s.mean[0] == pytest.approx(src.mean[0], abs=0.03)  # from the first 512 training samples


def test_test_split_carved_when_absent(tmp_path):
    _write_shards(tmp_path, n_shards=4, per_shard=25)
    s = load_dataset("shards", tmp_path, val_fraction=0.1, test_fraction=0.2, seed=5)
    assert len(s.train) + len(s.val) + len(s.test) == 100
    assert 10 <= len(s.test) <= 30 and s.classes == [str(i) for i in range(325)] and s.in_chans == 3
    assigned = [split_of(f"train{sh:02d}{i:03d}", 5, 0.1, 0.2) for sh in range(4) for i in range(25)]
    assert [assigned.count(k) for k in ("train", "val", "test")] == [len(s.train), len(s.val), len(s.test)]
    labels = [sorted(int(y) for _, y in part) for part in (s.train, s.val, s.test)]
    assert [len(v) for v in labels] == [len(s.train), len(s.val), len(s.test)]
    assert not (set(labels[0]) & set(labels[2])) and len({y for v in labels for y in v}) == 100
    again = load_dataset("shards", tmp_path, val_fraction=0.1, test_fraction=0.2, seed=5)
    assert sorted(int(y) for _, y in again.test) == labels[2]  # deterministic


def test_make_shards_cli_then_train_on_them(tmp_path, capsys):
    from vitkit.cli import main
    from vitkit.train import TrainConfig, apply_overrides, train

    assert main(["make-shards", "digits", str(tmp_path / "shards"), "--maxcount", "200"]) == 0
    printed = capsys.readouterr().out
    assert "train: 8 shard(s)" in printed and "--data.name=shards" in printed
    cfg = apply_overrides(
        TrainConfig(),
        [
            "--data.name=shards",
            f"--data.data_dir={tmp_path}/shards/train-{{000000..000007}}.tar",
            "--data.num_workers=2",
            "--model.name=vit_micro_patch2_8",
            "--model.overrides.depth=1",
            "--sched.epochs=2",
            "--sched.warmup_epochs=0",
            "--run.batch_size=64",
            f"--run.out={tmp_path}/run",
            "--run.progress=false",
            "--run.tensorboard=false",
        ],
    )
    m = train(cfg)
    assert m["dataset"] == "shards" and m["epochs"] == 2 and m["test_acc"] > 20  # chance is 10%
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_acc"] > 20


def test_interop_with_the_webdataset_package(tmp_path):
    wds = pytest.importorskip("webdataset")
    src = load_dataset("digits", val_fraction=0.0)
    ours = write_shards(src, tmp_path / "ours", maxcount=1000, progress=False)["test"]
    theirs = [
        (s["__key__"], int(s["cls"]), np.asarray(Image.open(io.BytesIO(s["png"]))))
        for s in wds.WebDataset([str(p) for p in ours], shardshuffle=False)
    ]
    mine = [
        (x.mul(255).round().to(torch.uint8)[0].numpy(), y)
        for x, y in TarShardDataset(ours, in_chans=1, rank=0, world_size=1)
    ]
    assert len(theirs) == len(mine) == len(src.test)
    assert all(np.array_equal(a, x) and b == y for (_, b, a), (x, y) in zip(theirs, mine))
    # shards written by webdataset's own writer read here
    path = tmp_path / "wds-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(5):
            sink.write({"__key__": f"s{i:04d}", "png": np.full((4, 4, 3), i * 40, np.uint8), "cls": i})
    got = list(TarShardDataset([path], rank=0, world_size=1))
    assert [y for _, y in got] == list(range(5)) and torch.allclose(got[3][0], torch.full((3, 4, 4), 120 / 255))


def test_shards_over_http_and_pipe_through_webdataset(tmp_path):
    """Real shards served by a local HTTP server (python's http.server) and read through webdataset's
    gopen: the same splits, statistics and samples as the local files; dataset.json names the test shards."""
    import functools
    import http.server
    import threading

    pytest.importorskip("webdataset")
    write_shards(load_dataset("digits", val_fraction=0.0), tmp_path, maxcount=400, progress=False)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        local = load_dataset("shards", str(tmp_path / "train-{000000..000003}.tar"), img_size=8)
        remote = load_dataset("shards", base + "/train-{000000..000003}.tar", img_size=8)
        assert (len(remote.train), len(remote.val), len(remote.test)) == (len(local.train), len(local.val), 359)
        assert (remote.classes, remote.mean, remote.std, remote.in_chans) == (local.classes, local.mean, local.std, 1)
        assert remote.test.shards == [base + "/test-000000.tar"]
        got, want = list(remote.test), list(local.test)
        assert [y for _, y in got] == [y for _, y in want]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, want))
        piped = TarShardDataset(
            [f"pipe:cat {tmp_path / 'test-000000.tar'}"], in_chans=1, img_size=8, rank=0, world_size=1
        )
        assert [y for _, y in piped] == [y for _, y in want]
        with pytest.raises(ValueError, match=r"shard http://127\.0\.0\.1:\d+/nope\.tar: cannot read it"):
            list(TarShardDataset([base + "/nope.tar"], rank=0, world_size=1))
    finally:
        server.shutdown()
