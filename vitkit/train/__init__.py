"""Training: configuration and recipes, optimizers and schedules, the (distributed) loop."""

from .config import TrainConfig, apply_overrides, load_recipe
from .engine import TrainingDiverged, evaluate, train

__all__ = ["TrainConfig", "TrainingDiverged", "apply_overrides", "evaluate", "load_recipe", "train"]
