"""CvT: the Convolutional vision Transformer.

Paper
    Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021 (arXiv:2103.15808).
Reference code
    microsoft/CvT (`lib/models/cls_cvt.py`), whose state-dict keys this file keeps
    (`stage{i}.patch_embed.proj`, `stage{i}.blocks.{j}.attn.conv_proj_q.conv` / `.bn`,
    `attn.proj_q`, `attn.proj`, `mlp.fc1`, `stage2.cls_token`, `norm`, `head`), so official
    checkpoints load with an identity map; Hugging Face `CvtModel` / `CvtForImageClassification`
    (`transformers/models/cvt/modeling_cvt.py`), whose checkpoints `vitkit/convert/hf_cvt.py` maps.
Architecture
    Three stages. Each starts with a convolutional token embedding (an overlapping strided conv,
    7x7/4 then 3x3/2 and 3x3/2, followed by LayerNorm) and runs pre-LN transformer blocks whose
    attention projects q, k and v with a depth-wise 3x3 conv + BatchNorm on the token map followed
    by a linear layer (the paper's point-wise projection); k and v use stride 2 ("squeezed"
    projection), q stride 1. No position embeddings. A [CLS] token is added in the last stage only:
    it bypasses the convolutional projection and is concatenated to the projected tokens, as in the
    reference. The classifier reads the LayerNorm-ed [CLS] token (or the mean of the normalised
    tokens when there is no [CLS]).
Faithful to the reference (and so unlike vitkit's ViT)
    - The attention scale is `dim ** -0.5` with the stage's full width, not the head width (as
      microsoft/CvT and HF; the paper does not say).
    - LayerNorm eps is 1e-5 (torch's default, used by both references; HF's `layer_norm_eps` is
      never read by its CvT modules).
    - Images of any size are accepted (there are no position embeddings); `img_size` is nominal.
Deviations
    - The classifier head is zero-initialised, as in every vitkit model (microsoft/CvT uses
      trunc-normal(0.02)); `load_pretrained` and `reset_classifier` behave as for ViT.
    - Stochastic depth follows microsoft/CvT (per stage, linear from 0 to the stage's rate, on both
      residual branches). HF's CvT gives every block of stage i the rate linspace(...)[i] and drops
      the whole residual sum after the MLP; this only matters in training.
    - Only the 'dw_bn' projection of the reference is implemented (HF cannot run its 'avg' either),
      and a [CLS] token only in the last stage (the reference discards earlier ones; HF sizes them
      with the last stage's width, so they cannot be loaded).
    - Gradient checkpointing in training mode re-runs each block's BatchNorms in the backward pass,
      so their running statistics get a second momentum update per step (as for any BN model under
      torch.utils.checkpoint); outputs and gradients are unchanged.
    - `final_norm=False` drops the last LayerNorm: HF `CvtModel` has none (it belongs to the
      classification head there).

Shapes: images (B, C, H, W) -> stage i token map (B, C_i, H_i, W_i) -> last stage tokens
(B, P + H_3 W_3, C_3) with P = 1 [CLS] -> pooled (B, C_3) -> logits (B, K).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    DropPath,
    Linear,
    Mlp,
    drop_path_rates,
    fused_attention_enabled,
    is_fx_tracing,
    record_attention,
)
from ..registry import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family

# fields that hold one value per stage; a scalar given for one of them applies to every stage
_PER_STAGE = (
    "embed_dims",
    "depths",
    "num_heads",
    "patch_sizes",
    "patch_strides",
    "patch_padding",
    "mlp_ratios",
    "qkv_bias",
    "cls_token",
    "kernel_qkv",
    "stride_q",
    "stride_kv",
    "padding_q",
    "padding_kv",
    "drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
)


@dataclass
class CvtConfig:
    img_size: int | tuple[int, int] = 224  # nominal: any size runs (no position embeddings)
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "token"  # 'token' (LN-ed [CLS]) | 'avg' (mean of the normalised patch tokens) | ''
    embed_dims: tuple[int, ...] = (64, 192, 384)
    depths: tuple[int, ...] = (1, 2, 10)
    num_heads: tuple[int, ...] = (1, 3, 6)
    patch_sizes: tuple[int, ...] = (7, 3, 3)  # convolutional token embedding: kernel, stride, padding
    patch_strides: tuple[int, ...] = (4, 2, 2)
    patch_padding: tuple[int, ...] = (2, 1, 1)
    mlp_ratios: tuple[float, ...] = (4.0, 4.0, 4.0)
    qkv_bias: tuple[bool, ...] = (True, True, True)
    cls_token: tuple[bool, ...] = (False, False, True)  # only the last stage may have one
    kernel_qkv: tuple[int, ...] = (3, 3, 3)  # depth-wise conv of the q/k/v projections
    stride_q: tuple[int, ...] = (1, 1, 1)
    stride_kv: tuple[int, ...] = (2, 2, 2)  # the "squeezed" key/value projection
    padding_q: tuple[int, ...] = (1, 1, 1)
    padding_kv: tuple[int, ...] = (1, 1, 1)
    norm_eps: float = 1e-5
    act: str = "gelu"
    final_norm: bool = True  # the LayerNorm before the head (HF CvtModel has none)
    drop_rate: tuple[float, ...] = (0.0, 0.0, 0.0)  # after the token embedding, attention projection, MLP
    attn_drop_rate: tuple[float, ...] = (0.0, 0.0, 0.0)
    drop_path_rate: tuple[float, ...] = (0.0, 0.0, 0.0)  # per stage, linear from 0 over its blocks

    # a scalar given for one of these applies to every stage (read by vitkit.validate's type check too)
    per_stage_fields: ClassVar[tuple[str, ...]] = _PER_STAGE

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if not isinstance(self.depths, (list, tuple)) or not self.depths:
            raise ValueError(f"depths must be a sequence with one depth per stage, got {self.depths!r}")
        n = len(self.depths)
        for name in _PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                value = tuple(value)
                if len(value) != n:
                    raise ValueError(f"{name} has {len(value)} values for {n} stages (depths {tuple(self.depths)})")
            else:
                value = (value,) * n
            setattr(self, name, value)
        if self.global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {self.global_pool!r}")
        if any(self.cls_token[:-1]):
            raise ValueError(f"cls_token {self.cls_token}: only the last stage can have a [CLS] token")
        if self.global_pool == "token" and not self.cls_token[-1]:
            raise ValueError("global_pool='token' needs the [CLS] token of the last stage: use global_pool='avg'")
        for i, (d, h) in enumerate(zip(self.embed_dims, self.num_heads)):
            if d % h:
                raise ValueError(f"stage {i}: embed dim {d} is not divisible by num_heads {h}")
        for i, (k, s, p) in enumerate(zip(self.kernel_qkv, self.stride_q, self.padding_q)):
            if s != 1 or 2 * p != k - 1:
                raise ValueError(
                    f"stage {i}: the query projection must keep the token grid (stride_q 1, "
                    f"padding_q = (kernel_qkv - 1) / 2), got kernel {k}, stride {s}, padding {p}"
                )


class ConvEmbed(nn.Module):
    """Convolutional token embedding: (B, C, H, W) -> tokens (B, H'W', D) and the grid (H', W')."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int, norm_eps: float):
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if not is_fx_tracing():  # fx: symbolic shapes, nothing to check (see vitkit/layers/tracing.py)
            self.check_input(x)
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (H, W)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected a (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}"
                + (": create the model with the in_chans of the images" if x.ndim == 4 else "")
            )


