"""Model names -> (family, config). Sizes are data: each family file registers its table of named
configurations here under the names timm users know; `create_model` builds any of them."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # the original ViT / big_vision preprocessing: x in [-1, 1]
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    config: dict[str, Any]
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, family: str, config: dict[str, Any], **pretrained_cfg: Any) -> None:
    if name in _MODELS:
        raise ValueError(f"model name {name!r} is registered twice")
    cfg = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bicubic")
    cfg.update(pretrained_cfg)
    _MODELS[name] = ModelSpec(name, family, dict(config), cfg)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; `pattern` is a shell-style wildcard such as 'vit_*_224'."""
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} `vitkit.list_models('vit_*')` lists the {len(_MODELS)} registered names."
        ) from None


def create_model(
    name: str,
    *,
    pretrained: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    **overrides: Any,
):
    """Build a registered model, optionally loading weights from a local checkpoint.

    `pretrained` is a path: a vitkit directory (`save_pretrained`), a Hugging Face model directory,
    a timm state dict (.safetensors/.pth/.bin) or an official DeiT/DINO/MAE checkpoint. Loading
    weights trained at another image size resamples the position embeddings; another
    `num_classes` re-initialises the head (and says so). Any config field can be overridden,
    e.g. `drop_path_rate=0.1`, `global_pool='avg'`, `dynamic_img_size=True`.
    """
    from .models._base import FAMILIES, config_from_dict
    from .validate import check_model_config

    spec = get_model_spec(name)
    values = dict(spec.config)
    for key, value in (("num_classes", num_classes), ("img_size", img_size), ("in_chans", in_chans)):
        if value is not None:
            values[key] = value
    values.update(overrides)
    cls = FAMILIES[spec.family]
    check_model_config(values, source=name, config_class=cls.config_class)  # before anything is built
    model = cls(config_from_dict(cls.config_class, values))
    model.model_name = name
    model.pretrained_cfg = dict(spec.pretrained_cfg)
    if pretrained is not None:
        from .hub import load_pretrained

        load_pretrained(model, pretrained)
    return model
