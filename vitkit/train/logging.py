"""What a training run logs as it goes: a per-step CSV, TensorBoard scalars, Weights & Biases.

`RunLogger` is the one object a training loop talks to; only the main process (rank 0) writes.

- `RUN/steps.csv` always: one row per `--run.log_every` steps, a `step` column then the values the loop
  passes (`loss`, `lr`, ...). The header is the first row's keys; a key that first appears later adds a
  column (the file is rewritten with the wider header, earlier rows leave the cell empty) and a key a row
  leaves out is an empty cell. Each row is flushed as it is written, so a killed run keeps its rows; a
  resumed run calls `truncate(step)` so the file holds each step once.
- TensorBoard (`--run.tensorboard=auto|true|false`): the epoch rows under the `TAGS` names, the steps under
  `step/<key>`, the test metrics under `test/<name>`. `auto` writes when the `tensorboard` package
  imports. View with `tensorboard --logdir runs/`.
- Weights & Biases (`--run.wandb=true|false|auto`, `--run.wandb_project`, default `vitkit`): the same
  scalars, the run's config, and the final metrics in the run summary. The W&B run id is kept in
  `RUN/wandb_id.txt`, so `--run.resume` continues the same W&B run. `auto` logs when the `wandb` package
  imports and is configured (WANDB_API_KEY, WANDB_MODE, or the credentials `wandb login` stores);
  `WANDB_MODE=offline` writes the run under `RUN/wandb/` for a later `wandb sync`.
"""

from __future__ import annotations

import csv
import io
import logging
import netrc
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..hub import atomic_write

logger = logging.getLogger("vitkit")

INSTALL = "pip install tensorboard  (or pip install vitkit[tensorboard])"
WANDB_INSTALL = "pip install wandb  (or pip install vitkit[wandb])"
STEPS_CSV = "steps.csv"
WANDB_ID = "wandb_id.txt"

# metrics.jsonl keys -> TensorBoard tags (grouped by split in the UI)
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "lr": "lr",
    "images_per_second": "throughput/images_per_second",
    "seconds": "time/epoch_seconds",
}
TEST_KEYS = ("test_acc", "test_top5", "test_loss")


