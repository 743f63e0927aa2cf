"""IDX, CIFAR batches and the numpy-only unpickler, on files the tests write."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from vitkit.data import DataFormatError, UnsafePickleError, load_dataset, read_cifar_batch, read_idx, write_idx
from vitkit.data.safe_pickle import safe_loads


def _idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(">u1").tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    raw = _idx_bytes(a)  # written by hand (numpy + struct), independent of write_idx
    path = tmp_path / ("x.idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    np.testing.assert_array_equal(read_idx(path), a)
    # write_idx produces the same bytes, and other dtypes round-trip (big-endian on disk)
    out = write_idx(tmp_path / ("y" + (".gz" if gz else "")), a)
    assert (gzip.decompress(out.read_bytes()) if gz else out.read_bytes()) == raw
    f = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx", f)), f)
    labels = np.arange(7, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l.gz", labels)), labels)


def test_idx_corrupt_and_truncated(tmp_path):
    a = np.zeros((4, 5, 5), np.uint8)
    raw = _idx_bytes(a)
    (tmp_path / "trunc").write_bytes(raw[:-7])
    with pytest.raises(DataFormatError, match=r"truncated.*needs 100 bytes of data, found 93"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "extra").write_bytes(raw + b"\0")
    with pytest.raises(DataFormatError, match="trailing bytes"):
        read_idx(tmp_path / "extra")
    (tmp_path / "notidx").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(tmp_path / "notidx")
    (tmp_path / "hdr").write_bytes(raw[:9])
    with pytest.raises(DataFormatError, match="truncated IDX header"):
        read_idx(tmp_path / "hdr")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "bad.gz")


def _write_mnist_idx(d, n_train=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    sfx = ".gz" if gz else ""
    xa = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ya = (np.arange(n_train) % 10).astype(np.uint8)
    xt = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yt = (np.arange(n_test) % 10).astype(np.uint8)
    for stem, arr in (
        ("train-images-idx3-ubyte", xa),
        ("train-labels-idx1-ubyte", ya),
        ("t10k-images-idx3-ubyte", xt),
        ("t10k-labels-idx1-ubyte", yt),
    ):
        write_idx(d / (stem + sfx), arr)
    return xa, ya, xt, yt


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_load_idx_dataset_from_data_dir(tmp_path, name):
    xa, ya, xt, yt = _write_mnist_idx(tmp_path, gz=name == "mnist")
    s = load_dataset(name, tmp_path, val_fraction=0.1, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (50, 10, 20)  # round(6 * 0.1) = 1 per class
    assert s.in_chans == 1 and s.img_size == (28, 28) and len(s.classes) == 10
    assert s.train.images.dtype == torch.uint8  # stored as the source's uint8
    x, y = s.test.batch(torch.arange(20))
    assert x.dtype == torch.float32 and x.shape == (20, 1, 28, 28)
    torch.testing.assert_close(x, torch.from_numpy(xt).float().unsqueeze(1) / 255)
    assert y.tolist() == yt.tolist()
    # train + val are exactly the IDX train set
    both = torch.cat([s.train.labels, s.val.labels]).sort().values
    assert both.tolist() == sorted(ya.tolist())


def test_idx_dataset_missing_files_says_what(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR


def _cifar_batch(n, label_key, n_classes, seed, protocol):
    rng = np.random.default_rng(seed)
    return pickle.dumps(
        {
            b"batch_label": b"test batch",
            label_key: [int(i) % n_classes for i in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        },
        protocol=protocol,
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_load(tmp_path, protocol):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(_cifar_batch(20, b"labels", 10, i, protocol))
    (d / "test_batch").write_bytes(_cifar_batch(10, b"labels", 10, 9, protocol))
    names = [f"c{i}".encode() for i in range(10)]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=protocol))
    x, y = read_cifar_batch(d / "test_batch")
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == list(range(10))
    s = load_dataset("cifar10", tmp_path, val_fraction=0.2, seed=0)  # the parent folder works too
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 10)
    assert s.classes == [f"c{i}" for i in range(10)] and s.in_chans == 3 and s.img_size == (32, 32)
    assert len(s.mean) == 3 and all(0.45 < m < 0.55 for m in s.mean) and all(0.25 < v < 0.33 for v in s.std)
    xb, yb = s.test.batch(torch.arange(10))
    torch.testing.assert_close(xb, torch.from_numpy(x).float() / 255)


def test_cifar100_batches_load(tmp_path):
    (tmp_path / "train").write_bytes(_cifar_batch(200, b"fine_labels", 100, 0, 4))
    (tmp_path / "test").write_bytes(_cifar_batch(100, b"fine_labels", 100, 1, 4))
    s = load_dataset("cifar100", tmp_path, val_fraction=0.5)
    assert (len(s.train), len(s.val), len(s.test)) == (100, 100, 100)
    assert len(s.classes) == 100 and s.train.labels.bincount(minlength=100).tolist() == [1] * 100


def _write_tar_gz(path, members: dict[str, bytes]):
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("as_file", [False, True])
def test_cifar10_from_the_official_tar_gz(tmp_path, as_file):
    # the layout of cifar-10-python.tar.gz: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta, readme.html}
    members = {f"cifar-10-batches-py/data_batch_{i}": _cifar_batch(20, b"labels", 10, i, 2) for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = _cifar_batch(10, b"labels", 10, 9, 2)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [f"k{i}".encode() for i in range(10)]})
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    archive = _write_tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    s = load_dataset("cifar10", archive if as_file else tmp_path, val_fraction=0.2, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 10) and s.classes == [f"k{i}" for i in range(10)]
    assert not (tmp_path / "cifar-10-batches-py").exists()  # read in place, nothing extracted
    x, _ = read_cifar_batch("test_batch", members["cifar-10-batches-py/test_batch"])
    xb, yb = s.test.batch(torch.arange(10))
    torch.testing.assert_close(xb, torch.from_numpy(x).float() / 255)
    assert yb.tolist() == list(range(10))
    # the same splits as from the extracted folder
    ext = tmp_path / "extracted" / "cifar-10-batches-py"
    ext.mkdir(parents=True)
    for name, data in members.items():
        (ext / name.rsplit("/", 1)[-1]).write_bytes(data)
    e = load_dataset("cifar10", tmp_path / "extracted", val_fraction=0.2, seed=0)
    assert torch.equal(e.train.images, s.train.images) and torch.equal(e.val.labels, s.val.labels)


def test_cifar100_tar_gz_and_bad_archives(tmp_path):
    members = {
        "cifar-100-python/train": _cifar_batch(200, b"fine_labels", 100, 0, 2),
        "cifar-100-python/test": _cifar_batch(100, b"fine_labels", 100, 1, 2),
        "cifar-100-python/meta": pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}),
    }
    _write_tar_gz(tmp_path / "cifar-100-python.tar.gz", members)
    s = load_dataset("cifar100", tmp_path, val_fraction=0.0)
    assert (len(s.train), len(s.test), s.classes[7]) == (200, 100, "f7")
    # a truncated download, an archive lacking a batch, and a malicious pickle inside the archive
    bad = tmp_path / "bad"
    bad.mkdir()
    raw = (tmp_path / "cifar-100-python.tar.gz").read_bytes()
    (bad / "cifar-100-python.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated archive"):
        load_dataset("cifar100", bad)
    _write_tar_gz(bad / "cifar-100-python.tar.gz", {"cifar-100-python/train": members["cifar-100-python/train"]})
    with pytest.raises(FileNotFoundError, match=r"lacks|\['test'\] missing"):
        load_dataset("cifar100", bad)
    marker = tmp_path / "PWNED"
    _write_tar_gz(bad / "cifar-100-python.tar.gz", {**members, "cifar-100-python/train": pickle.dumps(_Evil(marker))})
    with pytest.raises(UnsafePickleError, match="train"):
        load_dataset("cifar100", bad)
    assert not marker.exists()


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*expected"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(marker)]})
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / f).write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"refusing to load .*data_batch_1.*(posix|os)\.system"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(UnsafePickleError):
        read_cifar_batch(d / "test_batch")
    assert not marker.exists()
    # other dangerous globals too, and protocol-0 text pickles
    for obj in (pickle.dumps(_Evil(marker), protocol=0), b"cbuiltins\neval\n(S'1+1'\ntR."):
        with pytest.raises(UnsafePickleError):
            safe_loads(obj)
    assert not marker.exists()


def test_safe_pickle_admits_numpy_and_builtins():
    obj = {
        "a": np.arange(5, dtype=np.int16),
        "b": [1, 2.5, "s", b"x", (None, True)],
        "c": np.float32(1.5),
        "d": {1, 2},
        "e": bytearray(b"ab"),
        "f": np.zeros((2, 2), dtype=">f8"),
    }
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        out = safe_loads(pickle.dumps(obj, protocol=proto))
        np.testing.assert_array_equal(out["a"], obj["a"])
        assert out["b"] == obj["b"] and out["c"] == obj["c"] and out["d"] == {1, 2} and out["e"] == b"ab"
