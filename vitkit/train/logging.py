"""TensorBoard scalars per epoch, when TensorBoard is installed (`pip install vitkit[tensorboard]`).

`--run.tensorboard=auto` (the default) writes event files into the run directory when the
`tensorboard` package imports and says nothing otherwise; `true` requires it (an ImportError names
the fix); `false` never writes. Only the main process (rank 0) writes. View with
`tensorboard --logdir runs/`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("vitkit")

INSTALL = "pip install tensorboard  (or pip install vitkit[tensorboard])"

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


def _mode(value: Any) -> str:
    mode = str(value).strip().lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"--run.tensorboard must be auto, true or false, got {value!r}")
    return mode


class TensorBoardLogger:
    """`log_epoch(row)` writes the numeric entries of a metrics row as scalars at step = epoch."""

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

    def log_epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(TAGS.get(key, key), value, global_step=int(row["epoch"]))
        self.writer.flush()

    def log_final(self, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in ("test_acc", "test_top5", "test_loss"):
            if isinstance(metrics.get(key), (int, float)):
                self.writer.add_scalar(f"test/{key[5:]}", metrics[key], global_step=int(metrics["epochs"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
