"""Reading PyTorch pickle files (`torch.save`) without running code, with messages that say what to do.

`torch.load(weights_only=True)` admits tensors and plain containers only, but its unpickler also
implements only the opcodes of pickle protocols 2 and 3: a valid state dict written with
`torch.save(..., pickle_protocol=0, 1, 4 or 5)` fails there with "Unsupported operand". Such a file
is read again through the standard unpickler restricted to the same allow-list of globals (torch's
weights-only list plus `torch.serialization.add_safe_globals` and `argparse.Namespace`): resolving
any other global raises before it is called, so nothing in the file can run. A file that still
fails gets a message naming its protocol and how to re-save it.

Messages never suggest `weights_only=False`: vitkit loads data only.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import contextlib
import pickle
import re
import types
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_torch_file", "pickle_protocol"]


def pickle_protocol(path: str | Path) -> int | None:
    """The pickle protocol of a `torch.save` file (zip archive or legacy format): the PROTO opcode's
    argument, 0 for a pickle without one (protocols 0 and 1 write none), None if unreadable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    return None
                head = z.open(name).read(2)
        else:
            with open(path, "rb") as f:
                head = f.read(2)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if len(head) < 2:
        return None
    return head[1] if head[0] == 0x80 else 0


def _allowed_globals() -> dict[str, Any]:
    allowed: dict[str, Any] = {}
    weights_only = getattr(torch, "_weights_only_unpickler", None)
    get = getattr(weights_only, "_get_allowed_globals", None)
    if get is not None:
        allowed.update(get())
    for obj in [*torch.serialization.get_safe_globals(), argparse.Namespace]:
        if isinstance(obj, tuple):  # (object, "module.name")
            obj, qualified = obj
        else:
            qualified = f"{obj.__module__}.{obj.__qualname__}"
        allowed[qualified] = obj
    return allowed


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """Protocols 0 and 1 rebuild a plain object (argparse.Namespace) as copyreg._reconstructor(cls, object,
    None), then set its __dict__; `cls` is an allowed global. Nothing else is accepted."""
    if base is not object or state is not None:
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL copyreg._reconstructor with base {base!r}")
    return object.__new__(cls)


_PERSISTENT_ID = re.compile(r"\('storage', <class 'torch\.(\w+)'>, '([^']*)', '([^']*)', (\d+)\)")


class _DataOnlyUnpickler(pickle.Unpickler):
    """The standard unpickler (every protocol) resolving only torch's weights-only globals."""

    allowed: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, written by protocols 0-2
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if (module, name) == ("builtins", "object"):
            return object
        obj = self.allowed.get(f"{module}.{name}")
        if obj is None:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name} is not an allowed global")
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "persistent_load":  # protocol 0 writes torch's storage ids as their repr: read them back
            load = value

            def value(pid: Any) -> Any:
                if isinstance(pid, str):
                    m = _PERSISTENT_ID.fullmatch(pid)
                    if m is None:
                        raise pickle.UnpicklingError(f"unreadable storage id {pid[:80]!r}")
                    storage = torch.serialization.StorageType(m.group(1))
                    pid = ("storage", storage, m.group(2), m.group(3), int(m.group(4)))
                return load(pid)

        super().__setattr__(name, value)


def _data_only_module() -> types.ModuleType:
    module = types.ModuleType("vitkit_data_only_pickle")
    unpickler = type("Unpickler", (_DataOnlyUnpickler,), {"allowed": _allowed_globals()})
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch warns about every protocol other than 2; vitkit reads them all (or says why not)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def _error(message: str) -> Exception:
    from .hub import CheckpointError

    return CheckpointError(message)


def _refused(path: Path, detail: str) -> Exception:
    return _error(
        f"refusing to load {path}: it is a pickle that contains objects other than tensors and plain "
        f"containers, and unpickling it could run code. vitkit loads weights only. If you trust the file, "
        f"re-save its state dict with safetensors (safetensors.torch.save_file). Details: {detail}"
    )


def _corrupt(path: Path, detail: str) -> Exception:
    return _error(
        f"could not read {path} as a PyTorch checkpoint: the file is truncated, corrupt, or not a checkpoint ({detail})"
    )


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def load_torch_file(path: str | Path) -> Any:
    """`torch.load(path, map_location='cpu')` admitting tensors and plain containers only, any pickle protocol;
    a `CheckpointError` that names the problem (refused object, damage, unreadable protocol) otherwise."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), _quiet():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next(
            (ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "load key" in ln), lines[0] if lines else ""
        )
        if "GLOBAL" in str(e):
            raise _refused(path, detail) from None
        if "Unsupported operand" not in str(e):  # not an opcode torch lacks: random bytes or a damaged stream
            raise _corrupt(path, f"UnpicklingError: {detail}") from None
    except Exception as e:  # noqa: BLE001 -- a damaged pickle stream raises IndexError, KeyError, EOFError, ...
        raise _corrupt(path, _first_line(e)) from None
    # torch's weights-only unpickler lacks an opcode of this file's protocol: the restricted standard unpickler
    protocol = pickle_protocol(path)
    try:
        with _quiet():
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_data_only_module())
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):
            raise _refused(path, str(e).splitlines()[0]) from None
        problem = _first_line(e)
    except Exception as e:  # noqa: BLE001 -- as above: a damaged stream raises many types
        problem = _first_line(e)
    raise _error(
        f"could not read {path}: it is a pickle of protocol "
        f"{'unknown' if protocol is None else '0 or 1' if protocol == 0 else protocol}, "
        f"and reading it as tensors and plain containers failed ({problem}). If the file is intact, re-save it "
        f"with torch.save(obj, path) (its default protocol 2) or as safetensors (safetensors.torch.save_file)"
    )
