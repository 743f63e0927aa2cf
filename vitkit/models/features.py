"""Feature-extraction wrappers with timm's interface (`create_model(..., features_only=True)`).

`features_model(model, ...)` returns a `FeatureGetterNet` as timm's: a module whose forward returns
the list of feature maps selected by `out_indices`, taken with the model's `forward_intermediates`,
and whose `feature_info` is a `FeatureInfo` (`.channels()`, `.reduction()`, `.module_name()`,
`.get_dicts()`) over the model's own `feature_info` list. The layers after the last selected one,
the final norm and the head are pruned (`prune_intermediate_layers`), as timm's getter does.

Defaults per family follow timm's `feature_cfg`: plain ViT / DeiT / the R50 hybrid / MLP-Mixer take
the last 3 blocks, NCHW (timm: `out_indices=3`, `feature_cls='getter'`); Swin, CvT and the other
hierarchical models take every stage. Swin returns its stages channels-last (NHWC) by default,
as timm's Swin feature model does (timm wraps it in a `FeatureListNet` with the model's
`output_fmt`); `feature_cls='getter'` (timm's `FeatureGetterNet` default) or `output_fmt='NCHW'`
gives NCHW. State-dict keys are the model's under `model.` (timm's list wrapper flattens them).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn

OUTPUT_FORMATS = ("NCHW", "NHWC")


def _as_tuple(out_indices: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    if isinstance(out_indices, int):  # an int n: the last n
        return tuple(range(-out_indices, 0))
    return tuple(out_indices)


class FeatureInfo:
    """timm's `FeatureInfo`: per-feature dicts (num_chs, reduction, module, index) and accessors that
    return the values at `out_indices` (idx=None), at one module index (an int) or at several (a list)."""

    def __init__(self, feature_info: list[dict[str, Any]], out_indices: int | tuple[int, ...]) -> None:
        out_indices = _as_tuple(out_indices)
        prev_reduction = 1
        for i, fi in enumerate(feature_info):
            if not ("num_chs" in fi and fi["num_chs"] > 0 and "module" in fi and "reduction" in fi):
                raise ValueError(f"feature_info entry {i} needs num_chs > 0, reduction and module: {fi}")
            if fi["reduction"] < prev_reduction:
                raise ValueError(f"feature_info reductions must not decrease: {feature_info}")
            prev_reduction = fi["reduction"]
            fi.setdefault("index", i)
        self.out_indices = out_indices
        self.info = feature_info

    def from_other(self, out_indices: int | tuple[int, ...]) -> FeatureInfo:
        return FeatureInfo(deepcopy(self.info), out_indices)

    def get(self, key: str, idx: int | list[int] | tuple[int, ...] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: list[str] | None = None, idx: int | list[int] | tuple[int, ...] | None = None):
        def pick(i: int) -> dict[str, Any]:
            return self.info[i] if keys is None else {k: self.info[i][k] for k in keys}

        if idx is None:
            return [pick(i) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(i) for i in idx]
        return pick(idx)

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)


class FeatureGetterNet(nn.ModuleDict):
    """timm's `FeatureGetterNet`: `forward(x)` -> list of the selected feature maps, from
    `model.forward_intermediates(x, indices=out_indices, norm=norm, output_fmt=output_fmt,
    intermediates_only=True)`."""

    def __init__(
        self,
        model: nn.Module,
        out_indices: int | tuple[int, ...] = 4,
        out_map=None,
        return_dict: bool = False,
        output_fmt: str = "NCHW",
        norm: bool = False,
        prune: bool = True,
    ) -> None:
        super().__init__()
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        if out_map is not None or return_dict:
            raise ValueError("out_map and return_dict are not supported (timm's getter does not support them either)")
        if prune and hasattr(model, "prune_intermediate_layers"):
            # non-negative indices: negative ones would point elsewhere once the model is shorter
            out_indices = tuple(model.prune_intermediate_layers(out_indices, prune_norm=not norm))
        info = getattr(model, "feature_info", None)
        if not info:
            raise ValueError(f"{type(model).__name__} has no feature_info: it has no spatial feature maps to extract")
        self.feature_info = FeatureInfo(deepcopy(info), out_indices)
        # the model's cfg less the classifier fields, as timm's `pretrained_cfg_for_features` gives its feature
        # models: `timm.data.resolve_data_config(model=features)` reads the preprocessing from it
        self.pretrained_cfg = {
            k: v
            for k, v in deepcopy(getattr(model, "pretrained_cfg", None) or {}).items()
            if k not in ("num_classes", "classifier", "global_pool")
        }
        self.model = model
        self.out_indices = out_indices
        self.output_fmt = output_fmt
        self.norm = norm

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of `pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x,
            indices=self.out_indices,
            norm=self.norm,
            output_fmt=self.output_fmt,
            intermediates_only=True,
        )


def default_out_indices(model: nn.Module) -> int | tuple[int, ...]:
    """timm's default per family: every stage of a hierarchical model, else the last 3 blocks."""
    if getattr(model, "hierarchical_features", False):
        return tuple(range(len(model.feature_info)))
    return 3


def features_model(
    model: nn.Module,
    out_indices: int | tuple[int, ...] | list[int] | None = None,
    output_fmt: str | None = None,
    feature_cls: str | None = None,
) -> FeatureGetterNet:
    """Wrap `model` for feature extraction, as `timm.create_model(..., features_only=True)`.

    `out_indices`: an int n takes the last n feature levels, a sequence takes those (negative ones
    count from the end); None is the family's timm default (see the module docstring).
    `output_fmt`: 'NCHW' or 'NHWC'; None is the model's `output_fmt` for the default wrapper (Swin:
    NHWC) and NCHW for `feature_cls='getter'`. `feature_cls`: None, 'getter' or 'list' (the two
    wrappers timm uses for these families; both return a list of tensors here)."""
    if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
        name = getattr(model, "model_name", None) or type(model).__name__
        raise ValueError(f"{name} does not support features_only: it has no forward_intermediates / feature_info")
    if any("reduction" not in fi for fi in model.feature_info):  # MViT: (T, H, W) grids, no 2-D reduction
        name = getattr(model, "model_name", None) or type(model).__name__
        raise ValueError(
            f"{name} does not support features_only: its feature maps are spatio-temporal (T, H, W), "
            f"not the 2-D maps timm's feature wrappers describe; take them with "
            f"model.forward_intermediates(x) instead"
        )
    if feature_cls not in (None, "getter", "list"):
        raise ValueError(f"feature_cls must be None, 'getter' or 'list' for vitkit models, got {feature_cls!r}")
    if out_indices is None:
        out_indices = default_out_indices(model)
    elif isinstance(out_indices, list):
        out_indices = tuple(out_indices)
    if output_fmt is None:
        output_fmt = "NCHW" if feature_cls == "getter" else getattr(model, "output_fmt", "NCHW")
        if output_fmt not in OUTPUT_FORMATS:  # a token model's 'NLC' forward_features: maps are NCHW
            output_fmt = "NCHW"
    return FeatureGetterNet(model, out_indices=out_indices, output_fmt=output_fmt)


__all__ = ["FeatureGetterNet", "FeatureInfo", "default_out_indices", "features_model"]
