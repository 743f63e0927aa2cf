"""MLP-Mixer: per-patch linear embedding, then layers of token-mixing and channel-mixing MLPs.

Paper
    Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021
    (arXiv:2105.01601).
Reference code
    google-research/vision_transformer (`vit_jax/models_mixer.py`); timm `mlp_mixer.py`
    (`MlpMixer`), whose state-dict keys this file keeps (`stem.proj`, `blocks.{i}.norm1`,
    `blocks.{i}.mlp_tokens.fc1/fc2`, `blocks.{i}.norm2`, `blocks.{i}.mlp_channels.fc1/fc2`, `norm`,
    `head`) so timm checkpoints load with an identity map.
Deviations
    - None in the architecture or the weights. Initialisation is timm's (`_init_weights`, `nlhb`
      off): Xavier-uniform linears with N(0, 1e-6) MLP biases, LeCun-normal (truncated) patch conv,
      and a zero classifier head -- the zero head is also what the paper's Flax code does
      (`kernel_init=zeros` on `head`).
    - Stochastic depth uses one rate for every block, as timm's MlpMixer does (not the linear
      0 -> `drop_path_rate` rule of vitkit's ViT and DeiT).
    - The patch embedding is named `stem` as in timm; `model.patch_embed` is a read-only alias
      (not a second module, so there is one state-dict key per weight) for code written against
      the ViT interface.
    - There is no attention: `vitkit.layers.eager_attention()` and the fused/eager switch change
      nothing here, and there is no `forward_features_with_attention`.

Shapes: images (B, C_in, H, W) -> patches (B, N, C) with N = (H/p)(W/p) -> each Mixer layer keeps
(B, N, C): token mixing acts on the transposed (B, C, N) (one MLP over the N positions, shared by
all C channels), channel mixing on (B, N, C) (one MLP over channels, shared by all positions) ->
final LN -> global average pool (B, C) -> logits (B, K).

Because the token-mixing MLP has one input weight per patch position (its fc1 is (D_S, N)), a
Mixer runs at exactly one input size: another size is an error, not something resampled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import DropPath, Linear, Mlp, PatchEmbed, is_fx_tracing
from ..registry import CIFAR10_MEAN, CIFAR10_STD, HALF_MEAN, HALF_STD, MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, init_weights_jax_, register_family

logger = logging.getLogger("vitkit")


@dataclass
class MixerConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 512  # C, the channel (hidden) width
    depth: int = 8  # number of Mixer layers
    # (token-mixing, channel-mixing) MLP widths as multiples of C: D_S = 0.5 C, D_C = 4 C in every
    # size of the paper's table 1 (S: 256/2048, B: 384/3072, L: 512/4096). A float sets both.
    mlp_ratio: float | tuple[float, float] = (0.5, 4.0)
    drop_rate: float = 0.0  # dropout before the head
    proj_drop_rate: float = 0.0  # dropout inside both MLPs
    drop_path_rate: float = 0.0  # stochastic depth, the same rate for every block (as timm)
    norm_eps: float = 1e-6
    global_pool: str = "avg"  # 'avg' (mean over patches) | '' (the head sees every patch token)
    act: str = "gelu"

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if isinstance(self.mlp_ratio, (int, float)):
            self.mlp_ratio = (float(self.mlp_ratio), float(self.mlp_ratio))
        else:
            self.mlp_ratio = tuple(float(r) for r in self.mlp_ratio)
            if len(self.mlp_ratio) != 2:
                raise ValueError(f"mlp_ratio must be a float or a pair (tokens, channels), got {self.mlp_ratio!r}")
        if self.global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' for MLP-Mixer, got {self.global_pool!r}")


class MixerBlock(nn.Module):
    """One Mixer layer (paper eq. 1): token mixing, then channel mixing, each pre-LN with a skip."""

    def __init__(
        self,
        dim: int,
        seq_len: int,
        mlp_ratio: tuple[float, float],
        act: str = "gelu",
        drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)  # int() as timm: same widths
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp_tokens = Mlp(seq_len, tokens_dim, act=act, drop=drop)  # over the N positions
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp_channels = Mlp(dim, channels_dim, act=act, drop=drop)  # over the C channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))  # via (B, C, N)
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


@register_family
class MlpMixer(Backbone):
    family = "mixer"
    config_class = MixerConfig
    # no position embeddings or tokens to exempt from weight decay; timm's MlpMixer defines none either
    # (its optimizer factory exempts 1-D parameters -- norms, biases -- by itself)
    group_stem = r"^stem"
    group_blocks_coarse = Backbone.group_blocks  # exactly timm's: `coarse` changes nothing

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        c = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.embed_dim = self.num_features = self.head_hidden_size = c.embed_dim
        self.num_prefix_tokens = 0

        # strict_img_size is off: `_check_size` raises the Mixer-specific message first.
        self.stem = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim, strict_img_size=False)
        self.img_size = self.stem.img_size
        num_patches = self.stem.num_patches
        self.blocks = nn.Sequential(
            *[
                MixerBlock(
                    c.embed_dim,
                    num_patches,
                    c.mlp_ratio,
                    act=c.act,
                    drop=c.proj_drop_rate,
                    drop_path=c.drop_path_rate,
                    norm_eps=c.norm_eps,
                )
                for _ in range(c.depth)
            ]
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        reduction = self.stem.patch_size[0]
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=c.embed_dim, reduction=reduction) for i in range(c.depth)
        ]
        self.init_weights()

    @property
    def patch_embed(self) -> PatchEmbed:
        """The ViT-interface name of `stem` (the same module; timm's key is `stem`)."""
        return self.stem

    # ----------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """timm's Mixer scheme (`_init_weights`, nlhb off), then a zero head (timm and the paper)."""
        for name, m in self.named_modules():
            init_weights_jax_(name, m)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.init_classifier(self.head)

    # ----------------------------------------------------------------- backbone interface
    def _keep_levels(self, n: int) -> None:  # prune_intermediate_layers (Backbone)
        self.blocks = self.blocks[:n]

    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Fit a timm-keyed Mixer state dict (called by `load_pretrained`).

        The keys are timm's, so this is an identity map except for the head: another number of
        classes (or no head) keeps the model's fresh zero head, with a warning. A checkpoint for
        another input size is refused with the reason: token-mixing weights are per position and
        cannot be resampled the way ViT position embeddings can."""
        from ..convert.timm import fit_heads
        from ..hub import CheckpointError

        state = dict(state)
        key = "blocks.0.mlp_tokens.fc1.weight"
        expected = self.state_dict()
        if key in state and key in expected and state[key].ndim == 2 and state[key].shape[1] != expected[key].shape[1]:
            n_ckpt, n_model = state[key].shape[1], expected[key].shape[1]
            side = math.isqrt(n_ckpt)
            hint = ""
            if side * side == n_ckpt:
                p = self.stem.patch_size
                hint = f" (a {side}x{side} grid: img_size={side * p[0]} at patch size {p[0]})"
            raise CheckpointError(
                f"{source} was trained on {n_ckpt} patches{hint} but the model has {n_model} "
                f"({self.stem.grid_size[0]}x{self.stem.grid_size[1]}): MLP-Mixer's token-mixing weights are "
                f"per patch position and do not transfer to another input size; create the model with the "
                f"checkpoint's img_size and resize the images to it"
            )
        fit_heads(self, state, expected, source)
        return state

    # ----------------------------------------------------------------- forward
    def _check_size(self, x: torch.Tensor) -> None:
        if is_fx_tracing():  # symbolic shapes: nothing to check (see vitkit/layers/tracing.py)
            return
        if x.ndim == 4 and tuple(x.shape[-2:]) != self.img_size:
            H, W = x.shape[-2:]
            h, w = self.stem.grid_size
            raise ValueError(
                f"input size ({H}x{W}) does not match the model's img_size {self.img_size[0]}x{self.img_size[1]}: "
                f"MLP-Mixer's token-mixing MLPs have one weight per patch position ({h}x{w} = {h * w} patches), "
                f"so the model runs at one input size only. Resize the images to {self.img_size[0]}x"
                f"{self.img_size[1]}, or create the model with img_size=({H}, {W}) (and train it at that size)"
            )

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x)
        return self.stem(x)  # (B, C_in, H, W) -> (B, N, C)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._checkpointed(block, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> normalised patch tokens (B, N, C)."""
        x = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> logits (B, K), or pooled features (B, C) when `pre_logits`."""
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone), as timm's and vitkit's ViT: per block, (B, C, h, w) maps for
    # 'NCHW' or (B, N, C) tokens for 'NLC'; a Mixer has no prefix tokens, so `return_prefix_tokens`
    # pairs each with an empty (B, 0, C); the final features are the normalised tokens
    def _run_levels(self, x: torch.Tensor, last: int):
        x = self._embed(x)
        for block in self.blocks[: last + 1]:
            x = self._run_block(block, x)
            yield x, None

    def _format_intermediate(self, y: torch.Tensor, ctx: Any, output_fmt: str):
        prefix = y.new_zeros(y.shape[0], 0, self.embed_dim)
        if output_fmt == "NCHW":
            h, w = self.stem.grid_size
            y = y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        return y, prefix

    def _final_features(self, x: torch.Tensor, ctx: Any, complete: bool) -> torch.Tensor:
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# Named configurations. Sizes as data (paper table 1): C, depth; D_S = C/2, D_C = 4C throughout.
MIXER_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(embed_dim=64, depth=4),  # CPU-trainable on 28x28 / 32x32 images
    "s": dict(embed_dim=512, depth=8),
    "b": dict(embed_dim=768, depth=12),
    "l": dict(embed_dim=1024, depth=24),
}


def _register_all() -> None:
    # timm's Mixer cfg: [-1, 1] inputs (mean = std = 0.5), crop 0.875, bicubic
    for size in ("s", "b", "l"):
        for patch in (16, 32):
            register_model(
                f"mixer_{size}{patch}_224",
                "mixer",
                dict(MIXER_SIZES[size], patch_size=patch, img_size=224),
                mean=HALF_MEAN,
                std=HALF_STD,
                crop_pct=0.875,
            )

    # Small models for CPU training: 28x28 grayscale (MNIST, Fashion-MNIST) and 32x32 RGB (CIFAR).
    small = dict(MIXER_SIZES["micro"], num_classes=10)
    register_model(
        "mixer_micro_patch4_28",
        "mixer",
        dict(small, img_size=28, patch_size=4, in_chans=1),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        crop_pct=1.0,
    )
    register_model(
        "mixer_micro_patch4_32",
        "mixer",
        dict(small, img_size=32, patch_size=4),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        crop_pct=1.0,
    )


_register_all()
