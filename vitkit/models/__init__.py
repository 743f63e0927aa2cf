"""One file per architecture family. Importing this package registers every family and model name."""

from . import cvt  # noqa: F401
from . import mixer  # noqa: F401
from . import vit  # noqa: F401
from . import swin  # noqa: F401
from ._base import FAMILIES, VitkitModel
from .vit import VisionTransformer, ViTConfig

__all__ = ["FAMILIES", "VisionTransformer", "ViTConfig", "VitkitModel"]