def _mode(value: Any, option: str = "--run.tensorboard") -> str:
    mode = str(value).strip().lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"{option} must be auto, true or false, got {value!r}")
    return mode


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardLogger:
    """`log_epoch(row)` writes the numeric entries of a metrics row as scalars at step = epoch;
    `log_step(step, values)` writes `step/<key>` scalars at that step."""

    def __init__(self, run_dir: str | Path, mode: Any = "auto", main: bool = True) -> None:
        self.writer = None
        mode = _mode(mode)
        if mode == "false" or not main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises this when the tensorboard package is missing
            if mode == "true":
                raise ImportError(f"--run.tensorboard=true needs TensorBoard: {INSTALL}") from None
            return
        self.writer = SummaryWriter(log_dir=str(run_dir))
        logger.info("TensorBoard: tensorboard --logdir %s", run_dir)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"step/{key}", value, global_step=step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and _is_number(value):
                self.writer.add_scalar(TAGS.get(key, key), value, global_step=int(row["epoch"]))
        self.writer.flush()

    def log_final(self, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in TEST_KEYS:
            if _is_number(metrics.get(key)):
                self.writer.add_scalar(f"test/{key[5:]}", metrics[key], global_step=int(metrics["epochs"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class StepCSV:
    """`RUN/steps.csv`: a `step` column, then one column per value key (see the module docstring)."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.columns: list[str] = []
        self.file = None
        if not append:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            header, rows = self._read()
            self.columns = header[1:]
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a row cut short by a kill: drop it
                self._rewrite(rows)

    def _read(self) -> tuple[list[str], list[list[str]]]:
        """The header and the complete rows (a row cut short by a kill, or unreadable, is left out)."""
        with open(self.path, newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]
        parsed = list(csv.reader(lines))
        if not parsed:  # empty: nothing was logged yet
            return ["step"], []
        if not parsed[0] or parsed[0][0] != "step":
            raise ValueError(
                f"{self.path} is not a vitkit steps file (its first column is not `step`): move it out of the run "
                "directory to resume the run"
            )
        header, rows = parsed[0], []
        for row in parsed[1:]:
            try:
                int(row[0])
            except (ValueError, IndexError):
                continue
            if len(row) == len(header):
                rows.append(row)
        return header, rows

    def _rewrite(self, rows: list[list[str]]) -> None:
        self.close()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["step", *self.columns])
        writer.writerows(rows)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(buf.getvalue()))

    def write(self, step: int, values: dict[str, float]) -> None:
        new = [k for k in values if k not in self.columns]
        if new:
            old_rows = self._read()[1] if self.path.is_file() else []
            self.columns += new
            self._rewrite([row + [""] * len(new) for row in old_rows])
        if self.file is None:
            self.file = open(self.path, "a", newline="")  # noqa: SIM115 (kept open across rows, closed in close())
        cells = [str(step)] + [_cell(values[k]) if k in values else "" for k in self.columns]
        csv.writer(self.file, lineterminator="\n").writerow(cells)
        self.file.flush()

    def truncate(self, step: int) -> None:
        """Keep the rows of steps <= `step` (atomically)."""
        if not self.path.is_file():
            return
        header, rows = self._read()
        self.columns = header[1:]
        self._rewrite([row for row in rows if int(row[0]) <= step])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _cell(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))


def _numbers(step: int, values: dict[str, Any]) -> dict[str, float]:
    """`values` as plain Python numbers (a 0-d tensor's `.item()`); anything else is a TypeError."""
    out = {}
    for key, value in values.items():
        if key == "step":
            raise ValueError("log_step: `step` is the first argument, not a key of the values")
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if not _is_number(value):
            raise TypeError(f"log_step(step={step}): {key}={value!r} is not a number (log floats and ints)")
        out[key] = value
    return out


def wandb_configured() -> bool:
    """Whether W&B has somewhere to log without asking: an API key, a WANDB_MODE, or `wandb login`'s netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunLogger:
    """The per-step CSV, TensorBoard and Weights & Biases logging of one run (the module docstring).

    `run_cfg` is the run's `RunConfig`: `tensorboard`, `wandb`, `wandb_project`, `log_every` and `resume`
    are read from it. `config` (the run's whole configuration, e.g. `TrainConfig.to_dict()`) goes to W&B.
    `main` is False on every process but rank 0: those log nothing.

    Steps count optimizer steps from 1: `log_step(step, values)` writes a row when `step % log_every == 0`,
    and `truncate(step)` (a resumed run, `step` the checkpoint's step count) keeps the rows of steps <= step.
    """

    def __init__(self, run_dir: str | Path, run_cfg: Any, main: bool, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.main = main
        self.log_every = int(getattr(run_cfg, "log_every", 1) or 1)
        if self.log_every < 1:
            raise ValueError(f"--run.log_every must be a positive number of steps, got {self.log_every}")
        wandb_mode = _mode(getattr(run_cfg, "wandb", "false"), "--run.wandb")
        resume = bool(getattr(run_cfg, "resume", False))
        self.last_step: int | None = None
        self.csv: StepCSV | None = None
        self.tb = TensorBoardLogger(self.run_dir, getattr(run_cfg, "tensorboard", "auto"), main=main)
        self.wandb_run = None
        if not main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv = StepCSV(self.run_dir / STEPS_CSV, append=resume)
        if wandb_mode != "false":
            self.wandb_run = _start_wandb(
                self.run_dir, wandb_mode, getattr(run_cfg, "wandb_project", None), config or {}, resume
            )

    @property
    def wandb_active(self) -> bool:
        return self.wandb_run is not None

    def log_step(self, step: int, values: dict[str, Any]) -> None:
        """Log the values of optimizer step `step` (counted from 1) when `step % log_every == 0`."""
        step = int(step)
        self.last_step = step
        if not self.main or step % self.log_every:
            return
        values = _numbers(step, values)
        self.csv.write(step, values)
        self.tb.log_step(step, values)
        if self.wandb_run is not None:
            self.wandb_run.log({f"step/{k}": v for k, v in values.items()}, step=step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """A metrics.jsonl row (`epoch`, `train_loss`, `val_acc`, ...): TensorBoard and W&B scalars."""
        if not self.main:
            return
        self.tb.log_epoch(row)
        if self.wandb_run is not None:
            scalars = {TAGS.get(k, k): v for k, v in row.items() if _is_number(v)}
            self.wandb_run.log(scalars, **({"step": self.last_step} if self.last_step is not None else {}))

    def log_final(self, metrics: dict[str, Any]) -> None:
        """The run's final metrics (metrics.json): TensorBoard `test/*` scalars and the W&B run summary."""
        if not self.main:
            return
        self.tb.log_final(metrics)
        if self.wandb_run is not None:
            for key, value in metrics.items():
                if _is_number(value):
                    self.wandb_run.summary[key] = value

    def truncate(self, step: int) -> None:
        """Drop the steps.csv rows after step `step` (atomically): a run resumed from a checkpoint taken at
        step `step` logs the later steps again, and the file holds each step once. W&B keeps the rows it
        has; it ignores a step logged again (its steps only increase)."""
        self.last_step = int(step) if step else None
        if self.main and self.csv is not None:
            self.csv.truncate(int(step))

    def close(self, failed: bool = False) -> None:
        if self.csv is not None:
            self.csv.close()
        self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
            self.wandb_run = None

    def __enter__(self) -> RunLogger:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _start_wandb(run_dir: Path, mode: str, project: str | None, config: dict[str, Any], resume: bool):
    try:
        import wandb
    except ImportError:
        if mode == "true":
            raise ImportError(f"--run.wandb=true needs Weights & Biases: {WANDB_INSTALL}") from None
        return None
    if mode == "auto" and not wandb_configured():
        return None
    id_file = run_dir / WANDB_ID
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(4)
        atomic_write(id_file, lambda tmp: Path(tmp).write_text(run_id + "\n"))
    try:
        run = wandb.init(
            project=project or "vitkit", dir=str(run_dir), config=config, resume="allow", id=run_id, reinit="create_new"
        )
    except Exception as e:  # noqa: BLE001 (wandb raises its own errors for login, network and settings)
        raise RuntimeError(
            f"Weights & Biases could not start a run ({type(e).__name__}: {e}). Log in with `wandb login` or set "
            "WANDB_API_KEY; WANDB_MODE=offline logs to the run directory without an account; --run.wandb=false "
            "turns it off"
        ) from e
    logger.info("Weights & Biases: run %s in project %s", run_id, project or "vitkit")
    return run
