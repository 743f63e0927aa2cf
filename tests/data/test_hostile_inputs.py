"""Small hostile or damaged files: each is refused by a size, type or range check that runs before
anything large is allocated (the error names the check: the message is the proof it came from there).
Real files throughout: pickles written by `pickle`, gzip bombs by `gzip`, tar files by `tarfile`."""

import gzip
import io
import logging
import pickle
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from vitkit.data import DataFormatError, UnsafePickleError, load_dataset, read_cifar_batch, read_idx
from vitkit.data.formats import read_cifar_archive, read_cifar_meta, read_mnist_pkl
from vitkit.data.safe_pickle import safe_loads
from vitkit.data.shards import ShardFormatError, expand_shards, index_shards, iter_tar_samples

_reconstruct = np._core.multiarray._reconstruct


class _Reduce:
    """Pickles as `fn(*args)` (then `__setstate__(state)` when given): how a hostile file is written."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


# ------------------------------------------------------------------------------------ pickles
def test_a_100_byte_pickle_declaring_a_huge_array_is_refused(tmp_path):
    raw = pickle.dumps({"data": _Reduce(_reconstruct, (np.ndarray, (10**9, 3072), b"b")), "labels": []}, protocol=2)
    assert len(raw) < 200
    (tmp_path / "data_batch_1").write_bytes(raw)
    with pytest.raises(
        UnsafePickleError,
        match=r"an array of 3,072,000,000,000 bytes \(shape \(1000000000, 3072\)\) "
        r"declared by a pickle of \d+ bytes",
    ):
        read_cifar_batch(tmp_path / "data_batch_1")


@pytest.mark.parametrize(
    "state, needle",
    [
        ((1, (10**9,), np.dtype("O"), False, [1]), "object arrays are not data"),
        (
            (1, (10**9,), np.dtype("u1"), False, b"abc"),
            r"shape \(1000000000,\) uint8 needs 1,000,000,000 bytes, the pickle "
            r"holds 3 bytes",
        ),
        ((1, (-1,), np.dtype("u1"), False, b""), "negative dimension"),
    ],
)
def test_array_states_are_checked_before_numpy_allocates(state, needle):
    raw = pickle.dumps(_Reduce(_reconstruct, (np.ndarray, (0,), b"b"), state), protocol=2)
    with pytest.raises(UnsafePickleError, match=needle):
        safe_loads(raw, "x.pkl")


def test_bytearray_of_a_size_is_refused_and_real_arrays_still_load():
    with pytest.raises(UnsafePickleError, match=r"bytearray\(\) from something other than bytes"):
        safe_loads(pickle.dumps(_Reduce(bytearray, (10**10,))), "x.pkl")
    with pytest.raises(UnsafePickleError, match=r"bytes\(\) from something other than bytes"):
        safe_loads(pickle.dumps(_Reduce(bytes, (10**10,)), protocol=2), "x.pkl")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for proto in range(2, 6):
        out = safe_loads(pickle.dumps({"a": a, "b": bytearray(b"xy"), "s": {1, 2}, "e": b""}, protocol=proto))
        np.testing.assert_array_equal(out["a"], a)
        assert out["b"] == bytearray(b"xy") and out["s"] == {1, 2} and out["e"] == b""


def _nested(depth=3, width=1000):
    x = [0] * width
    for _ in range(depth - 1):
        x = [x] * width  # shared references: a few KB of pickle, width**depth elements once converted
    return x


def test_a_6kb_nested_list_pickle_is_refused_before_numpy_expands_it(tmp_path):
    raw = pickle.dumps({"data": _nested(), "labels": [0]}, protocol=2)
    assert len(raw) < 8000
    (tmp_path / "b1").write_bytes(raw)
    with pytest.raises(DataFormatError, match=r"'data' must be a uint8 array of shape \(N, 3072\), found list"):
        read_cifar_batch(tmp_path / "b1")
    ok = np.zeros((1000, 3072), np.uint8)
    (tmp_path / "b2").write_bytes(pickle.dumps({"data": ok, "labels": _nested(2)}, protocol=2))
    with pytest.raises(DataFormatError, match="'labels' must hold integers, found a list"):
        read_cifar_batch(tmp_path / "b2")
    (tmp_path / "meta").write_bytes(pickle.dumps({"label_names": _nested(2)}, protocol=2))
    with pytest.raises(DataFormatError, match="class names must be a list of strings"):
        read_cifar_meta(tmp_path / "meta")
    triple = ((_nested(), [0]), (_nested(), [0]), (_nested(), [0]))
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(triple, protocol=2)))
    with pytest.raises(DataFormatError, match=r"images must be a float array of shape \(N, 784\), found list"):
        read_mnist_pkl(tmp_path / "mnist.pkl.gz")


# ------------------------------------------------------------------------------------ gzip and archives
def _gzip_zeros(path, header: bytes, n_zeros: int):
    with gzip.open(path, "wb", compresslevel=9) as f:  # written in chunks: nothing large in memory
        f.write(header)
        chunk = bytes(1 << 20)
        for _ in range(n_zeros >> 20):
            f.write(chunk)


def test_a_gzip_bomb_is_stopped_by_the_decompressed_size_cap(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_zeros(path, struct.pack(">BBBBIII", 0, 0, 8, 3, 200_000, 10, 10), 20 << 20)  # 20 MB of zeros
    size = path.stat().st_size
    assert size < 40_000  # ~1000x
    with pytest.raises(
        DataFormatError,
        match=rf"decompresses to more than {100 * size:,} bytes \(100x its {size:,} "
        r"bytes\): a gzip bomb",
    ):
        read_idx(path)
    # a genuine gzip file (several members, zero padding after them) still reads
    a = np.arange(600, dtype=np.uint8).reshape(6, 10, 10)
    raw = struct.pack(">BBBBIII", 0, 0, 8, 3, 6, 10, 10) + a.tobytes()
    (tmp_path / "ok.gz").write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]) + bytes(30))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), a)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-30])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def test_an_archive_member_declaring_3gib_is_refused_before_reading(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(gzip.compress(_tar_header("cifar-10-batches-py/data_batch_1", 3 << 30) + bytes(4096)))
    with pytest.raises(
        DataFormatError,
        match=r"member cifar-10-batches-py/data_batch_1 declares 3,221,225,472 bytes, "
        r"more than this \d+-byte archive can hold",
    ):
        read_cifar_archive(path, ["data_batch_1"])


# ------------------------------------------------------------------------------------ IDX
def _idx(path, a):
    path.write_bytes(struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())


def _mnist_dir(d, labels=None, test_hw=(28, 28)):
    d.mkdir(exist_ok=True)
    _idx(d / "train-images-idx3-ubyte", np.zeros((20, 28, 28), np.uint8))
    _idx(d / "train-labels-idx1-ubyte", np.asarray(labels if labels is not None else np.arange(20) % 10, np.uint8))
    _idx(d / "t10k-images-idx3-ubyte", np.zeros((10, *test_hw), np.uint8))
    _idx(d / "t10k-labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    return d


def test_idx_labels_out_of_range_and_test_images_of_another_size_fail_at_load(tmp_path):
    bad = _mnist_dir(tmp_path / "labels", labels=[0] * 19 + [12])
    with pytest.raises(
        ValueError,
        match=r"train-labels-idx1-ubyte holds labels 0\.\.12 \(uint8\), but mnist has 10 "
        r"classes \(0\.\.9\)",
    ):
        load_dataset("mnist", bad)
    other = _mnist_dir(tmp_path / "size", test_hw=(32, 32))
    with pytest.raises(
        ValueError,
        match=r"the test images \S+t10k-images-idx3-ubyte are 32x32, the train images "
        r"\S+ 28x28",
    ):
        load_dataset("mnist", other)
    assert load_dataset("mnist", _mnist_dir(tmp_path / "fine"), val_fraction=0.0).num_classes == 10


# ------------------------------------------------------------------------------------ tar shards
def _png(value=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _shard(path, samples, mode="w"):
    with tarfile.open(path, mode) as tar:
        for key, label in samples:
            for ext, data in (("png", _png(len(key))), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_a_shard_member_declaring_3gib_is_refused_before_reading(tmp_path):
    local = tmp_path / "train-000000.tar"
    local.write_bytes(_tar_header("k0.png", 3 << 30) + bytes(2048))
    with pytest.raises(
        ShardFormatError,
        match=r"train-000000\.tar is truncated: member k0\.png declares "
        r"3,221,225,472 bytes from offset 512, the file ends at 2,560",
    ):
        index_shards([str(local)])
    streamed = tmp_path / "train-000001.tar.gz"  # compressed: the size cannot be checked against the file
    streamed.write_bytes(gzip.compress(_tar_header("k0.png", 3 << 30) + bytes(2048)))
    with pytest.raises(
        ShardFormatError,
        match=r"member k0\.png declares 3,221,225,472 bytes, more than 268,435,456 "
        r"\(vitkit\.data\.shards\.MAX_MEMBER_BYTES\)",
    ):
        list(iter_tar_samples(streamed))


def test_a_huge_label_without_dataset_json_and_a_huge_pattern_are_refused(tmp_path):
    _shard(tmp_path / "train-000000.tar", [("a", 0), ("b", 10**9)])
    with pytest.raises(ShardFormatError, match=r"sample 'b' has label 1,000,000,000; without dataset\.json"):
        load_dataset("shards", tmp_path / "train-000000.tar")
    with pytest.raises(ShardFormatError, match=r"expands to 1,000,000,000 paths, more than 1,000,000"):
        expand_shards(str(tmp_path / "train-{0..999999999}.tar"))
    with pytest.raises(ShardFormatError, match=r"expands to 4,000,000 paths"):
        expand_shards(str(tmp_path / "x-{0..1999}-{0..1999}.tar"))


def test_labels_of_given_test_shards_are_range_checked(tmp_path):
    _shard(tmp_path / "train-000000.tar", [(f"t{i}", i % 3) for i in range(9)])
    _shard(tmp_path / "test-000000.tar", [("s0", 0), ("s1", 7)])
    with pytest.raises(
        ShardFormatError,
        match=r"sample 's1' of \S+test-000000\.tar\.\.\. has label 7, but the train "
        r"shards have 3 classes",
    ):
        load_dataset("shards", tmp_path / "train-000000.tar", img_size=4)


@pytest.mark.parametrize(
    "cut, needle",
    [
        ("boundary", "ends without tar's end-of-archive block"),  # cut cleanly between two members
        ("header", "ends inside a header"),
        ("data", r"is truncated: member k1\.png declares"),
    ],
)
def test_truncated_shards_are_refused_naming_the_shard(tmp_path, cut, needle):
    full = _shard(tmp_path / "whole.tar", [("k0", 0), ("k1", 1)]).read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        members = tar.getmembers()
    k0_end = members[2].offset  # where the second sample's first header starts
    at = {"boundary": k0_end, "header": k0_end + 300, "data": members[2].offset_data + 10}[cut]
    path = tmp_path / "train-000000.tar"
    path.write_bytes(full[:at])
    for read in (lambda: index_shards([str(path)]), lambda: list(iter_tar_samples(path))):
        with pytest.raises(ShardFormatError, match=rf"train-000000\.tar.*{needle}"):
            read()
    assert [s["cls"] for s in iter_tar_samples(tmp_path / "whole.tar")] == [b"0", b"1"]  # the whole file reads


def test_duplicate_keys_with_conflicting_labels_are_refused(tmp_path, caplog):
    a = _shard(tmp_path / "train-000000.tar", [("k0", 0), ("k1", 1)])
    b = _shard(tmp_path / "train-000001.tar", [("k2", 0), ("k1", 2)])
    with pytest.raises(
        ShardFormatError,
        match=r"train-000001\.tar: sample 'k1' has label 2, but the same key has "
        r"label 1 in \S+train-000000\.tar",
    ):
        index_shards([str(a), str(b)])
    same = _shard(tmp_path / "train-000002.tar", [("k3", 0), ("k1", 1)])
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        index = index_shards([str(a), str(same)])
    assert sorted(index) == [("k0", 0), ("k1", 1), ("k3", 0)] and "key 'k1' already appears in" in caplog.text
