"""Which errors are the user's to fix, and the one-line message `vitkit` prints for them.

A user's mistake (a setting, a file, the environment) gets its message on stderr and exit code 2; anything
else is a bug in vitkit, and the command line lets its traceback through (`main` in vitkit/cli/__init__.py).
"""

from __future__ import annotations

import errno
import re

DEBUG_HELP = "show the traceback of an error as well as its message (the flag may also follow the command)"
_WRITE_HINTS = {
    errno.EACCES: "no permission to write there: choose another --out, or fix the permissions",
    errno.EPERM: "no permission to write there: choose another --out, or fix the permissions",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another --out",
    errno.EFBIG: "the file is larger than this file system or the process's file-size limit allows",
    errno.ENAMETOOLONG: "the path is too long",
}


_PIP_NAMES = {
    "sklearn": "scikit-learn",
    "PIL": "Pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
}


def _os_error_message(e: OSError) -> str:
    what = e.strerror or str(e)
    hint = _WRITE_HINTS.get(e.errno)
    return (f"{e.filename}: " if e.filename else "") + what + (f" ({hint})" if hint else "")


def _raised_by_vitkit(e: BaseException) -> bool:
    """True when `e` comes from a `raise` statement in vitkit's own code: an error vitkit raises on purpose, with a
    message for the user (e.g. TrainingDiverged), rather than one from inside torch (a bug), including a torch
    operator that fails on a line of vitkit's (a shape mismatch in a forward pass)."""
    import linecache
    import os

    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # vitkit/, above vitkit/cli/
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(package + os.sep):
        return False
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return not line or line.startswith("raise")  # no source to read (an installed .pyc only): vitkit's file decides


def user_error_message(e: BaseException) -> str | None:
    """The message for an error the user can fix (a setting, a file, the environment), None for anything else
    (a bug in vitkit: the CLI lets its traceback through)."""
    import pickle

    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover -- safetensors is a dependency
        SafetensorError = ()  # noqa: N806
    try:
        from yaml import YAMLError
    except ImportError:  # pragma: no cover
        YAMLError = ()  # noqa: N806
    try:
        from PIL.Image import DecompressionBombError
    except ImportError:  # Pillow is optional
        DecompressionBombError = ()  # noqa: N806
    text = " ".join(str(e).split()) if str(e) else type(e).__name__
    if isinstance(e, pickle.UnpicklingError):
        if text.startswith(("could not read", "refusing to load")):  # vitkit's readers name the file
            return text
        # torch's own text advises weights_only=False, which would run code from the file: keep only the detail
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        return (
            f"could not read a pickle file as data ({detail[:300]}): vitkit reads tensors and plain data only "
            f"and never runs code from a file; check the file, or re-save it with safetensors"
        )
    if isinstance(e, EOFError):
        return f"a file ended early: it is truncated or still being written ({text})"
    if isinstance(e, YAMLError):
        return f"not a plain YAML file: {text}"
    if isinstance(e, SafetensorError):
        code = re.search(r"\(os error (\d+)\)", text)
        hint = _WRITE_HINTS.get(int(code.group(1))) if code else None
        return f"safetensors could not read or write a file: {text}" + (f" ({hint})" if hint else "")
    if isinstance(e, DecompressionBombError):
        return f"{text}: resize the image first"
    if (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and "can't allocate memory" in text)
    ):  # torch's CPU allocator
        return (
            f"out of memory ({text}): use a smaller --run.batch_size or model, or --run.grad_checkpointing=true "
            f"when training"
        )
    if isinstance(e, OSError):  # missing files, permissions, read-only or full disks
        return _os_error_message(e) if e.errno is not None else text
    if isinstance(e, ImportError):
        if (e.name or "").split(".")[0] == "vitkit":  # vitkit's own modules failing to import: a bug
            return None
        if isinstance(e, ModuleNotFoundError) and e.name:  # an optional package that is not installed
            package = _PIP_NAMES.get(e.name.split(".")[0], e.name.split(".")[0])
            return f"{text}: this needs the {package!r} package (pip install {package})"
        return text  # vitkit's own ImportErrors say what to install
    if isinstance(e, ValueError):
        return text
    if isinstance(e, RuntimeError) and _raised_by_vitkit(e):
        return text
    return None
