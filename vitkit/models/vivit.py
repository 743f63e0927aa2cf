"""ViViT: A Video Vision Transformer -- the paper's four models.

Paper
    Arnab, Dehghani, Heigold, Sun, Lucic, Schmid, "ViViT: A Video Vision Transformer", ICCV 2021
    (arXiv:2103.15691), section 3.3 (the four models) and 3.4 (initialisation from image models).
Reference code
    google-research/scenic `projects/vivit/model.py` (all four models); Hugging Face
    `VivitForVideoClassification` (Model 1 only), whose checkpoints load here (convert/hf_vivit.py).
The models (`attention_type`)
    1 'spatio_temporal': every tubelet token attends to every other (eq. 1 on all n_t n_h n_w tokens).
    2 'factorised_encoder': a spatial ViT encodes each temporal index on its own (its own [CLS],
      position embeddings and final LN: `depth` = L_s blocks); the per-index [CLS] outputs go through
      a temporal transformer (`temporal_depth` = L_t blocks, its own [CLS], position embeddings, LN).
    3 'factorised_self_attention': each block runs self-attention spatially (among the tokens of one
      temporal index), then temporally (among the tokens of one spatial location), then the MLP
      (eq. 4-6), each with its own LN and residual.
    4 'factorised_dot_product': one attention whose first half of the heads attends over space and
      second half over time; the heads are concatenated and projected (eq. 7-9). Same parameters
      as Model 1, so Model 1 weights load into Model 4 as they are.
Deviations
    - Models 3 and 4 with a [CLS] token (the default, so that Model 4 has exactly Model 1's parameters and
      Model 1's weights load into it): the paper drops [CLS] there ("to avoid ambiguities when reshaping"). Here
      [CLS] joins every spatial and every temporal sequence, and its outputs over the sequences are
      averaged -- TimeSformer's rule for its spatial step. `class_token=False, global_pool='avg'`
      is the paper's exact variant.
    - The classifier head is zero-initialised (the ViT paper's fine-tuning head), as in vitkit's ViT.

Shapes: clips (B, C, T, H, W) -> tubelets (B, N, D), N = n_t n_h n_w in (t, h, w) order ->
tokens (B, P + N, D) with P = 1 [CLS] (Model 2: (B*n_t, P + n_h n_w, D) then (B, P + n_t, D)) ->
pooled (B, D) -> logits (B, K).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    Attention,
    Block,
    DropPath,
    Linear,
    Mlp,
    drop_path_rates,
    fused_attention_enabled,
    record_attention,
    to_2tuple,
)
from ..layers.video import (
    TubeletEmbed,
    inflate_patch_weight,
    sincos_pos_embed_3d,
    to_3tuple,
)
from ..registry import MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family

logger = logging.getLogger("vitkit")

ATTENTION_TYPES = ("spatio_temporal", "factorised_encoder", "factorised_self_attention", "factorised_dot_product")
KINETICS_MEAN = (0.5, 0.5, 0.5)  # HF VivitImageProcessor: rescale to [-1, 1]
KINETICS_STD = (0.5, 0.5, 0.5)


@dataclass
class ViViTConfig:
    img_size: int | tuple[int, int] = 224
    num_frames: int = 32
    tubelet_size: tuple[int, int, int] = (2, 16, 16)  # (t, h, w) of one tubelet
    in_chans: int = 3
    num_classes: int = 400
    attention_type: str = "spatio_temporal"  # one of ATTENTION_TYPES (Models 1-4)
    embed_dim: int = 768
    depth: int = 12  # Model 2: L_s, the spatial encoder's depth
    temporal_depth: int = 4  # Model 2 only: L_t, the temporal encoder's depth
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: str = "token"  # 'token' ([CLS]) | 'avg' (mean of the tokens)
    pos_embed: str = "learned"  # 'learned' | 'sincos' (fixed 3-D sin-cos, not trained)
    inflation: str = "average"  # image checkpoint -> tubelet filter: 'average' | 'central' (section 3.4)
    norm_eps: float = 1e-6
    act: str = "gelu"  # Hugging Face ViViT checkpoints use the tanh approximation ('gelu_tanh')
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        self.tubelet_size = to_3tuple(self.tubelet_size)
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs the class token: use global_pool='avg' with class_token=False")
        if self.pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")
        if self.inflation not in ("average", "central"):
            raise ValueError(f"inflation must be 'average' or 'central', got {self.inflation!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.attention_type == "factorised_dot_product" and self.num_heads % 2:
            raise ValueError(
                f"Model 4 splits the heads in two halves (space, time): num_heads must be even, got {self.num_heads}"
            )


# --------------------------------------------------------------------------------------------
# Regrouping tokens for factorised attention. Tokens are (B, P + T*S, ...) in (t, s) order with
# P prefix tokens; a 'space' group is one temporal index (B*T sequences of P + S tokens), a
# 'time' group one spatial location (B*S sequences of P + T tokens). The prefix tokens join every
# sequence; on the way back their outputs are averaged over the sequences.
def group_tokens(x: torch.Tensor, prefix: int, T: int, S: int, axis: str) -> torch.Tensor:
    """(B, P + T*S, *rest) -> (B*G, P + L, *rest): G, L = T, S for 'space' and S, T for 'time'."""
    G = T if axis == "space" else S
    tok = x[:, prefix:].unflatten(1, (T, S))  # (B, T, S, *rest); no shape arithmetic, so torch.fx traces it
    if axis == "time":
        tok = tok.transpose(1, 2)
    tok = tok.flatten(0, 1)
    if prefix:
        tok = torch.cat([x[:, :prefix].repeat_interleave(G, dim=0), tok], dim=1)
    return tok


def ungroup_tokens(y: torch.Tensor, B: int, prefix: int, T: int, S: int, axis: str) -> torch.Tensor:
    """Inverse of `group_tokens`; the P prefix outputs are averaged over the G sequences."""
    G, L = (T, S) if axis == "space" else (S, T)
    tok = y[:, prefix:].unflatten(0, (B, G))  # (B, G, L, *rest)
    if axis == "time":
        tok = tok.transpose(1, 2)
    tok = tok.flatten(1, 2)
    if not prefix:
        return tok
    return torch.cat([y[:, :prefix].unflatten(0, (B, G)).mean(1), tok], dim=1)


def scaled_dot_product(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0, module: nn.Module | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (B, H, L, d): fused by default, explicit inside `eager_attention()`,
    where the weights are reported to attention capture (`record_attention`) on behalf of `module`."""
    if fused_attention_enabled():
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    if module is not None:
        record_attention(module, attn)
    return F.dropout(attn, dropout) @ v


