"""Vision Transformer (ViT), its ResNet hybrid, and DeiT with a distillation token.

Papers
    ViT:  Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition
          at Scale", ICLR 2021 (arXiv:2010.11929).
    DeiT: Touvron et al., "Training data-efficient image transformers & distillation through
          attention", ICML 2021 (arXiv:2012.12877).
Reference code
    google-research/vision_transformer and big_vision (`models/vit.py`); timm
    `vision_transformer.py`, `vision_transformer_hybrid.py` and `deit.py`, whose state-dict keys
    this file keeps so timm checkpoints load with an identity map.
Deviations
    - As in timm, a distilled model returns one tensor, the mean of its two heads' logits, unless
      `set_distilled_training(True)` is on: then training mode returns (class logits, distillation
      logits) for the distillation loss (`vitkit train` switches it on). In eval mode
      `distilled_output` picks the mean (timm's), the class head or the distillation head.
    - The classifier head is zero-initialised by default, as the paper does for fine-tuning and
      big_vision does always (`head_zeroinit`); timm uses a truncated normal.
    - The pre-training head of the paper (`representation_size`: Linear + tanh, timm's old
      `pre_logits.fc`) is kept; timm dropped it.

Shapes: images (B, C, H, W) -> patches (B, N, D) with N = (H/p)(W/p) -> tokens (B, P + N, D) with
P prefix tokens ([CLS], and the distillation token for DeiT) -> pooled (B, D) -> logits (B, K).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import Block, Linear, PatchEmbed, drop_path_rates, is_fx_tracing, resample_abs_pos_embed, to_2tuple
from ..registry import CIFAR10_MEAN, CIFAR10_STD, HALF_MEAN, HALF_STD, MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, init_weights_jax_, register_family


@dataclass
class ViTConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"  # 'token' ([CLS]) | 'avg' (mean of patch tokens) | '' (no pooling)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float | None = None  # LayerScale initial value; None disables it
    class_token: bool = True
    distilled: bool = False  # DeiT: add a distillation token and a second head
    distilled_output: str = "mean"  # eval-mode output of a distilled model: 'mean' | 'cls' | 'dist'
    fc_norm: bool | None = None  # LN after pooling instead of before; None = on for 'avg' (timm rule)
    representation_size: int | None = None  # the paper's pre-training head: Linear(D, R) + tanh
    norm_eps: float = 1e-6  # timm/DeiT/DINO use 1e-6; Hugging Face ViT checkpoints use 1e-12
    act: str = "gelu"
    drop_rate: float = 0.0  # dropout before the head
    pos_drop_rate: float = 0.0  # dropout after adding position embeddings
    # PatchDropout (Liu et al. 2022; timm's name): in training, each image keeps a random
    # int(N * (1 - rate)) of its N patch tokens (at least 1; prefix tokens always stay); eval uses all
    patch_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0  # dropout in the MLP and after the attention projection
    attn_drop_rate: float = 0.0  # dropout on the attention weights
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over blocks
    dynamic_img_size: bool = False  # accept any input size, resampling position embeddings per call
    pos_embed_interp: str = "bicubic"  # mode used when resampling position embeddings
    pos_embed_antialias: bool = True
    hybrid_layers: tuple[int, ...] | None = None  # ResNetV2 stage depths of the R50+ViT hybrid stem
    # initialisation, under timm's names: '' = timm's default (trunc-normal 0.02 linears); 'jax' = the
    # paper's own code (big_vision / Flax: Xavier-uniform linears, LeCun-normal patch embedding; timm
    # `weight_init='jax'`). Both zero the classifier head.
    weight_init: str | None = ""

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if isinstance(self.hybrid_layers, list):
            self.hybrid_layers = tuple(self.hybrid_layers)
        if self.global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs the class token: use global_pool='avg' with class_token=False")
        if self.distilled and not self.class_token:
            raise ValueError("a distilled (DeiT) model needs the class token")
        if self.distilled_output not in ("mean", "cls", "dist"):
            raise ValueError(f"distilled_output must be 'mean', 'cls' or 'dist', got {self.distilled_output!r}")
        if self.weight_init is None:  # `weight_init: null` in a recipe: the default
            self.weight_init = ""
        if self.weight_init not in ("", "jax"):
            raise ValueError(
                f"weight_init must be '' (timm's default) or 'jax' (the paper's code), got {self.weight_init!r}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.patch_drop_rate < 1.0:
            raise ValueError(
                f"patch_drop_rate is the share of patches dropped in training, in [0, 1); got {self.patch_drop_rate}"
            )


class HybridEmbed(nn.Module):
    """The hybrid stem (ViT paper section 3.1): CNN feature map -> 1x1 conv -> tokens.

    The "patches" are 1x1 cells of the ResNetV2 feature map, so the effective patch size is the
    backbone's stride (16 for R50 with three stages)."""

    def __init__(self, img_size: tuple[int, int], layers: tuple[int, ...], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        from .resnetv2 import ResNetV2

        self.backbone = ResNetV2(layers=layers, in_chans=in_chans)
        self.in_chans = in_chans
        self.img_size = img_size
        self.reduction = self.backbone.reduction
        self.patch_size = (self.reduction, self.reduction)
        self.grid_size = self.feat_size(img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=1, stride=1)
        self.flatten = True
        self.strict_img_size = True  # off with dynamic_img_size: the position embeddings fit one grid

    def feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        # 'same' padding everywhere: each stride-2 step rounds up
        return math.ceil(img_size[0] / self.reduction), math.ceil(img_size[1] / self.reduction)

    def set_input_size(
        self, img_size: int | tuple[int, int] | None = None, patch_size: int | tuple[int, int] | None = None
    ) -> None:
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("the hybrid's patch size is its backbone's stride and cannot be changed")
        if img_size is not None:
            self.img_size = to_2tuple(img_size)
            self.grid_size = self.feat_size(self.img_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fx_tracing():
            self.check_input(x)
        x = self.proj(self.backbone(x))  # (B, D, H/16, W/16)
        return x.flatten(2).transpose(1, 2) if self.flatten else x.permute(0, 2, 3, 1)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"the model expects images of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}: "
                f"create the model with in_chans={x.shape[1] if x.ndim == 4 else '?'} or convert the images"
            )
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            H, W = x.shape[-2:]
            raise ValueError(
                f"input size ({H}x{W}) does not match the model's img_size {self.img_size[0]}x{self.img_size[1]}: "
                f"resize the images, create the model with img_size=({H}, {W}) (position embeddings are "
                f"resampled when loading weights), or pass dynamic_img_size=True"
            )


@register_family
class VisionTransformer(Backbone):
    family = "vit"
    config_class = ViTConfig
    global_pools = ("token", "avg", "")
    no_weight_decay_names = ("pos_embed", "cls_token", "dist_token")
    group_stem = r"^cls_token|^dist_token|^pos_embed|^patch_embed"
    accepts_keep_indices = True

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        c = config
        img_size = to_2tuple(c.img_size)
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.embed_dim = c.embed_dim
        self.num_prefix_tokens = int(c.class_token) + int(c.distilled)
        self.dynamic_img_size = c.dynamic_img_size
        use_fc_norm = c.global_pool == "avg" if c.fc_norm is None else c.fc_norm

        if c.hybrid_layers:
            self.patch_embed = HybridEmbed(img_size, c.hybrid_layers, c.in_chans, c.embed_dim)
            self.patch_embed.flatten = self.patch_embed.strict_img_size = not c.dynamic_img_size
        else:
            self.patch_embed = PatchEmbed(
                img_size,
                c.patch_size,
                c.in_chans,
                c.embed_dim,
                flatten=not c.dynamic_img_size,
                strict_img_size=not c.dynamic_img_size,
            )
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.distilled else None
        # One learnable 1-D position embedding per token, prefix tokens included (eq. 1).
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, c.embed_dim))
        self.pos_drop = nn.Dropout(c.pos_drop_rate)

        dpr = drop_path_rates(c.drop_path_rate, c.depth)
        self.blocks = nn.Sequential(
            *[
                Block(
                    c.embed_dim,
                    c.num_heads,
                    c.mlp_ratio,
                    qkv_bias=c.qkv_bias,
                    init_values=c.init_values,
                    proj_drop=c.proj_drop_rate,
                    attn_drop=c.attn_drop_rate,
                    drop_path=dpr[i],
                    norm_eps=c.norm_eps,
                    act=c.act,
                )
                for i in range(c.depth)
            ]
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if use_fc_norm else nn.Identity()

        # timm's names: `num_features` is the width of forward_features' tokens, `head_hidden_size`
        # that of the pooled pre-logits features the classifier takes (the representation layer's)
        self.num_features = c.embed_dim
        self.head_hidden_size = c.representation_size or c.embed_dim
        if c.representation_size:
            self.pre_logits = nn.Sequential(
                OrderedDict(
                    fc=Linear(c.embed_dim, c.representation_size),
                    act=nn.Tanh(),
                )
            )
        else:
            self.pre_logits = nn.Identity()
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(self.head_hidden_size, c.num_classes) if c.num_classes > 0 else nn.Identity()
        if c.distilled:
            self.head_dist = Linear(self.head_hidden_size, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.distilled_training = False  # timm's switch: see set_distilled_training
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=c.embed_dim, reduction=reduction) for i in range(c.depth)
        ]
        self.init_weights()

    # ----------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """trunc-normal(0.02) position embeddings, tiny [CLS], zero-initialised classifier heads (ViT
        paper, section 3.1 / big_vision), and for the rest `config.weight_init`: '' = timm's default,
        trunc-normal(0.02) linears (the patch-embedding conv keeps PyTorch's init, as in timm); 'jax' =
        big_vision's Flax init, as timm's `init_weights_vit_jax`: Xavier-uniform linears with zero biases
        (MLP biases normal(1e-6)) and LeCun-normal convolution kernels (the patch embedding, and the
        hybrid's ResNet stem and stages)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        jax = self.config.weight_init == "jax"
        for name, m in self.named_modules():
            if jax:  # every conv too: the patch embedding and the hybrid's ResNet, as timm
                init_weights_jax_(name, m)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.init_classifier(self.head)
        if self.dist_token is not None:
            self.init_classifier(self.head_dist)

    # ----------------------------------------------------------------- backbone interface
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """The shared rule (`Backbone.reset_classifier`: fresh zero-initialised head, `global_pool`
        'token' | 'avg' | ''), for both heads of a distilled model."""
        super().reset_classifier(num_classes, global_pool)
        if self.dist_token is not None:
            self.head_dist = self.new_head(self.head_hidden_size, num_classes)
            self.init_classifier(self.head_dist)

    def set_distilled_training(self, enable: bool = True) -> None:
        """timm's switch for a distilled (DeiT) model: when on, training mode returns (class logits,
        distillation logits) for the distillation loss; when off (the default) one tensor, their mean."""
        if self.dist_token is None:
            raise ValueError("set_distilled_training needs a distilled model (one with a distillation token)")
        self.distilled_training = bool(enable)

    def _keep_levels(self, n: int) -> None:  # prune_intermediate_layers (Backbone)
        self.blocks = self.blocks[:n]

    def _prune_head(self) -> None:
        """The fc-norm and the representation layer feed only the head: they go with it."""
        self.fc_norm = nn.Identity()
        if isinstance(self.pre_logits, nn.Sequential):
            self.pre_logits = nn.Identity()
            self.head_hidden_size = self.num_features

    def set_input_size(
        self, img_size: int | tuple[int, int] | None = None, patch_size: int | tuple[int, int] | None = None
    ) -> None:
        """timm's: run at another image size and/or patch size from now on. The position embeddings are
        resampled to the new grid (by the configured rule); a new patch size resamples the projection
        kernel (FlexiViT's pseudo-inverse, timm's `resample_patch_embed`). `config.img_size` and
        `config.patch_size` follow, so `save_pretrained` keeps them. The hybrid's patch size is its
        backbone's stride and cannot change."""
        if patch_size is not None:
            p = to_2tuple(patch_size)
            if p[0] != p[1] and p != tuple(self.patch_embed.patch_size):
                raise ValueError(f"vitkit's ViT takes square patches, got patch_size={patch_size}")
        prev_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        grid = self.patch_embed.grid_size
        if grid != prev_grid:
            resampled = resample_abs_pos_embed(
                self.pos_embed.detach(),
                grid,
                old_size=prev_grid,
                num_prefix_tokens=self.num_prefix_tokens,
                interpolation=self.config.pos_embed_interp,
                antialias=self.config.pos_embed_antialias,
            )
            self.pos_embed = nn.Parameter(resampled, requires_grad=self.pos_embed.requires_grad)
        self.config.img_size = self.patch_embed.img_size
        if not self.config.hybrid_layers:
            self.config.patch_size = self.patch_embed.patch_size[0]
            for info in self.feature_info:
                info["reduction"] = self.patch_embed.patch_size[0]
        self.update_input_size(self.patch_embed.img_size)

    # ----------------------------------------------------------------- forward
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            B, H, W, D = x.shape  # patch embed kept the grid: resample the embeddings to it
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                (H, W),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=self.num_prefix_tokens,
                interpolation=self.config.pos_embed_interp,
                antialias=self.config.pos_embed_antialias,
            )
            x = x.reshape(B, H * W, D)
        else:
            pos_embed = self.pos_embed
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat(prefix + [x], dim=1)  # (B, P + N, D)
        return self.pos_drop(x + pos_embed)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._checkpointed(block, x)

    def forward_features(self, x: torch.Tensor, keep_indices: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, P + N, D).

        `keep_indices` (B, K), patch indices in [0, N), runs the encoder on those K patches only
        (MAE's visible patches, He et al. 2022 section 3): the position embeddings are added first,
        then each sample keeps its prefix tokens and its K patches, giving (B, P + K, D).
        Without it, a model with `patch_drop_rate` > 0 keeps a random subset in training (PatchDropout)."""
        return self._encode(self.patch_embed(x), keep_indices, patch_drop=True)

    def forward_tokens(self, x: torch.Tensor, keep_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings (the output of `patch_embed`, possibly altered, as masked patch
        prediction does) -> normalised tokens; `keep_indices` as in `forward_features`. Every
        patch is kept otherwise: no PatchDropout here (callers predict something per patch)."""
        return self._encode(x, keep_indices, patch_drop=False)

    def _patch_drop_indices(self, x: torch.Tensor) -> torch.Tensor:
        """timm's PatchDropout draw: per image, the first int(N * (1 - rate)) of a random permutation of N."""
        B, N = x.shape[0], x.shape[1] - self.num_prefix_tokens
        num_keep = max(1, int(N * (1.0 - self.config.patch_drop_rate)))
        return torch.argsort(torch.randn(B, N, device=x.device), dim=-1)[:, :num_keep]

    def _encode(self, x: torch.Tensor, keep_indices: torch.Tensor | None, patch_drop: bool) -> torch.Tensor:
        x = self._pos_embed(x)
        if keep_indices is None and patch_drop and self.training and self.config.patch_drop_rate > 0:
            keep_indices = self._patch_drop_indices(x)
        if keep_indices is not None:
            P = self.num_prefix_tokens
            index = keep_indices.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = torch.cat([x[:, :P], torch.gather(x[:, P:], 1, index)], dim=1)  # (B, P + K, D)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def forward_features_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like `forward_features`, also returning every block's attention weights (B, H, N, N).

        Runs the eager attention path (the fused kernel never materialises the weights)."""
        x = self._pos_embed(self.patch_embed(x))
        attentions = []
        for block in self.blocks:
            x, weights = block(x, return_attention=True)
            attentions.append(weights)
        return self.norm(x), attentions

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, D) by the configured rule."""
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        if self.global_pool == "token":
            return x[:, 0]
        return x

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, P + N, D) -> logits (B, K), or pooled features when `pre_logits`."""
        if self.dist_token is not None:
            return self._forward_head_distilled(x, pre_logits)
        x = self.head_drop(self.pre_logits(self.fc_norm(self.pool(x))))
        return x if pre_logits else self.head(x)

    def _forward_head_distilled(
        self, x: torch.Tensor, pre_logits: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # DeiT: the class token feeds `head`, the distillation token (index 1) feeds `head_dist`. As in
        # timm, global_pool '' still takes the class token (the pair of tokens is what the heads need).
        pooled = self.pool(x) if self.global_pool == "avg" else x[:, 0]
        x_cls = self.head_drop(self.pre_logits(self.fc_norm(pooled)))
        x_dist = self.head_drop(self.pre_logits(self.fc_norm(x[:, 1])))
        if pre_logits:
            return (x_cls + x_dist) / 2
        logits, logits_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.training:
            if self.distilled_training:
                return logits, logits_dist  # both, for the distillation loss
            return (logits + logits_dist) / 2  # timm's training output without the switch
        mode = self.config.distilled_output
        if mode == "cls":
            return logits
        if mode == "dist":
            return logits_dist
        return (logits + logits_dist) / 2  # the paper's default at inference

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone): per block, (B, D, h, w) maps for 'NCHW' or (B, N, D) tokens for
    # 'NLC', the prefix tokens split off; the final features are the normalised tokens, as timm's
    def _run_levels(self, x: torch.Tensor, last: int):
        grid = self.patch_embed.feat_size(tuple(x.shape[-2:]))
        x = self._pos_embed(self.patch_embed(x))
        for block in self.blocks[: last + 1]:
            x = self._run_block(block, x)
            yield x, grid

    def _format_intermediate(self, y: torch.Tensor, grid: tuple[int, int], output_fmt: str):
        prefix, spatial = y[:, : self.num_prefix_tokens], y[:, self.num_prefix_tokens :]
        if output_fmt == "NCHW":
            spatial = spatial.reshape(y.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
        return spatial, prefix

    def _final_features(self, x: torch.Tensor, grid: Any, complete: bool) -> torch.Tensor:
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# Named configurations. Sizes as data (ViT paper table 1; Ti and S from DeiT).
VIT_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(embed_dim=64, depth=4, num_heads=4),  # CPU-trainable on 28x28 and 8x8 images
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
_PAPER_SIZES = ("tiny", "small", "base", "large", "huge")


def _register_all() -> None:
    vit_cfg = dict(mean=HALF_MEAN, std=HALF_STD, crop_pct=0.9)
    for size in _PAPER_SIZES:
        for patch in (8, 16, 32):
            for res in (224, 384):
                register_model(
                    f"vit_{size}_patch{patch}_{res}",
                    "vit",
                    dict(VIT_SIZES[size], patch_size=patch, img_size=res),
                    **dict(vit_cfg, crop_pct=1.0 if res == 384 else 0.9),
                )
        register_model(f"vit_{size}_patch14_224", "vit", dict(VIT_SIZES[size], patch_size=14, img_size=224), **vit_cfg)

    # R50+ViT-B/16 hybrid: ResNetV2-50 with its 4th stage removed (stride 16), then 1x1 "patches".
    for res in (224, 384):
        register_model(
            f"vit_base_r50_s16_{res}",
            "vit",
            dict(VIT_SIZES["base"], img_size=res, patch_size=1, hybrid_layers=(3, 4, 9)),
            **dict(vit_cfg, crop_pct=1.0 if res == 384 else 0.9),
        )

    # DeiT (ImageNet mean/std, crop 0.875); the distilled variants add the distillation token.
    for size in ("tiny", "small", "base"):
        register_model(f"deit_{size}_patch16_224", "vit", dict(VIT_SIZES[size], patch_size=16))
        register_model(
            f"deit_{size}_distilled_patch16_224", "vit", dict(VIT_SIZES[size], patch_size=16, distilled=True)
        )
    register_model("deit_base_patch16_384", "vit", dict(VIT_SIZES["base"], img_size=384), crop_pct=1.0)
    register_model(
        "deit_base_distilled_patch16_384", "vit", dict(VIT_SIZES["base"], img_size=384, distilled=True), crop_pct=1.0
    )

    # Small models for CPU training on real data: 28x28 grayscale (MNIST, Fashion-MNIST), 32x32
    # RGB (CIFAR) and the 8x8 scikit-learn digits.
    small = dict(VIT_SIZES["micro"], mlp_ratio=2.0, num_classes=10)
    mnist = dict(mean=MNIST_MEAN, std=MNIST_STD, crop_pct=1.0)
    register_model("vit_micro_patch4_28", "vit", dict(small, img_size=28, patch_size=4, in_chans=1), **mnist)
    register_model("vit_micro_patch7_28", "vit", dict(small, img_size=28, patch_size=7, in_chans=1), **mnist)
    register_model(
        "vit_micro_patch2_8",
        "vit",
        dict(small, img_size=8, patch_size=2, in_chans=1),
        mean=(0.5,),
        std=(0.5,),
        crop_pct=1.0,
    )
    register_model(
        "vit_micro_patch4_32",
        "vit",
        dict(small, img_size=32, patch_size=4),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        crop_pct=1.0,
    )
    register_model(
        "deit_micro_distilled_patch4_28",
        "vit",
        dict(small, img_size=28, patch_size=4, in_chans=1, distilled=True),
        **mnist,
    )


_register_all()