def _conv_projection(dim: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    """The paper's depth-wise separable projection, first half: depth-wise conv + BatchNorm."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(dim, dim, kernel_size=kernel, stride=stride, padding=padding, bias=False, groups=dim),
            bn=nn.BatchNorm2d(dim),
        )
    )


class ConvAttention(nn.Module):
    """Multi-head attention with convolutional q/k/v projections (paper section 3.2, figure 3).

    Input tokens (B, P + H W, D) with P = 0 or 1 [CLS] token first."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        kernel: int,
        stride_q: int,
        stride_kv: int,
        padding_q: int,
        padding_kv: int,
        attn_drop: float,
        proj_drop: float,
        with_cls_token: bool,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = dim**-0.5  # the references' choice: the full width, not the head width
        self.with_cls_token = with_cls_token
        self.conv_proj_q = _conv_projection(dim, kernel, stride_q, padding_q)
        self.conv_proj_k = _conv_projection(dim, kernel, stride_kv, padding_kv)
        self.conv_proj_v = _conv_projection(dim, kernel, stride_kv, padding_kv)
        self.proj_q = Linear(dim, dim, bias=qkv_bias)
        self.proj_k = Linear(dim, dim, bias=qkv_bias)
        self.proj_v = Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, hd)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], return_attention: bool = False):
        B, N, D = x.shape
        H, W = hw
        cls = None
        if self.with_cls_token:
            cls, x = x[:, :1], x[:, 1:]  # the [CLS] token bypasses the convolutional projection
        fmap = x.transpose(1, 2).reshape(B, D, H, W)
        q, k, v = (
            proj(fmap).flatten(2).transpose(1, 2) for proj in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v)
        )
        if cls is not None:
            q, k, v = (torch.cat((cls, t), dim=1) for t in (q, k, v))
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        weights = None
        if fused_attention_enabled() and not return_attention:
            x = F.scaled_dot_product_attention(
                q,
                k,
                v,
                dropout_p=self.attn_drop.p if self.training else 0.0,
                scale=self.scale,
            )
        else:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N_kv)
            record_attention(self, weights)
            x = self.attn_drop(weights) @ v
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))
        return (x, weights) if return_attention else x


