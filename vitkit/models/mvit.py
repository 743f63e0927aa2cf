"""MViT (v1): Multiscale Vision Transformers with multi-head pooling attention.

Paper
    Fan, Xiong, Mangalam, Li, Yan, Malik, Feichtenhofer, "Multiscale Vision Transformers",
    ICCV 2021 (arXiv:2104.11227): section 3.1 (multi-head pooling attention, MHPA), 3.2 (scale
    stages), table 3 (MViT-B).
Reference code
    facebookresearch/SlowFast and pytorchvideo; torchvision `models/video/mvit.py` (`mvit_v1_b`,
    36,610,672 parameters at 400 classes), whose checkpoints load here (`adapt_checkpoint` renames
    its keys).
Architecture
    - Patchify: a 3x7x7 conv with stride 2x4x4 (the "cube" of table 3) -> (T/2)(H/4)(W/4) tokens, a
      [CLS] token and separable space-time position embeddings (spatial + temporal + [CLS]).
    - MHPA (eq. 1-5): Q, K, V are linear projections, each pooled (`P(.; Theta)`: a depth-wise 3-D
      conv with kernel 3x3x3 and padding 1, then LN) -- Q with stride `stride_q` (1x2x2 at the first
      block of a stage, reducing the resolution), K and V with stride `stride_kv` (which shrinks
      as the resolution shrinks: 1x8x8, 1x4x4, 1x2x2, 1x1x1 for MViT-B). [CLS] is not pooled.
    - Scale stages (table 3): resolution halves and the width doubles from stage to stage; the
      width grows in the MLP of the last block of a stage (its output layer and the residual
      projection `proj`), the heads double at the first block of the next stage, and the residual
      of a block that pools Q is max-pooled (kernel stride+1) to the new resolution.
Deviations
    - The classifier head is zero-initialised (vitkit's rule); torchvision uses trunc-normal.

Shapes: clips (B, C, T, H, W) -> tokens (B, 1 + t*h*w, C_i) in (t, h, w) order; the token grid
shrinks by 2x2 spatially at every stage -> pooled [CLS] (B, C_last) -> logits (B, K).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import (
    DropPath,
    Linear,
    Mlp,
    drop_path_rates,
    fused_attention_enabled,
    record_attention,
    split_heads,
    to_2tuple,
)
from ..layers.video import TubeletEmbed, to_3tuple
from ..registry import MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family

logger = logging.getLogger("vitkit")


@dataclass
class MViTConfig:
    img_size: int | tuple[int, int] = 224
    num_frames: int = 16
    in_chans: int = 3
    num_classes: int = 400
    embed_dim: int = 96  # stage-1 width; doubled at every stage
    depths: tuple[int, ...] = (1, 2, 11, 2)  # blocks per scale stage (MViT-B: 16 blocks)
    num_heads: int = 1  # stage-1 heads; doubled at every stage
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_kernel: tuple[int, int, int] = (3, 7, 7)
    patch_stride: tuple[int, int, int] = (2, 4, 4)
    patch_padding: tuple[int, int, int] = (1, 3, 3)
    pool_kernel: tuple[int, int, int] = (3, 3, 3)  # kernel of the Q and K/V pooling convs
    stride_q: tuple[int, int, int] = (1, 2, 2)  # Q pooling at the first block of stages 2..
    stride_kv: tuple[int, int, int] = (1, 8, 8)  # K/V pooling in stage 1; divided by stride_q per stage
    norm_eps: float = 1e-6
    act: str = "gelu"
    drop_rate: float = 0.5  # dropout before the head (torchvision's default)
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2  # MViT-B's stochastic depth (torchvision's default)

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        self.depths = tuple(int(d) for d in self.depths)
        for name in ("patch_kernel", "patch_stride", "patch_padding", "pool_kernel", "stride_q", "stride_kv"):
            setattr(self, name, to_3tuple(getattr(self, name)))
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be positive block counts per stage, got {self.depths}")


def _pool_out(size: tuple[int, int, int], kernel, stride, padding) -> tuple[int, int, int]:
    return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding))


class AttentionPool(nn.Module):
    """Pooling operator P(.; Theta) of MHPA (section 3.1): depth-wise conv3d (per head dimension,
    shared by the heads) over the token grid, then LN; the [CLS] token is passed around it."""

    def __init__(self, head_dim: int, kernel, stride, norm_eps: float) -> None:
        super().__init__()
        self.stride = stride
        self.padding = tuple(k // 2 for k in kernel)
        self.pool = nn.Conv3d(
            head_dim, head_dim, kernel, stride=stride, padding=self.padding, groups=head_dim, bias=False
        )
        self.norm = nn.LayerNorm(head_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        B, H, _, d = x.shape  # (B, heads, 1 + t*h*w, head_dim)
        cls, x = x[:, :, :1], x[:, :, 1:]
        x = x.transpose(2, 3).reshape(B * H, d, *thw)
        x = self.pool(x)
        thw = _pool_out(thw, self.pool.kernel_size, self.pool.stride, self.padding)  # ints, also under torch.fx
        x = x.reshape(B, H, d, -1).transpose(2, 3)
        return self.norm(torch.cat([cls, x], dim=2)), thw


class MultiScaleAttention(nn.Module):
    """Multi-head pooling attention (eq. 1-5): Q, K, V pooled, then softmax(Q K^T / sqrt(d)) V."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        pool_kernel,
        stride_q,
        stride_kv,
        attn_drop: float,
        proj_drop: float,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # As the reference: a pooling layer exists when its kernel or stride is larger than 1 (so
        # K/V of the last stage, stride 1x1x1, are still convolved).
        q_pooled = max(stride_q) > 1
        self.pool_q = AttentionPool(self.head_dim, pool_kernel, stride_q, norm_eps) if q_pooled else None
        self.pool_k = AttentionPool(self.head_dim, pool_kernel, stride_kv, norm_eps)
        self.pool_v = AttentionPool(self.head_dim, pool_kernel, stride_kv, norm_eps)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        B, N, D = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        k, _ = self.pool_k(k, thw)
        v, _ = self.pool_v(v, thw)
        if self.pool_q is not None:
            q, thw = self.pool_q(q, thw)
        dropout = self.attn_drop if self.training else 0.0
        if fused_attention_enabled():
            x = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            record_attention(self, attn)  # vitkit.inspect.capture_attention
            x = nn.functional.dropout(attn, dropout) @ v
        x = x.transpose(1, 2).reshape(B, -1, D)
        return self.proj_drop(self.proj(x)), thw


