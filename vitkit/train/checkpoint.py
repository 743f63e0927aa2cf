"""Run directories and checkpoints, shared by `vitkit train` and `vitkit pretrain`.

What a run directory guarantees (docs/reliability.md, "Guarantees"):

- One process at a time. `RunLock` holds an exclusive `fcntl.flock` on `RUN/.lock` for the life of
  the run; a second run into the same directory stops at once with a message naming the first
  one's process id. The kernel drops the lock when the process exits, however it exits (SIGKILL
  included), so there is never a stale lock to clear by hand.
- Nothing is overwritten unasked. A new run goes only into a missing or empty directory, unless
  `--overwrite` (which deletes the files vitkit writes and leaves any others). `--resume`
  continues the run with the settings saved in its `config.yaml`; a changed setting that would
  change the result is refused, naming the setting and both values (`resume_config_changes`).
- A checkpoint survives a kill at any instant. `write_checkpoint` writes the new checkpoint into
  `.checkpoint.tmp`, flushes every file to disk, and writes the marker `complete.json` (the files
  and their sizes) last; only then does it move `checkpoint` aside to `.checkpoint.old`, move the
  new one in as `checkpoint` and delete the old one. `recover` runs before anything else at
  start-up and finishes an interrupted swap: a complete `.checkpoint.tmp` is the newest
  checkpoint and is moved in; an incomplete one is deleted; `.checkpoint.old` is moved back only
  when `checkpoint` is missing. So at every instant one complete checkpoint can be found.
- A failed write (a full disk: an OSError with ENOSPC, or the writer's own error while the disk
  has under 1 MiB free) leaves the previous checkpoint as it was, deletes the partial one and stops
  the run with a message (`CheckpointWriteError`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("vitkit")

CHECKPOINT_DIR = "checkpoint"
TMP_DIR = f".{CHECKPOINT_DIR}.tmp"
OLD_DIR = f".{CHECKPOINT_DIR}.old"
MARKER = "complete.json"  # written last into a checkpoint: the files and their sizes
LOCK_NAME = ".lock"
CONFIG_NAME = "config.yaml"

# Settings that cannot change a run's result, so `--resume` takes them from the command line (and logs them);
# every other setting must equal the one the run was started with.
OPERATIONAL = frozenset(
    {
        "run.out",
        "run.resume",
        "run.overwrite",
        "run.threads",
        "run.progress",
        "run.tensorboard",
        "run.log_every",
        "run.wandb",
        "run.wandb_project",
        "run.reuse_cpu_memory",
        "run.checkpoint_every",
        "data.num_workers",
    }
)

# What `vitkit train` / `vitkit pretrain` write into a run directory (deleted by --overwrite; other files stay).
RUN_OUTPUTS = (
    "config.yaml",
    "metrics.json",
    "metrics.jsonl",
    "steps.csv",  # vitkit/train/logging.py's per-step rows and W&B run id
    "wandb_id.txt",
    "curves.png",
    "reconstruction.png",
    "model",
    "backbone",
    CHECKPOINT_DIR,
    TMP_DIR,
    OLD_DIR,
)


class RunInUse(RuntimeError):
    """Another process is running in this run directory."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


# ------------------------------------------------------------------------------------ RNG and module state
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def module_scalars(module: torch.nn.Module) -> dict[str, int | float | bool]:
    """The public Python numbers of every submodule (schedules a method advances per step, e.g. DINO's
    teacher temperature), which `state_dict()` does not hold."""
    out = {}
    for name, m in module.named_modules():
        for attr, value in vars(m).items():
            if not attr.startswith("_") and attr != "training" and type(value) in (int, float, bool):
                out[f"{name}.{attr}" if name else attr] = value
    return out


def set_module_scalars(module: torch.nn.Module, values: dict[str, Any]) -> None:
    for key, value in values.items():
        name, _, attr = key.rpartition(".")
        setattr(module.get_submodule(name) if name else module, attr, value)


