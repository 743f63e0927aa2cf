"""What every vitkit model shares: a config dataclass, save/load, and a family registry.

A *family* is one architecture file (vit.py, swin.py, ...): a config dataclass and a model class.
`config.json` names the family, so `vitkit.from_pretrained(dir)` can rebuild any saved model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

FAMILIES: dict[str, type[VitkitModel]] = {}


def lecun_normal_(weight: torch.Tensor) -> None:
    """timm's `lecun_normal_`: N(0, 1/fan_in) truncated at 2 std, rescaled to keep the variance."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a standard normal truncated to (-2, 2)
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_weights_jax_(name: str, module: nn.Module) -> None:
    """The big_vision / Flax initialisation of one module, as timm's `init_weights_vit_jax` and Mixer's
    `_init_weights` (heads left to the caller): Xavier-uniform linears with zero biases, except MLP biases
    N(0, 1e-6); LeCun-normal (truncated) convolution kernels with zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            if "mlp" in name:
                nn.init.normal_(module.bias, std=1e-6)
            else:
                nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        lecun_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def register_family(cls: type[VitkitModel]) -> type[VitkitModel]:
    """Class decorator: make a model class reachable by its `family` name (used by from_pretrained)."""
    if cls.family in FAMILIES and FAMILIES[cls.family] is not cls:
        raise ValueError(f"model family {cls.family!r} is registered twice")
    FAMILIES[cls.family] = cls
    return cls


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from JSON values, naming any key the dataclass does not know."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {config_class.__name__} field(s) {unknown}; known fields: {sorted(known)} "
            f"(was this config written by a newer vitkit?)"
        )
    return config_class(**values)


class VitkitModel(nn.Module):
    """Base class: holds `config`, `model_name` and `pretrained_cfg`; adds `save_pretrained`."""

    family: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.model_name: str | None = None
        # Preprocessing the weights expect (mean, std, crop_pct, interpolation); set by create_model.
        self.pretrained_cfg: dict[str, Any] = {}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` and `model.safetensors` into `directory` (atomically, file by file)."""
        from ..hub import save_pretrained

        return save_pretrained(self, directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        model_card: Any = None,
        tags: list[str] | None = None,
        run_dir: str | Path | None = None,
        timm_compatible: bool | None = None,
    ):
        """Upload config.json, model.safetensors and a README.md model card to the Hugging Face Hub
        repository `repo_id` (created if needed); the arguments are transformers' `push_to_hub`'s plus
        timm's `model_card` (vitkit/push.py). Returns huggingface_hub's `CommitInfo`."""
        from ..push import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            model_card=model_card,
            tags=tags,
            run_dir=run_dir,
            timm_compatible=timm_compatible,
        )

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def head_hidden_size(self) -> int:
        """timm's name for the width of the pooled pre-logits features the classifier takes
        (`forward_head(x, pre_logits=True)`); `num_features` unless a family sets it."""
        return self.__dict__.get("_head_hidden_size", getattr(self, "num_features", 0))

    @head_hidden_size.setter
    def head_hidden_size(self, value: int) -> None:
        self.__dict__["_head_hidden_size"] = int(value)

    def update_input_size(self, img_size: tuple[int, int], pool_size: tuple[int, int] | None = None) -> None:
        """After `set_input_size`: the pretrained cfg's `input_size` (and `pool_size`, where it has one)
        describe the new size, so data transforms built from it follow (a new dict: the old may be shared)."""
        cfg = dict(self.pretrained_cfg)
        if "input_size" in cfg:
            cfg["input_size"] = (int(cfg["input_size"][0]), int(img_size[0]), int(img_size[1]))
        if pool_size is not None and cfg.get("pool_size"):
            cfg["pool_size"] = tuple(pool_size)
        self.pretrained_cfg = cfg

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of `pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    def new_head(self, in_features: int, num_classes: int) -> nn.Module:
        """A fresh classifier for `reset_classifier`: `nn.Linear(in_features, num_classes)` on the
        model's device and dtype and in its train/eval mode, or `nn.Identity()` when `num_classes` is 0.
        Callers initialise the weights by their family's rule."""
        if num_classes <= 0:
            head: nn.Module = nn.Identity()
        else:
            ref = next(self.parameters(), None)
            kw = {} if ref is None else dict(device=ref.device, dtype=ref.dtype)
            head = nn.Linear(in_features, num_classes, **kw)
        return head.train(self.training)


def feature_take_indices(
    num_blocks: int, indices: int | list[int] | tuple[int, ...] | None, unit: str = "blocks"
) -> list[int]:
    """Normalise `forward_intermediates` indices (of blocks, or of stages for hierarchical models)
    to a sorted list of non-negative indices: an int n takes the last n, a sequence takes those
    (negative ones count from the end), None takes all."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"cannot take the last {indices} of {num_blocks} {unit}")
        return list(range(num_blocks - indices, num_blocks))
    take = sorted({i + num_blocks if i < 0 else i for i in indices})
    if not take or take[0] < 0 or take[-1] >= num_blocks:
        raise ValueError(f"{unit[:-1]} indices {list(indices)} out of range for a model with {num_blocks} {unit}")
    return take
