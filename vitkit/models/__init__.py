"""One file per architecture family. Importing this package registers every family and model name."""

# first: the families register here
from ._base import FAMILIES, Backbone, VitkitModel, config_from_dict, register_family
from . import cnn  # noqa: F401
from . import cvt  # noqa: F401
from . import dvt  # noqa: F401
from . import mixer  # noqa: F401
from . import vit  # noqa: F401
from . import swin  # noqa: F401
from . import vivit  # noqa: F401
from . import timesformer  # noqa: F401
from . import mvit  # noqa: F401
from . import mae  # noqa: F401  (the MAE pre-training model, mae_vit_*)
from .features import FeatureGetterNet, FeatureInfo, features_model
from .vit import VisionTransformer, ViTConfig

__all__ = [
    "FAMILIES",
    "Backbone",
    "FeatureGetterNet",
    "FeatureInfo",
    "VisionTransformer",
    "ViTConfig",
    "VitkitModel",
    "config_from_dict",
    "features_model",
    "register_family",
]