class FactorisedSelfAttentionBlock(nn.Module):
    """Model 3 (eq. 4-6): y_s = MSA_s(LN(z)) + z; y_t = MSA_t(LN(y_s)) + y_s; z = MLP(LN(y_t)) + y_t."""

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
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.temporal_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
        B, (T, S) = x.shape[0], grid
        y = self.attn(group_tokens(self.norm1(x), prefix, T, S, "space"))
        x = x + self.drop_path(ungroup_tokens(y, B, prefix, T, S, "space"))
        y = self.temporal_attn(group_tokens(self.temporal_norm(x), prefix, T, S, "time"))
        x = x + self.drop_path(ungroup_tokens(y, B, prefix, T, S, "time"))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FactorisedDotProductAttention(nn.Module):
    """Model 4 (eq. 7-9): Y = Concat(Y_s, Y_t) W_O, where the first half of the heads attends among
    the tokens of the same temporal index (Y_s) and the second half among the tokens of the same
    spatial location (Y_t). Keys `qkv`, `proj` as `Attention`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
        B, N, D = x.shape
        T, S = grid
        h = self.num_heads // 2
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        outs = []
        for axis, heads in (("space", slice(0, h)), ("time", slice(h, self.num_heads))):
            g = group_tokens(qkv[:, :, :, heads], prefix, T, S, axis)  # (B*G, P + L, 3, h, hd)
            q, k, v = g.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*G, h, P + L, hd)
            # captured as two records per block: the space heads (B*T, h, P+S, P+S), then the time heads
            o = scaled_dot_product(q, k, v, self.attn_drop if self.training else 0.0, module=self)
            outs.append(ungroup_tokens(o.transpose(1, 2), B, prefix, T, S, axis))  # (B, N, h, hd)
        x = torch.cat(outs, dim=2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))


class FactorisedDotProductBlock(Block):
    """A pre-LN block (keys as `Block`) whose attention is Model 4's."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float, **kwargs: Any
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **kwargs)
        self.attn = FactorisedDotProductAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:  # type: ignore[override]
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), grid, prefix)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