def nonfinite_tensors(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors (nested in dicts/lists too) that hold a NaN or an infinity."""
    bad = []

    def visit(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{name}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for k, v in enumerate(value):
                visit(f"{name}.{k}", v)

    for name, value in named:
        visit(name, value)
    return bad


# ------------------------------------------------------------------------------------ files
def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 2**62


def _files(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


def _check_marker(directory: Path) -> tuple[dict[str, Any] | None, str]:
    """(the marker, "") of a complete checkpoint directory, or (None, what is missing or wrong)."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        for name, size in marker["files"].items():
            path = directory / name
            if not path.is_file():
                return None, f"{path} is missing"
            if path.stat().st_size != size:
                return None, f"{path} has {path.stat().st_size} bytes where {MARKER} lists {size}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"its {MARKER} is missing or unreadable ({' '.join(str(e).split()) or type(e).__name__})"
    return marker, ""


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a complete checkpoint directory, or None (missing, unreadable, or a listed file is
    missing or has another size: the write never finished)."""
    return _check_marker(directory)[0]


def _usable(directory: Path, state_name: str) -> bool:
    """A checkpoint directory that was moved into place whole: with a marker, or (written before markers
    existed) with its state file."""
    if not directory.is_dir():
        return False
    return read_marker(directory) is not None or (
        not (directory / MARKER).exists() and (directory / state_name).is_file()
    )


def _position(marker: dict[str, Any] | None) -> tuple[int, int]:
    return (int(marker.get("epoch", -1)), int(marker.get("step", 0))) if marker else (-1, 0)


def write_checkpoint(run_dir: Path, write: Callable[[Path], None], info: dict[str, Any]) -> Path:
    """Write a checkpoint with `write(directory)` and swap it in as RUN/checkpoint (see the module docstring).

    `info` (e.g. {"epoch": 3, "step": 0}) goes into the marker. No step cleans up after a kill: whatever
    instant the process dies at, `recover` finds one complete checkpoint. A write that fails with an
    OSError (a full disk) deletes the partial directory and raises `CheckpointWriteError`; the previous
    checkpoint is untouched."""
    final, tmp, old = run_dir / CHECKPOINT_DIR, run_dir / TMP_DIR, run_dir / OLD_DIR
    try:
        if tmp.exists():  # a write that never finished (`recover` promoted any complete one at start-up)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write(tmp)
        files = _files(tmp)
        for name in files:
            _fsync(tmp / name)  # the data is on disk before the marker says it is
        text = json.dumps({**info, "files": files}, indent=2) + "\n"
        with open(tmp / MARKER, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp, directory=True)
    except Exception as e:  # an OSError, or the writer's own error for one (torch.save: RuntimeError)
        full = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or _free_bytes(run_dir) < 2**20
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; `checkpoint` is as it was
        what = "the disk is full" if full else "the write failed"
        detail = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointWriteError(
            f"could not write the checkpoint {final}: {what} ({detail}); the previous checkpoint is intact. "
            f"{'Free space' if full else 'Fix the cause'} and continue with --resume"
        ) from e
    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # left by an earlier swap that died after moving the new checkpoint in
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(run_dir, directory=True)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover(run_dir: Path, state_name: str) -> str | None:
    """Finish a checkpoint swap that a kill interrupted (see the module docstring); returns what was done."""
    final, tmp, old = run_dir / CHECKPOINT_DIR, run_dir / TMP_DIR, run_dir / OLD_DIR
    done = None
    new = read_marker(tmp) if tmp.is_dir() else None
    if new is not None and (not final.exists() or _position(new) > _position(read_marker(final))):
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(run_dir, directory=True)
        done = f"moved the complete checkpoint {tmp.name} (epoch {new.get('epoch')}, step {new.get('step', 0)}) in"
    if tmp.exists():
        shutil.rmtree(tmp)  # half written: the write it belongs to never finished
        done = done or f"deleted the unfinished checkpoint {tmp.name}"
    if old.exists():
        if not final.exists() and _usable(old, state_name):
            os.replace(old, final)  # the swap died between its two moves with no complete new checkpoint
            _fsync(run_dir, directory=True)
            done = f"moved the previous checkpoint {old.name} back"
        else:
            shutil.rmtree(old)
    return done


def checkpoint_info(run_dir: Path, state_name: str) -> dict[str, Any] | None:
    """Where the run's checkpoint stands ({"epoch", "step"}), or None when it has none. A checkpoint whose files
    changed after it was moved in whole (a disk error, an edit) is an error, not a missing checkpoint."""
    final = run_dir / CHECKPOINT_DIR
    damage = _check_marker(final)[1] if final.is_dir() and (final / MARKER).exists() else ""
    if damage:
        raise ValueError(
            f"the checkpoint {final} is damaged: {damage}. It was complete when written, so "
            f"the files changed since (a disk error, or an edit); restore them from a backup, or start "
            f"the run again with --overwrite"
        )
    if not _usable(final, state_name):
        return None
    marker = read_marker(final)
    return {"epoch": marker.get("epoch"), "step": marker.get("step", 0)} if marker else {"epoch": None, "step": 0}


def describe_checkpoint(run_dir: Path, info: dict[str, Any] | None) -> str:
    if info is None:
        return "none"
    where = f"after epoch {info['epoch']}" if info["epoch"] is not None else "of an earlier version"
    if info.get("step"):
        where = f"at epoch {info['epoch'] + 1}, step {info['step']}"
    return f"{run_dir / CHECKPOINT_DIR} ({where})"


# ------------------------------------------------------------------------------------ the lock
class RunLock:
    """An exclusive `flock` on RUN/.lock, held until `release()` or the process's end (any end)."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl

        self.path = run_dir / LOCK_NAME
        self._file = open(self.path, "a+")  # noqa: SIM115 -- held open for the life of the run
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunInUse(
                f"{run_dir} is in use by another vitkit run (process {holder}): wait for it to finish, "
                f"or choose another --out"
            ) from e
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor drops the flock


# ------------------------------------------------------------------------------------ settings
def read_saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's own settings (its config.yaml as a mapping), or None when it has none."""
    from .config import _yaml

    yaml = _yaml()
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(
            f"{path} is not readable YAML ({' '.join(str(e).split())}): repair it, or start the run "
            f"again with --overwrite"
        ) from None
    return values if isinstance(values, dict) else None


def saved_settings(cfg_type: type, values: dict[str, Any], run_dir: Path):
    """`cfg_type.from_dict(values)` of a run's config.yaml; a setting it cannot take names the file."""
    try:
        return cfg_type.from_dict(values)
    except ValueError as e:
        raise ValueError(
            f"{Path(run_dir) / CONFIG_NAME}: {e}. Repair the file, or start the run again with --overwrite"
        ) from None


def run_command(values: dict[str, Any]) -> str:
    """'pretrain' or 'train': which command wrote these settings (a pre-training run has a method section)."""
    return "pretrain" if "method" in values else "train"


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict) and (not prefix or values):
        out = {}
        for k, v in values.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: values}


