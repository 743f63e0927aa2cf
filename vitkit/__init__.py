"""vitkit: the Vision Transformer family in PyTorch."""

__version__ = "0.1.0"

from . import models  # noqa: E402,F401  (registers the model families and names)
from .hub import CheckpointError, from_pretrained  # noqa: E402
from .registry import create_model, is_model, list_models, list_pretrained  # noqa: E402

__all__ = [
    "CheckpointError",
    "create_model",
    "from_pretrained",
    "is_model",
    "list_models",
    "list_pretrained",
    "__version__",
]