# --------------------------------------------------------------------------------------------
@register_family
class ViViT(Backbone):
    family = "vivit"
    config_class = ViViTConfig
    global_pools = ("token", "avg")
    no_weight_decay_names = ("pos_embed", "cls_token", "temporal_pos_embed", "temporal_cls_token")
    group_stem = r"^cls_token|^pos_embed|^patch_embed"
    intermediate_fmts = ("NCTHW", "NLC")

    def __init__(self, config: ViViTConfig) -> None:
        super().__init__(config)
        c = config
        self.attention_type = c.attention_type
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.embed_dim = self.num_features = c.embed_dim
        self.num_prefix_tokens = int(c.class_token)
        img_size = to_2tuple(c.img_size)
        self.patch_embed = TubeletEmbed(c.num_frames, img_size, c.tubelet_size, c.in_chans, c.embed_dim)
        nt, nh, nw = self.patch_embed.grid_size
        P = self.num_prefix_tokens
        factorised_encoder = c.attention_type == "factorised_encoder"
        # Model 2's first position embeddings cover one temporal index; the others all tokens.
        n_pos = (nh * nw if factorised_encoder else nt * nh * nw) + P
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, c.embed_dim), requires_grad=c.pos_embed == "learned")
        self.pos_drop = nn.Dropout(c.pos_drop_rate)

        depth_total = c.depth + (c.temporal_depth if factorised_encoder else 0)
        dpr = drop_path_rates(c.drop_path_rate, depth_total)
        common = dict(
            qkv_bias=c.qkv_bias, proj_drop=c.proj_drop_rate, attn_drop=c.attn_drop_rate, norm_eps=c.norm_eps, act=c.act
        )
        if c.attention_type == "factorised_self_attention":
            blocks = [
                FactorisedSelfAttentionBlock(c.embed_dim, c.num_heads, c.mlp_ratio, drop_path=dpr[i], **common)
                for i in range(c.depth)
            ]
        elif c.attention_type == "factorised_dot_product":
            blocks = [
                FactorisedDotProductBlock(c.embed_dim, c.num_heads, mlp_ratio=c.mlp_ratio, drop_path=dpr[i], **common)
                for i in range(c.depth)
            ]
        else:
            blocks = [Block(c.embed_dim, c.num_heads, c.mlp_ratio, drop_path=dpr[i], **common) for i in range(c.depth)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        if factorised_encoder:
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.class_token else None
            self.temporal_pos_embed = nn.Parameter(
                torch.zeros(1, nt + P, c.embed_dim), requires_grad=c.pos_embed == "learned"
            )
            self.temporal_blocks = nn.Sequential(
                *[
                    Block(c.embed_dim, c.num_heads, c.mlp_ratio, drop_path=dpr[c.depth + i], **common)
                    for i in range(c.temporal_depth)
                ]
            )
            self.temporal_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """timm's ViT scheme: trunc-normal(0.02) linears and learned position embeddings, tiny [CLS];
        fixed sin-cos embeddings if configured; zero classifier head."""
        P = self.num_prefix_tokens
        nt, nh, nw = self.patch_embed.grid_size
        pairs = [(self.pos_embed, (1, nh, nw) if self.attention_type == "factorised_encoder" else (nt, nh, nw))]
        if self.attention_type == "factorised_encoder":
            pairs.append((self.temporal_pos_embed, (nt, 1, 1)))
        for pos, grid in pairs:
            if self.config.pos_embed == "sincos":
                with torch.no_grad():
                    pos.zero_()  # the [CLS] position stays 0, as in MAE
                    pos[0, P:] = sincos_pos_embed_3d(pos.shape[-1], grid).to(pos.device)
            else:
                nn.init.trunc_normal_(pos, std=0.02)
        for token in (self.cls_token, getattr(self, "temporal_cls_token", None)):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.init_classifier(self.head)

    # ----------------------------------------------------------------- backbone interface

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer-wise LR decay groups: stem, then the blocks (Model 2: spatial, then temporal blocks)."""
        if coarse or self.attention_type != "factorised_encoder":
            return super().group_matcher(coarse)
        d = self.config.depth
        blocks = [
            (r"^blocks\.(\d+)", None),
            (r"^norm", (d - 1,)),
            (r"^temporal_cls_token|^temporal_pos_embed", (d,)),
            (r"^temporal_blocks\.(\d+)", (d,)),
            (r"^temporal_norm", (99999,)),
        ]
        return dict(stem=self.group_stem, blocks=blocks)

    # ----------------------------------------------------------------- forward
    def _run(self, block: nn.Module, x: torch.Tensor, *args: Any) -> torch.Tensor:
        return self._checkpointed(block, x, *args)

    def _prepend(self, x: torch.Tensor, token: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        if token is not None:
            x = torch.cat([token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + pos)

    def _spatial_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Clips -> tokens after the (spatial) blocks: (B, P + N, D), or (B*n_t, P + n_h n_w, D) for Model 2."""
        x = self.patch_embed(x)  # (B, N, D)
        B, _, D = x.shape
        nt, nh, nw = self.patch_embed.grid_size
        if self.attention_type == "factorised_encoder":
            x = x.reshape(B * nt, nh * nw, D)  # each temporal index is one spatial "image"
        x = self._prepend(x, self.cls_token, self.pos_embed)
        return x

    def _run_blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        if self.attention_type in ("factorised_self_attention", "factorised_dot_product"):
            nt, nh, nw = self.patch_embed.grid_size
            for block in blocks:
                x = self._run(block, x, (nt, nh * nw), self.num_prefix_tokens)
            return x
        for block in blocks:
            x = self._run(block, x)
        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)

    def _temporal(self, x: torch.Tensor, B: int) -> torch.Tensor:
        """Model 2: normalised spatial tokens (B*n_t, P + S, D) -> temporal tokens (B, P + n_t, D)."""
        x = self._pool(x).reshape(B, self.patch_embed.grid_size[0], -1)  # per-index [CLS] (or mean)
        x = self._prepend(x, self.temporal_cls_token, self.temporal_pos_embed)
        for block in self.temporal_blocks:
            x = self._run(block, x)
        return self.temporal_norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> normalised tokens (B, P + N, D); Model 2: the temporal encoder's (B, P + n_t, D)."""
        B = x.shape[0]
        x = self.norm(self._run_blocks(self._spatial_tokens(x), self.blocks))
        if self.attention_type == "factorised_encoder":
            x = self._temporal(x, B)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone): the outputs of selected blocks (for Model 2: of the spatial
    # encoder's blocks), each (B, D, n_t, n_h, n_w) for 'NCTHW' or (B, N, D) for 'NLC', the prefix
    # (B, P, D) -- for Model 2 (B, n_t * P, D), one [CLS] per temporal index
    def _run_levels(self, x: torch.Tensor, last: int):
        B = x.shape[0]
        x = self._spatial_tokens(x)
        for block in self.blocks[: last + 1]:
            x = self._run_blocks(x, [block])
            yield x, B

    def _format_intermediate(self, y: torch.Tensor, B: int, output_fmt: str):
        nt, nh, nw = self.patch_embed.grid_size
        P = self.num_prefix_tokens
        prefix, tokens = y[:, :P].reshape(B, -1, y.shape[-1]), y[:, P:].reshape(B, nt * nh * nw, -1)
        if output_fmt == "NCTHW":
            tokens = tokens.transpose(1, 2).reshape(B, -1, nt, nh, nw)
        return tokens, prefix

    def _final_features(self, x: torch.Tensor, B: int, complete: bool) -> torch.Tensor:
        if not complete:
            return x
        x = self.norm(x)
        return self._temporal(x, B) if self.attention_type == "factorised_encoder" else x

    # ----------------------------------------------------------------- weight import
    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Fit a checkpoint to this model. An *image* ViT checkpoint (timm keys, a 2-D
        `patch_embed.proj`) initialises the video model as in ViViT section 3.4: the patch filter is
        inflated to a tubelet ('average' or 'central', `config.inflation`), the position embeddings
        are repeated over the n_t temporal indices (Model 2's spatial encoder uses them as they are),
        Model 3's temporal attention gets a zero output projection (each block then starts as the
        image block applied per frame) and Model 2's temporal encoder keeps its fresh
        initialisation. On a static clip (one frame repeated) Model 3, and Model 1 without [CLS],
        then compute exactly the image model (Model 1 with [CLS] approximately: its one [CLS] key
        faces n_t copies of every patch key). A head of another size is left freshly initialised."""
        from ..convert.timm import fit_heads

        state = dict(state)
        expected = self.state_dict()
        w = state.get("patch_embed.proj.weight")
        if w is not None and w.ndim == 4:
            state = self._inflate_image_state(state, expected, source)
        fit_heads(self, state, expected, source)
        return state

    def _inflate_image_state(self, state, expected, source):
        t = self.patch_embed.kernel_size[0]
        state["patch_embed.proj.weight"] = inflate_patch_weight(
            state["patch_embed.proj.weight"], t, self.config.inflation
        )
        P = self.num_prefix_tokens
        nt = self.patch_embed.grid_size[0]
        pos = state.get("pos_embed")
        if pos is not None and self.attention_type != "factorised_encoder" and pos.shape[1] != self.pos_embed.shape[1]:
            prefix, grid = pos[:, :P], pos[:, P:]
            if grid.shape[1] * nt + P == self.pos_embed.shape[1]:
                state["pos_embed"] = torch.cat([prefix, grid.repeat(1, nt, 1)], dim=1)  # (t, s) order
        added = []
        if self.attention_type == "factorised_self_attention":
            # Zero the temporal attention's output projection: each block then starts as the image
            # block applied frame by frame (the temporal residual adds nothing at first).
            for key, value in expected.items():
                if ".temporal_" in key and key not in state:
                    init = torch.zeros_like(value) if ".temporal_attn.proj." in key else value.clone()
                    state[key] = init
                    added.append(key)
        if self.attention_type == "factorised_encoder":
            for key, value in expected.items():
                if key.startswith("temporal_") and key not in state:
                    state[key] = value.clone()
                    added.append(key)
        pos_note = (
            "the spatial encoder takes the position embeddings as they are"
            if self.attention_type == "factorised_encoder"
            else f"position embeddings repeated over {nt} temporal indices"
        )
        logger.info(
            "%s: an image ViT checkpoint: tubelet filter inflated over %d frame(s) (%s), %s%s",
            source,
            t,
            self.config.inflation,
            pos_note,
            f"; {len(added)} temporal parameter(s) freshly initialised" if added else "",
        )
        return state


# --------------------------------------------------------------------------------------------
# Named configurations: the paper's B and L (table 1 of ViT, tubelet 16x16 spatially, 2 frames,
# 32-frame clips at 224, as the released Kinetics checkpoints) and micro models for 28x28 clips
# of 8 frames (moving digits) that train on a CPU.
VIVIT_SIZES: dict[str, dict[str, Any]] = {
    "micro": dict(embed_dim=64, depth=4, temporal_depth=2, num_heads=4, mlp_ratio=2.0),
    "base": dict(embed_dim=768, depth=12, temporal_depth=4, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, temporal_depth=4, num_heads=16),
}
_SUFFIX = {
    "spatio_temporal": "",
    "factorised_encoder": "_fe",
    "factorised_self_attention": "_fsa",
    "factorised_dot_product": "_fdp",
}


def _register_all() -> None:
    kinetics = dict(mean=KINETICS_MEAN, std=KINETICS_STD, crop_pct=224 / 256, interpolation="bilinear")
    for size in ("base", "large"):
        for attention, suffix in _SUFFIX.items():
            register_model(
                f"vivit_{size}{suffix}_16x2_224", "vivit", dict(VIVIT_SIZES[size], attention_type=attention), **kinetics
            )
    digits = dict(mean=MNIST_MEAN, std=MNIST_STD, crop_pct=1.0)
    for attention, suffix in _SUFFIX.items():
        register_model(
            f"vivit_micro{suffix}_4x2_28",
            "vivit",
            dict(
                VIVIT_SIZES["micro"],
                attention_type=attention,
                img_size=28,
                num_frames=8,
                tubelet_size=(2, 4, 4),
                in_chans=1,
                num_classes=4,
            ),
            **digits,
        )


_register_all()