class MultiScaleBlock(nn.Module):
    """x = pool_skip(x) + MHPA(LN(x)); x = proj(LN(x)) + MLP(LN(x)) where the width changes
    (`dim` -> `dim_out` at the last block of a stage), else x + MLP(LN(x))."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        pool_kernel,
        stride_q,
        stride_kv,
        drop_path: float,
        attn_drop: float,
        proj_drop: float,
        norm_eps: float,
        act: str,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiScaleAttention(
            dim, num_heads, qkv_bias, pool_kernel, stride_q, stride_kv, attn_drop, proj_drop, norm_eps
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), out_features=dim_out, act=act, drop=proj_drop)
        self.proj = Linear(dim, dim_out) if dim != dim_out else None
        if max(stride_q) > 1:  # the residual follows Q's resolution: max pooling, kernel stride + 1
            kernel = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.pool_skip = nn.MaxPool3d(kernel, stride=stride_q, padding=tuple(k // 2 for k in kernel))
        else:
            self.pool_skip = None

    def _skip(self, x: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
        if self.pool_skip is None:
            return x
        B, _, D = x.shape
        cls, grid = x[:, :1], x[:, 1:].transpose(1, 2).reshape(B, D, *thw)
        return torch.cat([cls, self.pool_skip(grid).flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        y, thw_new = self.attn(self.norm1(x), thw)
        x = self._skip(x, thw) + self.drop_path(y)
        y = self.norm2(x)
        shortcut = x if self.proj is None else self.proj(y)
        return shortcut + self.drop_path(self.mlp(y)), thw_new


@register_family
class MViT(Backbone):
    family = "mvit"
    config_class = MViTConfig
    global_pools = ("token",)  # classifies from [CLS]
    no_weight_decay_names = ("cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class")
    group_stem = r"^cls_token|^pos_embed|^patch_embed"
    # forward_intermediates: one output per stage (a feature pyramid); `norm` reaches the last stage only
    intermediate_fmts = ("NCTHW", "NLC")
    feature_level_unit = "stages"
    norm_intermediates = "last"

    def __init__(self, config: MViTConfig) -> None:
        super().__init__(config)
        c = config
        self.num_classes = c.num_classes
        self.num_prefix_tokens = 1
        self.patch_embed = TubeletEmbed(
            c.num_frames,
            to_2tuple(c.img_size),
            c.patch_kernel,
            c.in_chans,
            c.embed_dim,
            stride=c.patch_stride,
            padding=c.patch_padding,
        )
        nt, nh, nw = self.patch_embed.grid_size
        self.embed_dim = c.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # separable space-time position embeddings (pytorchvideo's `sep_pos_embed`)
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, nh * nw, c.embed_dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, nt, c.embed_dim))
        self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, c.embed_dim))

        dpr = drop_path_rates(c.drop_path_rate, sum(c.depths))
        blocks, self.stage_ends, self.feature_info = [], [], []
        dim, heads, stride_kv, thw, i = c.embed_dim, c.num_heads, c.stride_kv, (nt, nh, nw), 0
        for s, depth in enumerate(c.depths):
            for j in range(depth):
                first, last = j == 0, j == depth - 1
                stride_q = c.stride_q if (first and s > 0) else (1, 1, 1)
                if first and s > 0:
                    stride_kv = tuple(max(kv // q, 1) for kv, q in zip(stride_kv, c.stride_q))
                    heads *= 2
                dim_out = dim * 2 if (last and s < len(c.depths) - 1) else dim
                blocks.append(
                    MultiScaleBlock(
                        dim,
                        dim_out,
                        heads,
                        c.mlp_ratio,
                        c.qkv_bias,
                        c.pool_kernel,
                        stride_q,
                        stride_kv,
                        dpr[i],
                        c.attn_drop_rate,
                        c.proj_drop_rate,
                        c.norm_eps,
                        c.act,
                    )
                )
                if max(stride_q) > 1:
                    pad = tuple(k // 2 for k in c.pool_kernel)
                    thw = _pool_out(thw, c.pool_kernel, stride_q, pad)
                dim, i = dim_out, i + 1
            self.stage_ends.append(i - 1)
            # the stage's output width is the width its last block produces
            self.feature_info.append(dict(num_chs=dim, grid=thw, module=f"blocks.{i - 1}"))
        self.blocks = nn.ModuleList(blocks)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """torchvision's scheme (trunc-normal(0.02) linears and embeddings), zero classifier head."""
        for p in (self.cls_token, self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.init_classifier(self.head)

    # ----------------------------------------------------------------- forward
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, t*h*w, C)
        nt = self.patch_embed.grid_size[0]
        pos = self.pos_embed_temporal.repeat_interleave(
            self.pos_embed_spatial.shape[1], dim=1
        ) + self.pos_embed_spatial.repeat(1, nt, 1)  # (t, h, w) order
        x = x + pos
        cls = (self.cls_token + self.pos_embed_class).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def _run_block(self, block: nn.Module, x: torch.Tensor, thw):
        return self._checkpointed(block, x, thw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> normalised tokens of the last stage (B, 1 + t*h*w, C_last)."""
        x, thw = self._embed(x), self.patch_embed.grid_size
        for block in self.blocks:
            x, thw = self._run_block(block, x, thw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone): the outputs of selected *stages* (a feature pyramid), stage i
    # (B, C_i, t, h_i, w_i) for 'NCTHW' or (B, t*h_i*w_i, C_i) for 'NLC', its [CLS] as the prefix
    def _num_feature_levels(self) -> int:
        return len(self.stage_ends)

    def _run_levels(self, x: torch.Tensor, last: int):
        x, thw = self._embed(x), self.patch_embed.grid_size
        for i, block in enumerate(self.blocks[: self.stage_ends[last] + 1]):
            x, thw = self._run_block(block, x, thw)
            if i in self.stage_ends:
                yield x, thw

    def _format_intermediate(self, y: torch.Tensor, thw: tuple[int, int, int], output_fmt: str):
        prefix, tokens = y[:, :1], y[:, 1:]
        if output_fmt == "NCTHW":
            tokens = tokens.transpose(1, 2).reshape(y.shape[0], y.shape[2], *thw)
        return tokens, prefix

    # ----------------------------------------------------------------- weight import
    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Rename a torchvision `mvit_v1_b` state dict to vitkit's keys (logged), then fit the head."""
        from ..convert.official import convert_torchvision_mvit
        from ..convert.timm import fit_heads

        state = dict(state)
        if "conv_proj.weight" in state:
            state = convert_torchvision_mvit(state)
            logger.info("%s: torchvision MViT keys renamed to vitkit's", source)
        fit_heads(self, state, self.state_dict(), source)
        return state


# --------------------------------------------------------------------------------------------
# MViT-B 16x4 (table 3; torchvision mvit_v1_b) and 32x3 (same network, 32 frames sampled every 3),
# and a micro model for 28x28 clips of 8 frames.
def _register_all() -> None:
    kinetics = dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), crop_pct=224 / 256, interpolation="bilinear")
    register_model("mvit_base_16x4", "mvit", dict(num_frames=16), **kinetics)
    register_model("mvit_base_32x3", "mvit", dict(num_frames=32), **kinetics)
    register_model(
        "mvit_micro_28",
        "mvit",
        dict(
            img_size=28,
            num_frames=8,
            in_chans=1,
            num_classes=4,
            embed_dim=32,
            depths=(1, 2, 1),
            stride_kv=(1, 4, 4),
            drop_rate=0.0,
            drop_path_rate=0.0,
        ),
        mean=MNIST_MEAN,
        std=MNIST_STD,
        crop_pct=1.0,
    )


_register_all()
