"""One file per architecture family. Importing this package registers every family and model name."""

from . import cnn  # noqa: F401
from . import cvt  # noqa: F401
from . import dvt  # noqa: F401
from . import mixer  # noqa: F401
from . import vit  # noqa: F401
from . import swin  # noqa: F401
from . import vivit  # noqa: F401
from . import timesformer  # noqa: F401
from . import mvit  # noqa: F401
from ..methods import mae as _mae  # noqa: F401,E402  (registers the MAE pre-training family, mae_vit_*)
from ._base import FAMILIES, VitkitModel
from .features import FeatureGetterNet, FeatureInfo, features_model
from .vit import VisionTransformer, ViTConfig

__all__ = ["FAMILIES", "FeatureGetterNet", "FeatureInfo", "VisionTransformer", "ViTConfig", "VitkitModel",
           "features_model"]
