"""Training: configuration and recipes, optimizers and schedules, one runner for every task.

`train(cfg)` (supervised) and `vitkit.train.pretrain.pretrain(cfg)` (self-supervised) build a task and run
it with `Runner`; a task of your own (subclass `Task`: a loss per batch) gets the same loop, checkpoints,
DDP, precision and logging.
"""

from .config import TrainConfig, apply_overrides, load_recipe
from .engine import evaluate, train
from .runner import Runner, TrainingDiverged
from .tasks import ClassificationTask, DistillationTask, MultiExitTask, PretrainTask, Task, process_stream, task_for

__all__ = [
    "ClassificationTask",
    "DistillationTask",
    "MultiExitTask",
    "PretrainTask",
    "Runner",
    "Task",
    "TrainConfig",
    "TrainingDiverged",
    "apply_overrides",
    "evaluate",
    "load_recipe",
    "process_stream",
    "task_for",
    "train",
]
