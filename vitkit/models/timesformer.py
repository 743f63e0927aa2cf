"""TimeSformer: divided space-time attention, with the joint and space-only baselines.

Paper
    Bertasius, Wang, Torresani, "Is Space-Time Attention All You Need for Video Understanding?",
    ICML 2021 (arXiv:2102.05095), section 3 and fig. 1/2 (the attention schemes).
Reference code
    facebookresearch/TimeSformer `timesformer/models/vit.py` (whose state-dict keys this file keeps:
    `time_embed`, `blocks.{i}.temporal_norm1`, `temporal_attn`, `temporal_fc`); Hugging Face
    `TimesformerForVideoClassification`, whose checkpoints load here (convert/hf_timesformer.py).
Attention types
    'divided_space_time' (T+S): in each block, temporal attention among the tokens of one spatial
      location (its own LN, then a linear `temporal_fc` -- not in the paper's equations, in the
      reference code -- and a residual), then spatial attention among the tokens of one frame
      (its own LN and residual; [CLS] joins every frame and its outputs are averaged), then the MLP.
    'joint_space_time' (ST): one attention over all frames' tokens (as ViViT's Model 1).
    'space_only' (S): frames are encoded independently (no time embedding); the tokens are averaged
      over frames before the final LN (reference code; Hugging Face instead classifies every frame).
Deviations
    - The classifier head is zero-initialised (the ViT paper's fine-tuning head).

Shapes: clips (B, C, T, H, W) -> per-frame patches -> tokens (B, 1 + S*T, D) in (s, t) order
(space-major, as the reference code), S = (H/p)(W/p); space-only: (B*T, 1 + S, D).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import Attention, Block, DropPath, Linear, Mlp, drop_path_rates, to_2tuple
from ..layers.video import TubeletEmbed, inflate_patch_weight
from ..registry import IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family

logger = logging.getLogger("vitkit")

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")


@dataclass
class TimeSformerConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    num_frames: int = 8
    in_chans: int = 3
    num_classes: int = 400
    attention_type: str = "divided_space_time"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act: str = "gelu"
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


class DividedSpaceTimeBlock(nn.Module):
    """The T+S block of the reference code (fig. 1, 'Divided Space-Time Attention')."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: float,
        norm_eps: float,
        act: str,
    ) -> None:
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.temporal_fc = Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        B, N, D = x.shape
        S = (N - 1) // T
        cls, xt = x[:, :1], x[:, 1:]  # xt: (B, S*T, D), (s, t) order
        # temporal attention: one sequence per spatial location
        res = self.temporal_attn(self.temporal_norm1(xt.reshape(B * S, T, D)))
        xt = xt + self.temporal_fc(self.drop_path(res).reshape(B, S * T, D))
        # spatial attention: one sequence per frame, [CLS] prepended to each
        xs = xt.reshape(B, S, T, D).transpose(1, 2).reshape(B * T, S, D)
        xs = torch.cat([cls.repeat_interleave(T, dim=0), xs], dim=1)  # (B*T, 1 + S, D)
        res = self.drop_path(self.attn(self.norm1(xs)))
        res_cls = res[:, :1].reshape(B, T, D).mean(1, keepdim=True)  # averaged over frames
        res = res[:, 1:].reshape(B, T, S, D).transpose(1, 2).reshape(B, S * T, D)
        x = torch.cat([cls, xt], dim=1) + torch.cat([res_cls, res], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_family
class TimeSformer(Backbone):
    family = "timesformer"
    config_class = TimeSformerConfig
    global_pools = ("token",)  # classifies from [CLS]
    no_weight_decay_names = ("pos_embed", "cls_token", "time_embed")
    group_stem = r"^cls_token|^pos_embed|^time_embed|^patch_embed"
    intermediate_fmts = ("NCTHW", "NLC")

    def __init__(self, config: TimeSformerConfig) -> None:
        super().__init__(config)
        c = config
        self.attention_type = c.attention_type
        self.num_classes = c.num_classes
        self.embed_dim = self.num_features = c.embed_dim
        self.num_prefix_tokens = 1
        self.num_frames = c.num_frames
        # ViT's patch embedding applied frame by frame: a tubelet of one frame.
        self.patch_embed = TubeletEmbed(
            c.num_frames, to_2tuple(c.img_size), (1, c.patch_size, c.patch_size), c.in_chans, c.embed_dim
        )
        S = self.patch_embed.grid_size[1] * self.patch_embed.grid_size[2]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, S + 1, c.embed_dim))  # spatial, shared by the frames
        self.pos_drop = nn.Dropout(c.pos_drop_rate)
        self.time_embed = (
            nn.Parameter(torch.zeros(1, c.num_frames, c.embed_dim)) if c.attention_type != "space_only" else None
        )
        self.time_drop = nn.Dropout(c.pos_drop_rate)
        dpr = drop_path_rates(c.drop_path_rate, c.depth)
        common = dict(
            qkv_bias=c.qkv_bias, proj_drop=c.proj_drop_rate, attn_drop=c.attn_drop_rate, norm_eps=c.norm_eps, act=c.act
        )
        if c.attention_type == "divided_space_time":
            blocks = [
                DividedSpaceTimeBlock(c.embed_dim, c.num_heads, c.mlp_ratio, drop_path=dpr[i], **common)
                for i in range(c.depth)
            ]
        else:
            blocks = [Block(c.embed_dim, c.num_heads, c.mlp_ratio, drop_path=dpr[i], **common) for i in range(c.depth)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """The reference code's scheme: trunc-normal(0.02) linears, [CLS] and position embeddings,
        zero time embeddings, and zero `temporal_fc` in every block but the first (so a model
        initialised from an image ViT starts as that ViT); zero classifier head (vitkit's rule)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, block in enumerate(self.blocks):
            if i > 0 and isinstance(block, DividedSpaceTimeBlock):
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)
        self.init_classifier(self.head)

    # ----------------------------------------------------------------- forward
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clips -> tokens (B, 1 + S*T, D) in (s, t) order; space-only: (B*T, 1 + S, D)."""
        B, T = x.shape[0], self.num_frames
        x = self.patch_embed(x)  # (B, T*S, D), (t, s) order
        D = x.shape[-1]
        x = x.reshape(B * T, -1, D)
        x = torch.cat([self.cls_token.expand(B * T, -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        if self.time_embed is None:
            return x
        cls = x[::T, :1]  # every frame's [CLS] is the same: keep one per clip
        S = x.shape[1] - 1
        x = x[:, 1:].reshape(B, T, S, D).transpose(1, 2)  # (B, S, T, D)
        x = self.time_drop(x + self.time_embed.unsqueeze(1)).reshape(B, S * T, D)
        return torch.cat([cls, x], dim=1)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        args = (self.num_frames,) if isinstance(block, DividedSpaceTimeBlock) else ()
        return self._checkpointed(block, x, *args)

    def _frame_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Space-only: (B*T, 1 + S, D) -> (B, 1 + S, D), the reference code's average over frames."""
        if self.time_embed is not None:
            return x
        return x.unflatten(0, (-1, self.num_frames)).mean(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> normalised tokens (B, 1 + S*T, D) ((s, t) order); space-only (B, 1 + S, D)."""
        x = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(self._frame_mean(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone): per block, (B, D, T, h, w) for 'NCTHW' or (B, T*h*w, D) in (t, s)
    # order for 'NLC' (space-only: the per-frame outputs, the [CLS] averaged over frames)
    def _run_levels(self, x: torch.Tensor, last: int):
        B = x.shape[0]
        x = self._embed(x)
        for block in self.blocks[: last + 1]:
            x = self._run_block(block, x)
            yield x, B

    def _format_intermediate(self, y: torch.Tensor, B: int, output_fmt: str):
        T, (_, h, w), D = self.num_frames, self.patch_embed.grid_size, y.shape[-1]
        if self.time_embed is None:  # (B*T, 1 + S, D)
            prefix = y[:, :1].reshape(B, T, D).mean(1, keepdim=True)
            tokens = y[:, 1:].reshape(B, T * h * w, D)
        else:  # (B, 1 + S*T, D) in (s, t) order -> (t, s)
            prefix = y[:, :1]
            tokens = y[:, 1:].reshape(B, h * w, T, D).transpose(1, 2).reshape(B, T * h * w, D)
        if output_fmt == "NCTHW":
            tokens = tokens.transpose(1, 2).reshape(B, D, T, h, w)
        return tokens, prefix

    def _final_features(self, x: torch.Tensor, B: int, complete: bool) -> torch.Tensor:
        return self.norm(self._frame_mean(x)) if complete else x

    # ----------------------------------------------------------------- weight import
    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Fit a checkpoint: the reference code's 2-D patch conv (D, C, p, p) becomes the one-frame
        tubelet (D, C, 1, p, p); an image ViT checkpoint (no `time_embed`, no temporal weights)
        initialises the spatial part, as the paper does from ImageNet ViTs, the temporal parameters
        keeping their initialisation (zero `temporal_fc` after the first block, zero time
        embeddings); a head of another size is left freshly initialised."""
        from ..convert.timm import fit_heads

        state = dict(state)
        expected = self.state_dict()
        w = state.get("patch_embed.proj.weight")
        if w is not None and w.ndim == 4:
            state["patch_embed.proj.weight"] = inflate_patch_weight(w, 1)
        if "time_embed" not in state and self.time_embed is not None and "pos_embed" in state:
            added = [k for k in expected if k not in state and (k == "time_embed" or ".temporal_" in k)]
            for k in added:
                state[k] = torch.zeros_like(expected[k]) if k == "time_embed" else expected[k].clone()
            logger.info(
                "%s: an image checkpoint: %d temporal parameter(s) keep their initialisation", source, len(added)
            )
        fit_heads(self, state, expected, source)
        return state


# --------------------------------------------------------------------------------------------
# Named configurations: TimeSformer (8 x 224), -HR (16 x 448) and -L (96 x 224) of the paper, all
# ViT-B sized, and micro models for 28x28 clips of 8 frames.
_SUFFIX = {"divided_space_time": "", "joint_space_time": "_joint", "space_only": "_space"}


def _register_all() -> None:
    base = dict(embed_dim=768, depth=12, num_heads=12)
    # The reference code normalises with ImageNet statistics; HF's preprocessor too.
    kinetics = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=224 / 256, interpolation="bilinear")
    for attention, suffix in _SUFFIX.items():
        register_model(
            f"timesformer_base{suffix}_patch16_224", "timesformer", dict(base, attention_type=attention), **kinetics
        )
    register_model(
        "timesformer_hr_patch16_448",
        "timesformer",
        dict(base, img_size=448, num_frames=16),
        **dict(kinetics, crop_pct=448 / 512),
    )
    register_model("timesformer_large_patch16_224", "timesformer", dict(base, num_frames=96), **kinetics)
    micro = dict(
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        img_size=28,
        patch_size=4,
        num_frames=8,
        in_chans=1,
        num_classes=4,
    )
    for attention, suffix in _SUFFIX.items():
        register_model(
            f"timesformer_micro{suffix}_patch4_28",
            "timesformer",
            dict(micro, attention_type=attention),
            mean=MNIST_MEAN,
            std=MNIST_STD,
            crop_pct=1.0,
        )


_register_all()
