"""What every vitkit model shares: a config dataclass, save/load, and a family registry
(`VitkitModel`), and for the classifier families the public backbone interface (`Backbone`).

A *family* is one architecture file (vit.py, swin.py, ...): a config dataclass and a model class.
`config.json` names the family, so `vitkit.from_pretrained(dir)` can rebuild any saved model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import Linear, is_fx_tracing

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
        """A fresh classifier for `reset_classifier`: `Linear(in_features, num_classes)` (vitkit's
        `nn.Linear` subclass, on the CPU GEMM path like the heads the model is built with) on the
        model's device and dtype and in its train/eval mode, or `nn.Identity()` when `num_classes` is 0.
        Callers initialise the weights by their family's rule."""
        if num_classes <= 0:
            head: nn.Module = nn.Identity()
        else:
            ref = next(self.parameters(), None)
            kw = {} if ref is None else dict(device=ref.device, dtype=ref.dtype)
            head = Linear(in_features, num_classes, **kw)
        return head.train(self.training)


class Backbone(VitkitModel):
    """The public backbone interface: what training, the pre-training methods, evaluation,
    inspection and timm-style code may use on any vitkit classifier (every family but the MAE
    pre-training model). Names, signatures and meanings are timm's.

    Forward
        `forward(x)` = `forward_head(forward_features(x))`.
        `forward_features(x)`: the unpooled features: tokens (B, P + N, D) for token models
        (P = `num_prefix_tokens` prefix tokens first), a map (B, H, W, C) for Swin (its
        `output_fmt` is 'NHWC') or (B, C, H, W) for the CNNs.
        `forward_head(x, pre_logits=False)`: features -> logits (B, K), or with `pre_logits` the
        pooled vector (B, `head_hidden_size`) the classifier takes: the representation
        `vitkit.eval` and the self-supervised methods use.
        `forward_intermediates(x, indices, return_prefix_tokens, norm, stop_early, output_fmt,
        intermediates_only)`: the outputs of selected blocks (plain models) or stages
        (hierarchical models: `hierarchical_features`), see its docstring.
    Sizes
        `num_features` (width of `forward_features`), `head_hidden_size` (width of the pooled
        features), `embed_dim` (token width, where the model has tokens: Swin's first stage's, CvT's
        last stage's), `num_prefix_tokens` (0 without [CLS] or distillation tokens), `num_classes`,
        `global_pool`, `feature_info` (per block or stage: `num_chs`, `reduction`, `module`),
        `patch_size` and `grid_size` (the pixels per patch token and the token grid at the
        configured image size; None for models without a patch embedding).
    Training hooks
        `no_weight_decay()` (parameter names to exempt), `group_matcher(coarse)` (timm's layer
        groups for layer-wise LR decay), `set_grad_checkpointing(enable)`, `get_classifier()`,
        `reset_classifier(num_classes, global_pool=None)`, `pretrained_cfg` (preprocessing), `config`.
    Optional, where a family has it
        `forward_features(x, keep_indices=...)` when `accepts_keep_indices` (ViT: encode only the
        given patches per image, MAE's and MSN's masking); `patch_embed(x)` and
        `forward_tokens(patch_embeddings)` (ViT: the encoder on altered patch embeddings, masked
        patch prediction);
        `forward_features_with_attention(x)` (every block's attention weights); `set_input_size`;
        `prune_intermediate_layers` (the image families; the video models and Dynamic ViT raise
        NotImplementedError, as they do for `forward_intermediates` where they have none).

    A family declares what differs as class attributes (`classifier_attr`, `global_pools`,
    `no_weight_decay_names`, `group_stem`, `group_blocks`, `group_blocks_coarse`,
    `intermediate_fmts`, `norm_intermediates`, `feature_level_unit`) and implements
    `_num_feature_levels`, `_run_levels`, `_format_intermediate` (and `_final_features` where its
    final features are not the last level's output through `norm`) for `forward_intermediates`,
    `_keep_levels` (and `_prune_head`) for `prune_intermediate_layers`.
    """

    # dotted attribute path of the classifier that get_classifier / reset_classifier handle
    classifier_attr: ClassVar[str] = "head"
    # the global_pool values reset_classifier accepts ('token' also needs a prefix token)
    global_pools: ClassVar[tuple[str, ...]] = ("avg", "")
    # top-level parameters exempt from weight decay, where the model has them
    no_weight_decay_names: ClassVar[tuple[str, ...]] = ()
    # timm's group_matcher regexes: the stem, and the blocks (fine and coarse grouping)
    group_stem: ClassVar[str] = r"^patch_embed"
    group_blocks: ClassVar[list[tuple[str, tuple[int, ...] | None]]] = [
        (r"^blocks\.(\d+)", None),
        (r"^norm", (99999,)),
    ]
    group_blocks_coarse: ClassVar[Any] = r"^blocks\.(\d+)"
    # forward_intermediates: accepted output formats (the first is the default), what one level is,
    # and which levels `norm=True` normalises ('all', 'last': the final norm is sized for the last
    # stage only, or 'none': the model has no final norm)
    intermediate_fmts: ClassVar[tuple[str, ...]] = ("NCHW", "NLC")
    feature_level_unit: ClassVar[str] = "blocks"
    norm_intermediates: ClassVar[str] = "all"
    # whether forward_features takes `keep_indices` (encode a subset of the patches)
    accepts_keep_indices: ClassVar[bool] = False
    hierarchical_features: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.grad_checkpointing = False

    # ----------------------------------------------------------------- sizes
    @property
    def patch_size(self) -> tuple[int, int] | None:
        """(h, w) pixels per patch token of the patch embedding (its spatial stride for video
        tubelets); None for a model without one (CvT, the CNNs)."""
        pe = getattr(self, "patch_embed", None)
        if pe is None:
            return None
        size = getattr(pe, "patch_size", None) or getattr(pe, "stride", None)
        return tuple(int(s) for s in size[-2:]) if size is not None else None

    @property
    def grid_size(self) -> tuple[int, int] | None:
        """(h, w) patch-token grid at the configured image size (per frame for video); None without
        a patch embedding."""
        grid = getattr(getattr(self, "patch_embed", None), "grid_size", None)
        return tuple(int(g) for g in grid[-2:]) if grid is not None else None

    # ----------------------------------------------------------------- training hooks
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters exempt from weight decay (position embeddings, prefix tokens);
        only the ones this model has (timm lists all, existing or not)."""
        return {n for n in self.no_weight_decay_names if getattr(self, n, None) is not None}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay in timm's format: the stem, then the blocks."""
        blocks = self.group_blocks_coarse if coarse else self.group_blocks
        return dict(stem=self.group_stem, blocks=copy.deepcopy(blocks))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block (or stage) in the backward pass instead of keeping its activations."""
        self.grad_checkpointing = bool(enable)

    def _checkpointed(self, module: nn.Module, *args: Any) -> Any:
        """`module(*args)`, through activation checkpointing when it is on and autograd records
        (not under FX tracing, where there is nothing to recompute)."""
        if self.grad_checkpointing and torch.is_grad_enabled() and not is_fx_tracing():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_attr)

    def init_classifier(self, head: nn.Module) -> None:
        """Initialise a fresh classifier by the family's rule: zero weights and bias (ViT paper
        section 3.1 / big_vision: fine-tuning starts from a zero head)."""
        if isinstance(head, nn.Linear):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def check_global_pool(self, global_pool: str) -> None:
        """Raise ValueError unless `global_pool` is one this model can pool by."""
        if global_pool not in self.global_pools:
            allowed = ", ".join(repr(p) for p in self.global_pools)
            raise ValueError(f"{type(self).__name__}: global_pool must be one of {allowed}, got {global_pool!r}")
        if global_pool == "token" and not getattr(self, "num_prefix_tokens", 0):
            raise ValueError("global_pool='token' needs the class token ([CLS]); this model has none: use 'avg'")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's: replace the classifier with a fresh one for `num_classes` (0 = an identity: the
        pooled features), on the model's device and dtype and in its train/eval mode, initialised by
        `init_classifier`; `global_pool` (one of `global_pools`) changes the pooling too ('' =
        forward returns the unpooled features)."""
        if global_pool is not None:
            self.check_global_pool(global_pool)
            if hasattr(self.config, "global_pool"):
                self.global_pool = self.config.global_pool = global_pool
        self.num_classes = self.config.num_classes = num_classes
        head = self.new_head(self.head_hidden_size, num_classes)
        self.init_classifier(head)
        parent, _, name = self.classifier_attr.rpartition(".")
        setattr(self.get_submodule(parent), name, head)

    # ----------------------------------------------------------------- intermediates
    def _num_feature_levels(self) -> int:
        """How many blocks (or stages) `forward_intermediates` indexes."""
        blocks = getattr(self, "blocks", None)
        if blocks is None:
            raise NotImplementedError(f"{type(self).__name__} does not support forward_intermediates")
        return len(blocks)

    def _run_levels(self, x: torch.Tensor, last: int) -> Iterator[tuple[torch.Tensor, Any]]:
        """Embed `x`, run levels 0..`last` and yield (that level's raw output, what formatting it
        needs) after each."""
        raise NotImplementedError(f"{type(self).__name__} does not support forward_intermediates")

    def _format_intermediate(self, y: torch.Tensor, ctx: Any, output_fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One level's output -> (spatial features in `output_fmt`, prefix tokens (B, P, D))."""
        raise NotImplementedError(f"{type(self).__name__} does not support forward_intermediates")

    def _keep_levels(self, n: int) -> None:
        """Keep the first `n` blocks (or stages) and drop the rest, for `prune_intermediate_layers`."""
        raise NotImplementedError(f"{type(self).__name__} does not support prune_intermediate_layers")

    def _prune_head(self) -> None:
        """What `prune_intermediate_layers(prune_head=True)` drops besides the classifier (nothing here)."""

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's: drop the blocks (stages) after the last one `indices` takes (as in
        `forward_intermediates`), the final norm if `prune_norm`, the classifier
        (`reset_classifier(0, '')`) if `prune_head`. For a hierarchical model, dropping the last stage
        also drops the final norm and the classifier (they are sized for it) and `num_features`
        becomes the last kept stage's width. Returns the kept indices (non-negative: negative ones
        would point elsewhere once the model is shorter)."""
        if type(self)._keep_levels is Backbone._keep_levels:
            raise NotImplementedError(f"{type(self).__name__} does not support prune_intermediate_layers")
        num_levels = self._num_feature_levels()
        take = feature_take_indices(num_levels, indices, unit=self.feature_level_unit)
        last = max(take)
        prune_end = self.hierarchical_features and last < num_levels - 1
        self._keep_levels(last + 1)
        if (prune_norm or prune_end) and isinstance(getattr(self, "norm", None), nn.Module):
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self._prune_head()
            self.reset_classifier(0, "")
        return take

    def _final_features(self, x: torch.Tensor, ctx: Any, complete: bool) -> torch.Tensor:
        """The first output of `forward_intermediates`: `forward_features(x)` when every level ran
        (`complete`), else the raw output of the last level run."""
        return self.norm(x) if complete else x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str | None = None,
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """timm's: the outputs of selected blocks, or of selected stages for hierarchical models.

        `indices`: an int n takes the last n, a sequence takes those (negative ones count from the
        end), None takes all. `output_fmt`: one of the family's `intermediate_fmts` ('NCHW' maps
        or 'NLC' tokens for images; Swin 'NCHW' or 'NHWC'; video 'NCTHW' or 'NLC'); None is the
        first of them. `return_prefix_tokens` makes each intermediate a pair (spatial, prefix
        (B, P, D)), the prefix empty (P = 0) for models without prefix tokens. `norm` applies the
        final norm (for hierarchical models to the last stage only, the one it is sized for).
        `stop_early` runs no level after the last one taken. Returns (final features,
        intermediates), or only the intermediates with `intermediates_only`."""
        fmt = self.intermediate_fmts[0] if output_fmt is None else output_fmt
        if fmt not in self.intermediate_fmts:
            allowed = " or ".join(repr(f) for f in self.intermediate_fmts)
            raise ValueError(f"{type(self).__name__}: output_fmt must be {allowed}, got {output_fmt!r}")
        num_levels = self._num_feature_levels()
        take = feature_take_indices(num_levels, indices, unit=self.feature_level_unit)
        last = max(take) if stop_early else num_levels - 1
        out: list[Any] = []
        y, ctx = x, None
        for i, (y, ctx) in enumerate(self._run_levels(x, last)):
            if i not in take:
                continue
            normed = norm and (
                self.norm_intermediates == "all" or (self.norm_intermediates == "last" and i == num_levels - 1)
            )
            spatial, prefix = self._format_intermediate(self.norm(y) if normed else y, ctx, fmt)
            out.append((spatial, prefix) if return_prefix_tokens else spatial)
        if intermediates_only:
            return out
        return self._final_features(y, ctx, last == num_levels - 1), out


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