def resume_config_changes(saved: dict[str, Any], given: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(changes that would change the result, changes that cannot) between a run's saved settings and the
    given ones, each as 'key: VALUE_SAVED -> VALUE_GIVEN'."""
    a, b = _flatten(saved), _flatten(given)
    meaning, operational = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            line = f"{key}: the run has {a.get(key, '<unset>')!r}, given {b.get(key, '<unset>')!r}"
            (operational if key in OPERATIONAL else meaning).append(line)
    return meaning, operational


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def open_run(run_dir: Path, command: str, cfg, *, state_name: str, main: bool) -> tuple[RunLock | None, dict | None]:
    """Check and prepare the run directory before a run starts; returns (the lock, the checkpoint's position).

    On the main process: take the lock, finish an interrupted checkpoint swap, then either check a resumed
    run's settings against its config.yaml (refusing changes of meaning, logging the others) or make sure a
    new run overwrites nothing unasked, and write config.yaml. Other processes only read."""
    resume, overwrite = cfg.run.resume, getattr(cfg.run, "overwrite", False)
    if resume and not cfg.run.out:
        raise ValueError("--resume continues the run in a directory: name it with --out DIR")
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, "the run directory (--out) is a file, not a directory: choose another --out", str(run_dir)
        )
    if resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume: {run_dir} does not exist; start the run without --resume")
    if not main:
        return None, checkpoint_info(run_dir, state_name) if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        fixed = recover(run_dir, state_name)
        if fixed:
            logger.info("%s: %s (a kill interrupted the last checkpoint write)", run_dir, fixed)
        info = checkpoint_info(run_dir, state_name) if resume else None  # --overwrite: even a damaged one goes
        if resume:
            saved = read_saved_config(run_dir)
            if saved is None:
                raise FileNotFoundError(
                    f"--resume: {run_dir} holds no vitkit run (no {CONFIG_NAME}); start the run without --resume"
                )
            if run_command(saved) != command:
                raise ValueError(
                    f"--resume: {run_dir} holds a `vitkit {run_command(saved)}` run, not a `vitkit {command}` one"
                )
            meaning, operational = resume_config_changes(
                saved_settings(type(cfg), saved, run_dir).to_dict(), cfg.to_dict()
            )
            if meaning:
                raise ValueError(
                    f"--resume: these settings differ from the run's own ({run_dir / CONFIG_NAME}) and would change "
                    f"its result: {'; '.join(meaning)}. Resume without them, or start a new run (another --out, "
                    f"or --overwrite)"
                )
            for line in operational:
                if not line.startswith(("run.resume:", "run.out:", "run.overwrite:")):  # how, not what, to run
                    logger.info("resuming with a changed setting that does not change the result: %s", line)
            if info is None:
                raise FileNotFoundError(
                    f"--resume: {run_dir} has no checkpoint yet (the run stopped before its first one); start it "
                    f"again with --overwrite"
                )
        else:
            present = sorted(
                p.name + ("/" if p.is_dir() else "")
                for p in run_dir.iterdir()
                if p.name != LOCK_NAME and not _write_leftover(p.name)
            )
            if present and not overwrite:
                saved = read_saved_config(run_dir)
                if saved is None:
                    what = f"is not empty and is not a vitkit run (it holds {_listing(present)})"
                elif run_command(saved) != command:
                    what = f"holds a `vitkit {run_command(saved)}` run"
                elif (run_dir / "metrics.json").is_file():
                    what = "holds a finished run (metrics.json)"
                elif (info := checkpoint_info(run_dir, state_name)) is None:
                    raise FileExistsError(
                        f"{run_dir} holds a run that stopped before its first checkpoint: pass "
                        f"--overwrite to start it again (deleting its outputs)"
                    )
                else:
                    raise FileExistsError(
                        f"{run_dir} holds an unfinished run (checkpoint: "
                        f"{describe_checkpoint(run_dir, info)}): continue it with --resume, or pass "
                        f"--overwrite to start again (deleting its outputs)"
                    )
                raise FileExistsError(
                    f"{run_dir} {what}: choose another --out, or pass --overwrite to write the new "
                    f"run there (it deletes what a vitkit run writes there; other files stay)"
                )
            clear_outputs(run_dir)  # with --overwrite, or an empty directory: a killed write's temporary files
            from .config import save_config

            save_config(cfg, run_dir / CONFIG_NAME)
    except BaseException:
        lock.release()
        raise
    return lock, info


def _write_leftover(name: str) -> bool:
    """A temporary file of an atomic write of a run output (`.NAME.RANDOM.tmp`) that a kill interrupted."""
    import fnmatch

    return any(fnmatch.fnmatchcase(name, f".{output}.*.tmp") for output in RUN_OUTPUTS)


def clear_outputs(run_dir: Path) -> None:
    """`--overwrite`: delete what a vitkit run writes into `run_dir` (other files stay). config.yaml goes last:
    a kill part-way leaves a directory that still reads as a vitkit run, which --overwrite finishes clearing."""
    for path in run_dir.glob("events.out.tfevents.*"):
        path.unlink()
    for path in run_dir.iterdir():
        if _write_leftover(path.name):
            path.unlink()
    for name in reversed(RUN_OUTPUTS):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def resumed_config(cfg, command: str, recipe: str | None, overrides: list[str], adjust: Callable | None = None):
    """The settings of `vitkit train|pretrain --out DIR --resume [--recipe R] [--section.field=value ...]`: the
    run's own (its config.yaml), then only what this command line states (the recipe's entries, the
    overrides, `adjust(cfg)` for flags such as --finetune). `train`/`pretrain` then refuse any of them that
    would change the result. Without a readable run in `cfg.run.out`, `cfg` as given (the run refuses it with
    a message)."""
    from .config import _yaml, apply_overrides, set_field

    saved = read_saved_config(Path(cfg.run.out)) if cfg.run.out else None
    if saved is None or run_command(saved) != command:
        return cfg
    base = saved_settings(type(cfg), saved, Path(cfg.run.out))
    if recipe:
        for section, entries in (_yaml().safe_load(Path(recipe).read_text()) or {}).items():
            for key, value in (entries or {}).items():
                set_field(base, f"{section}.{key}", value)
    apply_overrides(base, overrides)
    if adjust is not None:
        adjust(base)
    base.run.out, base.run.resume, base.run.overwrite = cfg.run.out, True, cfg.run.overwrite
    return base