class CvtBlock(nn.Module):
    """Pre-LN transformer block with convolutional attention; keys `norm1`, `attn`, `norm2`, `mlp`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        kernel: int,
        stride_q: int,
        stride_kv: int,
        padding_q: int,
        padding_kv: int,
        drop: float,
        attn_drop: float,
        drop_path: float,
        with_cls_token: bool,
        norm_eps: float,
        act: str,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ConvAttention(
            dim,
            num_heads,
            qkv_bias,
            kernel,
            stride_q,
            stride_kv,
            padding_q,
            padding_kv,
            attn_drop,
            drop,
            with_cls_token,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], return_attention: bool = False):
        if return_attention:
            y, weights = self.attn(self.norm1(x), hw, return_attention=True)
        else:
            y, weights = self.attn(self.norm1(x), hw), None
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class CvtStage(nn.Module):
    """Convolutional token embedding, optional [CLS] token, blocks (keys as microsoft/CvT's stages)."""

    def __init__(self, c: CvtConfig, i: int) -> None:
        super().__init__()
        dim = c.embed_dims[i]
        in_chans = c.in_chans if i == 0 else c.embed_dims[i - 1]
        self.patch_embed = ConvEmbed(
            in_chans, dim, c.patch_sizes[i], c.patch_strides[i], c.patch_padding[i], c.norm_eps
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if c.cls_token[i] else None
        self.num_prefix_tokens = int(c.cls_token[i])
        self.pos_drop = nn.Dropout(c.drop_rate[i])
        dpr = drop_path_rates(c.drop_path_rate[i], c.depths[i])
        self.blocks = nn.ModuleList(
            [
                CvtBlock(
                    dim,
                    c.num_heads[i],
                    c.mlp_ratios[i],
                    c.qkv_bias[i],
                    c.kernel_qkv[i],
                    c.stride_q[i],
                    c.stride_kv[i],
                    c.padding_q[i],
                    c.padding_kv[i],
                    c.drop_rate[i],
                    c.attn_drop_rate[i],
                    dpr[j],
                    c.cls_token[i],
                    c.norm_eps,
                    c.act,
                )
                for j in range(c.depths[i])
            ]
        )

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, hw = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x), hw


@register_family
class ConvolutionalVisionTransformer(Backbone):
    family = "cvt"
    config_class = CvtConfig
    hierarchical_features = True  # features_only takes every stage by default
    global_pools = ("token", "avg", "")
    # layer-wise LR decay groups: the first token embedding is the stem; a later stage's embedding (a
    # downsampling conv) and [CLS] go with its first block
    group_stem = r"^stage0\.patch_embed"
    group_blocks = [
        (r"^stage(\d+)\.(?:patch_embed|cls_token)", (0,)),
        (r"^stage(\d+)\.blocks\.(\d+)", None),
        (r"^norm", (99999,)),
    ]
    group_blocks_coarse = [(r"^stage(\d+)\.", None), (r"^norm", (99999,))]
    # forward_intermediates: one output per stage (a feature pyramid); `norm` reaches the last stage only
    feature_level_unit = "stages"
    norm_intermediates = "last"

    def __init__(self, config: CvtConfig) -> None:
        super().__init__(config)
        c = config
        self.num_stages = len(c.depths)
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.embed_dims = list(c.embed_dims)
        self.embed_dim = self.num_features = self.head_hidden_size = c.embed_dims[-1]
        self.num_prefix_tokens = int(c.cls_token[-1])
        for i in range(self.num_stages):  # attributes, not a list: the official keys are `stage{i}.`
            self.add_module(f"stage{i}", CvtStage(c, i))
        reduction, self.feature_info = 1, []
        for i in range(self.num_stages):
            reduction *= c.patch_strides[i]
            self.feature_info.append(dict(num_chs=c.embed_dims[i], reduction=reduction, module=f"stage{i}"))
        self.norm = nn.LayerNorm(self.embed_dim, eps=c.norm_eps) if c.final_norm else nn.Identity()
        self.head = Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def stages(self) -> list[CvtStage]:
        return [getattr(self, f"stage{i}") for i in range(self.num_stages)]

    # ----------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """microsoft/CvT's 'trunc_norm' scheme: trunc-normal(0.02) linears and [CLS], zero biases,
        torch defaults for convs and norms; then vitkit's zero-initialised head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=0.02)
        self.init_classifier(self.head)

    # ----------------------------------------------------------------- backbone interface
    def no_weight_decay(self) -> set[str]:
        return {f"stage{i}.cls_token" for i, s in enumerate(self.stages) if s.cls_token is not None}

    def _keep_levels(self, n: int) -> None:  # prune_intermediate_layers (Backbone)
        if n < self.num_stages:  # the last kept stage's tokens are the features now
            self.embed_dim = self.feature_info[n - 1]["num_chs"]
            self.num_prefix_tokens = getattr(self, f"stage{n - 1}").num_prefix_tokens
        for i in range(n, self.num_stages):
            delattr(self, f"stage{i}")
        self.num_stages = n

    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Official keys are ours: only the classifier is fitted (another number of classes, or a
        feature checkpoint, keeps the model's fresh zero head; the loader logs it)."""
        from ..convert.timm import fit_heads

        state = dict(state)
        fit_heads(self, state, self.state_dict(), source)
        return state

    # ----------------------------------------------------------------- forward
    def _run_block(self, block: nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self._checkpointed(block, x, hw)

    @staticmethod
    def _to_map(stage: CvtStage, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, P + HW, D) -> token map (B, D, H, W), prefix dropped."""
        x = x[:, stage.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage's normalised tokens (B, P + N, D), [CLS] first."""
        stages = self.stages
        for i, stage in enumerate(stages):
            x, hw = stage.embed(x)
            for block in stage.blocks:
                x = self._run_block(block, x, hw)
            if i < len(stages) - 1:
                x = self._to_map(stage, x, hw)
        return self.norm(x)

    def forward_features_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like `forward_features`, also returning every block's attention weights (B, heads, N, N_kv)
        (eager path). Blocks are numbered across stages."""
        stages, attentions = self.stages, []
        for i, stage in enumerate(stages):
            x, hw = stage.embed(x)
            for block in stage.blocks:
                x, weights = block(x, hw, return_attention=True)
                attentions.append(weights)
            if i < len(stages) - 1:
                x = self._to_map(stage, x, hw)
        return self.norm(x), attentions

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        if self.global_pool == "token":
            return x[:, 0]
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, P + N, D) -> logits (B, K), or pooled features when `pre_logits`."""
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone), as timm's for hierarchical models: stage i gives (B, C_i, H_i, W_i)
    # for 'NCHW' or (B, H_i W_i, C_i) for 'NLC', its prefix (B, P_i, C_i) with P_i = 1 where the stage
    # has a [CLS] token; the final features are `forward_features(x)`, or the raw tokens of the last
    # stage run when `stop_early` stops before the end
    def _num_feature_levels(self) -> int:
        return self.num_stages

    def _run_levels(self, x: torch.Tensor, last: int):
        for i, stage in enumerate(self.stages[: last + 1]):
            x, hw = stage.embed(x)
            for block in stage.blocks:
                x = self._run_block(block, x, hw)
            yield x, (stage.num_prefix_tokens, hw)
            if i < last:
                x = self._to_map(stage, x, hw)

    def _format_intermediate(self, y: torch.Tensor, ctx: tuple[int, tuple[int, int]], output_fmt: str):
        P, hw = ctx
        prefix, spatial = y[:, :P], y[:, P:]
        if output_fmt == "NCHW":
            spatial = spatial.transpose(1, 2).reshape(y.shape[0], y.shape[2], *hw)
        return spatial, prefix


# --------------------------------------------------------------------------------------------
# Named configurations (paper table 2; microsoft/CvT `experiments/imagenet/cvt/*.yaml`).
CVT_SIZES: dict[str, dict[str, Any]] = {
    "13": dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6)),
    "21": dict(embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6)),
    "w24": dict(embed_dims=(192, 768, 1024), depths=(2, 2, 20), num_heads=(3, 12, 16)),
    # CPU-sized: three 3x3/2 token embeddings, 28 -> 14 -> 7 -> 4 and 32 -> 16 -> 8 -> 4
    "micro": dict(
        embed_dims=(32, 64, 96),
        depths=(1, 1, 2),
        num_heads=(1, 2, 3),
        mlp_ratios=(2.0, 2.0, 2.0),
        patch_sizes=(3, 3, 3),
        patch_strides=(2, 2, 2),
        patch_padding=(1, 1, 1),
        num_classes=10,
    ),
}


def _register_all() -> None:
    for size in ("13", "21", "w24"):  # ImageNet mean/std, bicubic (the registry's defaults)
        register_model(f"cvt_{size}", "cvt", dict(CVT_SIZES[size], img_size=224), crop_pct=0.875)
        register_model(f"cvt_{size}_384", "cvt", dict(CVT_SIZES[size], img_size=384), crop_pct=1.0)
    micro = CVT_SIZES["micro"]
    register_model(
        "cvt_micro_28", "cvt", dict(micro, img_size=28, in_chans=1), mean=MNIST_MEAN, std=MNIST_STD, crop_pct=1.0
    )
    register_model(
        "cvt_micro_32",
        "cvt",
        dict(micro, img_size=32),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        crop_pct=1.0,
    )


_register_all()
