"""Dynamic Vision Transformer (DVT): a cascade of transformers with increasing token counts and
early exit.

Paper
    Wang, Huang, Song, Yang, Huang, "Not All Images are Worth 16x16 Words: Dynamic Transformers for
    Efficient Image Recognition", NeurIPS 2021 (arXiv:2105.15075).
Reference code
    blackfeather-wang/Dynamic-Vision-Transformer (T2T-ViT and DeiT backbones, 7x7 / 10x10 / 14x14
    tokens at 224 pixels; the budgeted evaluation is MSDNet's `dynamic_evaluate`).

The model (section 3)
    - Stage k is a complete ViT (patch embedding, [CLS], position embeddings, pre-LN blocks, final LN,
      linear head) on its own tokenisation of the same image: a coarser grid, by a larger patch or a
      smaller resized input. After each stage the prediction is accepted when its maximum softmax
      probability reaches that stage's threshold (sec. 3.1, eq. 1); at batch inference only the
      images that did not exit run the next stage, so the saving is real compute.
    - Feature reuse (sec. 3.2, eq. 3-4): the final tokens of the upstream stage go through
      f = LN -> MLP (to a small width r), are reshaped to the upstream grid and upsampled to the
      downstream grid; in downstream layer l a per-layer linear map h_l of them is concatenated to
      the input of the MLP: z = z' + MLP([LN(z'), h_l(E_up)]). The [CLS] token reuses the upstream
      [CLS]. (h_l is applied before upsampling: a linear map and bilinear interpolation, whose
      weights sum to 1, commute, so the result is the same at a fraction of the cost.)
    - Relationship reuse (sec. 3.2, eq. 5-6): the attention logits of all upstream layers and heads,
      concatenated (L_up * H_up channels), go through a small MLP r to L * H channels (at the upstream
      resolution, where it is cheap), are resized to the downstream token grid (nearest neighbour on
      the query and the key grid, [CLS] to [CLS]) and added to the downstream logits before the softmax.
    - Training: every exit's cross-entropy, summed (sec. 3.3). `vitkit train` does this for any model
      that returns a list of logits in training mode.
    - Budgeted inference (sec. 4, "budgeted batch classification"): the thresholds are set on held-out
      training data so that the average cost meets a target, with exit proportions p_k proportional to
      q^k (MSDNet's procedure, which the DVT code uses): `calibrate_thresholds`, `vitkit calibrate`.
      The thresholds and each exit's measured GMACs are stored in the model config (config.json).

Grids for 28x28 images: 28 = 4 * 7 = 7 * 4 = 14 * 2, so patches 7, 4 and 2 give 4x4, 7x7 and 14x14
tokens (16, 49, 196). 10x10 (the paper's middle grid) does not divide 28; 7x7 keeps the paper's
first and last grids' ratio to the middle one close (16 : 49 : 196 tokens vs 49 : 100 : 196) and
makes every stage a plain vitkit ViT patch size (vit_micro_patch7_28 / patch4 / patch2).

Deviations
    - The paper's backbone is T2T-ViT (or DeiT); the stages here are the vitkit ViT (DeiT for the
      224-pixel names, which resize the input to 112 / 160 / 224 as the DVT-DeiT code does).
    - Eval-mode `forward` returns one logits tensor: the early-exit prediction of each image when the
      model has thresholds, the last exit's otherwise. Training mode returns the list of all exits.

Shapes: images (B, C, H, W) -> stage k tokens (B, 1 + N_k, D) -> exit logits (B, K) per stage.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import Attention, DropPath, Linear, Mlp, PatchEmbed, drop_path_rates, to_2tuple
from ..layers.attention import record_attention, split_heads, use_fused_attention
from ..registry import MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family

NEVER = 2.0  # a threshold no softmax probability reaches: the stage never exits early


@dataclass
class DVTConfig:
    img_size: int | tuple[int, int] = 28
    patch_sizes: tuple[int, ...] = (7, 4, 2)  # one per stage: 4x4, 7x7, 14x14 tokens at 28x28
    stage_img_sizes: tuple[int, ...] | None = None  # resize the input per stage (DVT-DeiT); None = img_size
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act: str = "gelu"
    feature_reuse: bool = True
    feature_reuse_dim: int = 16  # width r of the reused upstream features (after f = LN -> MLP)
    relation_reuse: bool = True
    relation_reuse_hidden: int = 16  # hidden width of the MLP over upstream (layer, head) logit channels
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # Set by calibration (`calibrate_thresholds`, `vitkit calibrate`), stored in config.json:
    exit_thresholds: tuple[float, ...] | None = None  # one per exit but the last; None = always the last exit
    exit_gmacs: tuple[float, ...] | None = None  # cumulative GMACs per image of leaving at each exit
    calibration: dict[str, Any] | None = None  # how the thresholds were chosen (budget, held-out accuracy)

    def __post_init__(self) -> None:
        for name in ("patch_sizes", "stage_img_sizes", "exit_thresholds", "exit_gmacs"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        n = len(self.patch_sizes)
        if n < 2:
            raise ValueError(f"a DVT cascade needs at least 2 stages, got patch_sizes={self.patch_sizes}")
        if self.stage_img_sizes is not None and len(self.stage_img_sizes) != n:
            raise ValueError(f"stage_img_sizes {self.stage_img_sizes} must give one size per stage ({n} patch sizes)")
        if self.exit_thresholds is not None and len(self.exit_thresholds) != n - 1:
            raise ValueError(
                f"exit_thresholds must give one threshold per exit but the last ({n - 1}), got {self.exit_thresholds}"
            )
        if self.exit_gmacs is not None and len(self.exit_gmacs) != n:
            raise ValueError(f"exit_gmacs must give one value per exit ({n}), got {self.exit_gmacs}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


# --------------------------------------------------------------------------------------------- layers
class LogitAttention(Attention):
    """Multi-head self-attention that can also return its logits q k^T / sqrt(d) + bias (B, H, N, N),
    the quantity relationship reuse passes downstream. Same parameters (timm keys) as `Attention`."""

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | RelationBias | None = None, return_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`attn_bias`: a dense (B, H, N, N) tensor, or a `RelationBias` (the reused upstream maps, resized
        to this grid as they are added). Paths, fastest first, where they apply:
        - no logits to return, no gradient, a `RelationBias` with an integer grid ratio (7x7 -> 14x14):
          SDPA per query group (`RelationBias.attend`), without building the resized map;
        - no logits to return and no `RelationBias` with a gradient: the shared `Attention` (SDPA, the
          bias as its float mask);
        - otherwise (logits to return; a `RelationBias` while gradients are recorded, where SDPA with a
          mask that needs a gradient runs its slow unfused path on a CPU): the explicit softmax path,
          which adds a `RelationBias` in place without building the resized map."""
        relation = isinstance(attn_bias, RelationBias)
        grouped = relation and attn_bias.factor() is not None and not torch.is_grad_enabled()
        if not return_logits and not grouped and not (relation and torch.is_grad_enabled()):
            return super().forward(x, attn_bias=attn_bias.dense() if relation else attn_bias), None
        B, N, D = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        if grouped and not return_logits and use_fused_attention(q):  # not under attention_recorder (eager)
            x = attn_bias.attend(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
            return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D))), None
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        if relation:
            logits = attn_bias.add_to(logits)
        elif attn_bias is not None:
            logits = logits + attn_bias
        weights = logits.softmax(dim=-1)
        record_attention(self, weights)
        x = self.attn_drop(weights) @ v
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))
        return x, (logits if return_logits else None)  # do not keep the (B, H, N, N) map alive for nothing


class DVTBlock(nn.Module):
    """Pre-LN transformer block whose MLP also reads reused upstream features (eq. 4):
    z' = z + MSA(LN(z); logit bias);  z = z' + MLP([LN(z'), reuse])"""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        reuse_dim: int,
        proj_drop: float,
        attn_drop: float,
        drop_path: float,
        norm_eps: float,
        act: str,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = LogitAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim + reuse_dim, int(dim * mlp_ratio), out_features=dim, act=act, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        reuse: torch.Tensor | None = None,
        attn_bias: torch.Tensor | RelationBias | None = None,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, logits = self.attn(self.norm1(x), attn_bias, return_logits)
        x = x + self.drop_path1(y)
        h = self.norm2(x)
        if reuse is not None:
            h = torch.cat([h, reuse], dim=-1)
        return x + self.drop_path2(self.mlp(h)), logits


def resize_tokens(x: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """(B, 1 + h*w, C) -> (B, 1 + H*W, C): the [CLS] token kept, the grid resized bilinearly."""
    B, _, C = x.shape
    grid = x[:, 1:].transpose(1, 2).reshape(B, C, *src)
    grid = F.interpolate(grid, size=dst, mode="bilinear", align_corners=False)
    return torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


def nearest_token_index(src: tuple[int, int], dst: tuple[int, int], device=None) -> torch.Tensor:
    """For each token of the `dst` grid (with [CLS] first) the index of its nearest-neighbour token of
    the `src` grid (F.interpolate's 'nearest' rule: src = floor(dst * src_size / dst_size))."""
    rows = torch.div(torch.arange(dst[0], device=device) * src[0], dst[0], rounding_mode="floor")
    cols = torch.div(torch.arange(dst[1], device=device) * src[1], dst[1], rounding_mode="floor")
    grid = (rows[:, None] * src[1] + cols[None, :]).flatten()
    return torch.cat([torch.zeros(1, dtype=grid.dtype, device=device), grid + 1])


def resize_attention(a: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Attention maps (B, C, 1 + n, 1 + n) on grid `src` -> (B, C, 1 + N, 1 + N) on grid `dst`.

    Nearest-neighbour along both the query and the key grid ([CLS] maps to [CLS]): a gather, so the
    map, which is as large as all downstream attention maps together, is written once (bilinear
    resizing of this 4-D map costs several times the downstream attention itself on a CPU). For the
    2x step 7x7 -> 14x14 this is exact replication."""
    if src == dst:
        return a
    idx = nearest_token_index(src, dst, a.device)
    return a.index_select(3, idx).index_select(2, idx)  # keys on the small map, then whole rows


class _AddReplicatedRows(torch.autograd.Function):
    """logits (B, C, 1 + N, M) += rows (B, C, 1 + n, M) resized along the query axis by integer factors
    (nearest neighbour = replication of each source cell's row over its fh x fw block of query tokens;
    [CLS] to [CLS]), in place and without materialising the resized rows. The gradient of `rows` is the
    sum over each block. The innermost (key) axis stays contiguous in both directions."""

    @staticmethod
    def forward(ctx, logits, rows, src, f):  # noqa: ANN001, ANN205
        (h, w), (fh, fw) = src, f
        B, C, _, M = logits.shape
        ctx.cell, ctx.rows_shape = (h, fh, w, fw), rows.shape
        logits[:, :, 0].add_(rows[:, :, 0])
        logits[:, :, 1:].view(B, C, h, fh, w, fw, M).add_(rows[:, :, 1:].reshape(B, C, h, 1, w, 1, M))
        ctx.mark_dirty(logits)
        return logits

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        B, C, _, M = grad.shape
        g_rows = grad.new_empty(ctx.rows_shape)
        g_rows[:, :, 0] = grad[:, :, 0]
        blocks = grad[:, :, 1:].reshape(B, C, *ctx.cell, M)  # (B, C, h, fh, w, fw, M)
        g_grid = g_rows[:, :, 1:].view(B, C, ctx.cell[0], ctx.cell[2], M)
        g_grid.copy_(blocks[:, :, :, 0, :, 0])
        for a in range(ctx.cell[1]):  # a loop of strided adds: several times faster than .sum(dim=(3, 5)) on a CPU
            for b in range(ctx.cell[3]):
                if a or b:
                    g_grid.add_(blocks[:, :, :, a, :, b])
        return grad, g_rows, None, None


def replicate_grid(x: torch.Tensor, src: tuple[int, int], f: tuple[int, int], dim: int) -> torch.Tensor:
    """Axis `dim` of `x` holds [CLS] then a (h, w) token grid (row-major): resize it to [CLS] then the
    (h * fh, w * fw) grid by nearest neighbour, which for an integer factor f is replication of each cell
    over its fh x fw block. One preallocated output, written by a broadcast copy (faster than a gather on
    a CPU)."""
    (h, w), (fh, fw) = src, f
    dim = dim % x.dim()
    pre, post = x.shape[:dim], x.shape[dim + 1 :]
    out = x.new_empty(*pre, 1 + h * fh * w * fw, *post)
    out.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    out.narrow(dim, 1, h * fh * w * fw).view(*pre, h, fh, w, fw, *post).copy_(
        x.narrow(dim, 1, h * w).reshape(*pre, h, 1, w, 1, *post)
    )
    return out


@functools.lru_cache(maxsize=64)
def query_groups(
    src: tuple[int, int], f: tuple[int, int], device: torch.device
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The downstream tokens ([CLS] first, grid (h * fh, w * fw) row-major) split into the fh * fw groups
    that share one source row under nearest-neighbour replication: group (a, b) holds the tokens
    (i * fh + a, j * fw + b) for the source cells (i, j) in row-major order, and group (0, 0) also [CLS]
    first. Returns (the groups' token indices, the inverse permutation of their concatenation). Built as
    normal tensors even when first called under `torch.inference_mode()`, so that the cached indices can
    also serve a later call that records gradients."""
    (h, w), (fh, fw) = src, f
    with torch.inference_mode(False):
        i, j = torch.arange(h)[:, None], torch.arange(w)[None, :]
        groups = [(1 + (i * fh + a) * (w * fw) + (j * fw + b)).flatten() for a in range(fh) for b in range(fw)]
        groups[0] = torch.cat([torch.zeros(1, dtype=torch.long), groups[0]])
        inverse = torch.argsort(torch.cat(groups))
        return tuple(g.to(device) for g in groups), inverse.to(device)


@dataclass
class RelationBias:
    """The logit bias relationship reuse hands one downstream layer: the reused maps (B, H, 1 + n, 1 + n)
    at the upstream resolution, resized to the downstream grid as they are added to the logits.

    `dense()` is `resize_attention(maps, src, dst)`. When the downstream grid is an integer multiple of
    the upstream one (7x7 -> 14x14: nearest neighbour is exact replication) two paths avoid building the
    resized map, which is as large as the downstream attention map itself:
    - `add_to(logits)` (the explicit softmax path, training) resizes only the key axis (a (B, H, 1 + n,
      1 + N) map) and adds its rows in place, replicated along the query axis; the backward is a block
      sum instead of a scatter into the resized map;
    - `attend(q, k, v)` (SDPA, inference) runs one SDPA call per group of queries that share a source
      row (`query_groups`), each with the key-resized rows as its mask, unreplicated.
    Other ratios (4x4 -> 7x7) use the gathered dense map. The results are the same (tests check values,
    and gradients, against `dense()`)."""

    maps: torch.Tensor
    src: tuple[int, int]
    dst: tuple[int, int]

    @property
    def shape(self) -> torch.Size:
        n = 1 + self.dst[0] * self.dst[1]
        return torch.Size((*self.maps.shape[:2], n, n))

    def factor(self) -> tuple[int, int] | None:
        """The integer (fh, fw) with dst = f * src, or None (src == dst, or not an integer multiple)."""
        (h, w), (H, W) = self.src, self.dst
        return None if self.src == self.dst or H % h or W % w else (H // h, W // w)

    def key_rows(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The maps with the key axis resized, (B, H, 1 + n, 1 + N), for an integer factor."""
        return replicate_grid(self.maps if dtype is None else self.maps.to(dtype), self.src, self.factor(), dim=-1)

    def dense(self) -> torch.Tensor:
        """The resized maps (B, H, 1 + N, 1 + N) = resize_attention(maps, src, dst). For an integer factor
        both axes are replicated by broadcast copies (`replicate_grid`; several times faster than two
        gathers on a CPU; same values)."""
        f = self.factor()
        if f is None:
            return resize_attention(self.maps, self.src, self.dst)
        return replicate_grid(self.key_rows(), self.src, f, dim=2)

    def add_to(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, H, 1 + N, 1 + N) + the resized maps. Takes ownership of `logits` (it may be
        modified in place): pass a tensor nothing else reads, such as a fresh q k^T."""
        f = self.factor()
        if f is None:
            return logits + self.dense()
        return _AddReplicatedRows.apply(logits, self.key_rows(logits.dtype), self.src, f)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + dense()) v for (B, H, 1 + N, d) queries, keys and values on the
        downstream grid (integer factor only), without building the resized map: one SDPA call per
        `query_groups` group, whose queries share their source rows, so each call's mask is the
        key-resized map (`key_rows()`) itself, unreplicated ([CLS] row only for the group that holds
        [CLS]). The outputs are put back in token order; values equal SDPA with `dense()` (rows are
        computed independently). Returns (B, H, 1 + N, d)."""
        f = self.factor()
        if f is None:
            raise ValueError(f"attend() needs an integer grid ratio, got {self.src} -> {self.dst}; use dense()")
        rows = self.key_rows(q.dtype)
        groups, inverse = query_groups(self.src, f, q.device)
        outs = [
            F.scaled_dot_product_attention(
                q.index_select(2, g), k, v, dropout_p=dropout_p, attn_mask=rows if n == 0 else rows[:, :, 1:]
            )
            for n, g in enumerate(groups)
        ]
        return torch.cat(outs, dim=2).index_select(2, inverse)


@dataclass
class Upstream:
    """What a stage hands to the next: its final tokens (before the final LN) and, for relationship
    reuse, the attention logits of all its layers (B, L * H, 1 + n, 1 + n)."""

    tokens: torch.Tensor
    logits: torch.Tensor | None
    grid: tuple[int, int]

    def select(self, keep: torch.Tensor) -> Upstream:
        return Upstream(self.tokens[keep], None if self.logits is None else self.logits[keep], self.grid)


class DVTStage(nn.Module):
    """One transformer of the cascade: a ViT on its own token grid, plus the modules that read the
    upstream stage (`feature_reuse`, `feature_reuse_proj`, `relation_reuse`) when there is one."""

    def __init__(self, c: DVTConfig, index: int, img_size: tuple[int, int], upstream_layers: int | None) -> None:
        super().__init__()
        D = c.embed_dim
        self.img_size = img_size
        self.depth, self.num_heads = c.depth, c.num_heads
        self.patch_embed = PatchEmbed(img_size, c.patch_sizes[index], c.in_chans, D)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, D))
        has_up = upstream_layers is not None
        self.reuse_dim = c.feature_reuse_dim if (has_up and c.feature_reuse) else 0
        if self.reuse_dim:
            # f (LN -> MLP to width r), then h_l of every layer l at once: Linear(r, L * r)
            self.feature_reuse = nn.Sequential(
                nn.LayerNorm(D, eps=c.norm_eps), Mlp(D, int(D * c.mlp_ratio), out_features=self.reuse_dim, act=c.act)
            )
            self.feature_reuse_proj = Linear(self.reuse_dim, c.depth * self.reuse_dim)
        self.relation_reuse = (
            Mlp(upstream_layers, c.relation_reuse_hidden, out_features=c.depth * c.num_heads, act=c.act)
            if has_up and c.relation_reuse
            else None
        )
        dpr = drop_path_rates(c.drop_path_rate, c.depth)
        self.blocks = nn.ModuleList(
            [
                DVTBlock(
                    D,
                    c.num_heads,
                    c.mlp_ratio,
                    c.qkv_bias,
                    self.reuse_dim,
                    c.proj_drop_rate,
                    c.attn_drop_rate,
                    dpr[i],
                    c.norm_eps,
                    c.act,
                )
                for i in range(c.depth)
            ]
        )
        self.norm = nn.LayerNorm(D, eps=c.norm_eps)
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(D, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False

    def reused(self, up: Upstream | None) -> tuple[list[torch.Tensor | None], list[RelationBias | None]]:
        """Per-layer reused features (B, 1 + N, r) and logit biases (a `RelationBias` each: the maps at the
        upstream resolution, (B, H, 1 + N, 1 + N) once resized; `.dense()` materialises them)."""
        feats: list[torch.Tensor | None] = [None] * self.depth
        biases: list[RelationBias | None] = [None] * self.depth
        if up is None:
            return feats, biases
        if self.reuse_dim:
            e = self.feature_reuse_proj(self.feature_reuse(up.tokens))  # (B, 1 + n, L * r)
            feats = list(resize_tokens(e, up.grid, self.grid_size).chunk(self.depth, dim=-1))
        if self.relation_reuse is not None:
            r = self.relation_reuse(up.logits.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, L * H, 1+n, 1+n)
            biases = [RelationBias(m, up.grid, self.grid_size) for m in r.chunk(self.depth, dim=1)]
        return feats, biases

    def forward(self, x: torch.Tensor, up: Upstream | None, return_logits: bool) -> tuple[torch.Tensor, Upstream]:
        """Images -> (exit logits (B, K), what the next stage reuses)."""
        tokens, up = self.forward_features(x, up, return_logits)
        return self.forward_head(tokens), up

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normalised tokens (B, 1 + N, D) -> exit logits (B, K) from [CLS] (or its features)."""
        x = self.head_drop(tokens[:, 0])
        return x if pre_logits else self.head(x)

    def forward_features(
        self, x: torch.Tensor, up: Upstream | None, return_logits: bool
    ) -> tuple[torch.Tensor, Upstream]:
        """Images -> (normalised tokens (B, 1 + N, D), what the next stage reuses)."""
        if tuple(x.shape[-2:]) != self.img_size:
            x = F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False, antialias=True)
        z = self.patch_embed(x)
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], dim=1) + self.pos_embed
        feats, biases = self.reused(up)
        all_logits = []
        for block, feat, bias in zip(self.blocks, feats, biases):
            if self.grad_checkpointing and torch.is_grad_enabled():
                z, logits = checkpoint(block, z, feat, bias, return_logits, use_reentrant=False)
            else:
                z, logits = block(z, feat, bias, return_logits)
            all_logits.append(logits)
        return self.norm(z), Upstream(z, torch.cat(all_logits, dim=1) if return_logits else None, self.grid_size)


# --------------------------------------------------------------------------------------------- model
@register_family
class DynamicVisionTransformer(Backbone):
    family = "dvt"
    config_class = DVTConfig
    global_pools = ("token",)  # every exit classifies from its [CLS]
    # stem = every stage's embeddings; block i of every stage shares layer id i
    group_stem = r"^stages\.\d+\.(cls_token|pos_embed|patch_embed)"
    group_blocks = [(r"^stages\.\d+\.blocks\.(\d+)", None), (r"^stages\.\d+\.norm", (99999,))]
    group_blocks_coarse = r"^stages\.\d+\.blocks\.(\d+)"

    def __init__(self, config: DVTConfig) -> None:
        super().__init__(config)
        c = config
        self.img_size = to_2tuple(c.img_size)
        sizes = [to_2tuple(s) for s in c.stage_img_sizes] if c.stage_img_sizes else [self.img_size] * len(c.patch_sizes)
        self.num_exits = len(c.patch_sizes)
        self.num_classes = c.num_classes
        self.global_pool = "token"
        self.num_prefix_tokens = 1  # each stage's [CLS]
        self.embed_dim = self.num_features = c.embed_dim
        upstream_layers = c.depth * c.num_heads
        self.stages = nn.ModuleList(
            [DVTStage(c, i, sizes[i], upstream_layers if i > 0 else None) for i in range(self.num_exits)]
        )
        self.init_weights()

    # ----------------------------------------------------------------- initialisation and interface
    def init_weights(self) -> None:
        """As the vitkit ViT: trunc-normal(0.02) linears and position embeddings, tiny [CLS]; the
        exit heads are zero-initialised (ViT paper sec. 3.1)."""
        for stage in self.stages:
            nn.init.trunc_normal_(stage.pos_embed, std=0.02)
            nn.init.normal_(stage.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            self.init_classifier(stage.head)

    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """DVT checkpoints are vitkit's own (no released weights use these keys): an identity map; the
        loader lists any key that does not fit."""
        return dict(state)

    def no_weight_decay(self) -> set[str]:
        return {f"stages.{i}.{n}" for i in range(self.num_exits) for n in ("pos_embed", "cls_token")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block of every stage (each stage runs its own blocks)."""
        self.grad_checkpointing = bool(enable)
        for stage in self.stages:
            stage.grad_checkpointing = bool(enable)

    def get_classifier(self) -> nn.Module:
        """The last exit's head (the one `forward_head` uses)."""
        return self.stages[-1].head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Fresh zero-initialised heads for every exit (0 = no heads); the pooling is always [CLS]."""
        if global_pool is not None:
            self.check_global_pool(global_pool)
        self.num_classes = self.config.num_classes = num_classes
        for stage in self.stages:
            stage.head = self.new_head(self.embed_dim, num_classes)
            self.init_classifier(stage.head)

    @property
    def exit_thresholds(self) -> tuple[float, ...] | None:
        return self.config.exit_thresholds

    def set_exit_thresholds(self, thresholds: list[float] | tuple[float, ...] | None) -> None:
        """Thresholds on the max softmax probability, one per exit but the last (None: no early exit)."""
        if thresholds is not None:
            thresholds = tuple(float(t) for t in thresholds)
            if len(thresholds) != self.num_exits - 1:
                raise ValueError(
                    f"a {self.num_exits}-exit DVT takes {self.num_exits - 1} thresholds, "
                    f"got {len(thresholds)}: {thresholds}"
                )
        self.config.exit_thresholds = thresholds

    # ----------------------------------------------------------------- forward
    def _needs_logits(self, k: int, last: int) -> bool:
        """Stage k must return its attention logits when a stage after it (up to `last`) reuses them."""
        return k < last and self.stages[k + 1].relation_reuse is not None

    def forward_exits(self, x: torch.Tensor, num_exits: int | None = None) -> list[torch.Tensor]:
        """Run the first `num_exits` stages (default: all) on every image; the logits of each exit."""
        last = (num_exits or self.num_exits) - 1
        if not 0 <= last < self.num_exits:
            raise ValueError(f"num_exits must be in 1..{self.num_exits}, got {num_exits}")
        outs, up = [], None
        for k in range(last + 1):
            logits, up = self.stages[k](x, up, self._needs_logits(k, last))
            outs.append(logits)
        return outs

    def forward_dynamic(
        self, x: torch.Tensor, thresholds: list[float] | tuple[float, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-exit inference (eq. 1): (logits (B, K), exit index (B,)).

        An image leaves at the first exit k whose max softmax probability is >= thresholds[k]; only
        the images still in the cascade run the next stage. `thresholds` defaults to the model's
        (config.exit_thresholds); with none, every image takes the last exit."""
        thresholds = self.config.exit_thresholds if thresholds is None else tuple(thresholds)
        if thresholds is None:
            thresholds = (NEVER,) * (self.num_exits - 1)
        if len(thresholds) != self.num_exits - 1:
            raise ValueError(f"a {self.num_exits}-exit DVT takes {self.num_exits - 1} thresholds, got {thresholds}")
        B = x.shape[0]
        exits = torch.full((B,), self.num_exits - 1, dtype=torch.long, device=x.device)
        running = torch.arange(B, device=x.device)  # indices (into the batch) of the images still in
        out, up = None, None
        last = self.num_exits - 1
        for k, stage in enumerate(self.stages):
            logits, up = stage(x, up, self._needs_logits(k, last))
            if out is None:
                out = logits.new_zeros(B, logits.shape[-1])
            if k == last:
                out[running] = logits
                break
            done = logits.softmax(-1).amax(-1) >= thresholds[k]
            out[running[done]] = logits[done]
            exits[running[done]] = k
            keep = ~done
            if not keep.any():
                break
            running, x, up = running[keep], x[keep], up.select(keep)
        return out, exits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the last stage's normalised tokens (B, 1 + N, D) (every stage runs, no early exit)."""
        up, last = None, self.num_exits - 1
        for k in range(last):
            _, up = self.stages[k].forward_features(x, up, self._needs_logits(k, last))
        return self.stages[last].forward_features(x, up, False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The last exit's head on tokens from `forward_features`: logits (B, K) or [CLS] features (B, D)."""
        return self.stages[-1].forward_head(x, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Training: the list of all exits' logits (their losses are summed). Eval: (B, K) logits,
        early exit with the model's thresholds, or the last exit when it has none (or no classifier)."""
        if self.training:
            return self.forward_exits(x)
        if self.config.exit_thresholds is None or self.num_classes == 0:
            return self.forward_exits(x)[-1]
        return self.forward_dynamic(x)[0]

    # ----------------------------------------------------------------- cost
    def measure_exit_gmacs(self) -> tuple[float, ...]:
        """GMACs per image of leaving at each exit (cumulative over the stages run), counted with
        `vitkit.profile.gmacs` (matmuls and convolutions, eager attention)."""
        from ..profile import gmacs

        c = self.config
        size = (c.in_chans, *self.img_size)
        return tuple(
            gmacs(self, size, forward=lambda x, k=k: self.forward_exits(x, k + 1)) for k in range(self.num_exits)
        )

    def expected_gmacs(self, exits: torch.Tensor) -> float:
        """Mean GMACs per image of a set of exit indices (uses config.exit_gmacs, measuring if unset)."""
        costs = self.config.exit_gmacs or self.measure_exit_gmacs()
        return float(torch.tensor(costs, dtype=torch.float64)[exits.cpu()].mean()) if len(exits) else 0.0


# --------------------------------------------------------------------------------------------- budgeted inference
def exit_confidences(exit_logits: list[torch.Tensor]) -> torch.Tensor:
    """Per-exit logits [(N, K)] * S -> max softmax probabilities (S, N)."""
    return torch.stack([lg.float().softmax(-1).amax(-1) for lg in exit_logits])


def simulate_exits(
    exit_logits: list[torch.Tensor], thresholds: list[float] | tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exits and predictions `forward_dynamic` gives, from every exit's logits of the same images
    (each image's stages do not depend on the others, so this is exact): (exit index (N,), logits (N, K))."""
    conf = exit_confidences(exit_logits)
    S, N = conf.shape
    exits = torch.full((N,), S - 1, dtype=torch.long)
    for k in reversed(range(S - 1)):
        exits[conf[k] >= thresholds[k]] = k
    stacked = torch.stack([lg.float() for lg in exit_logits])  # (S, N, K)
    return exits, stacked[exits, torch.arange(N)]


def thresholds_for_proportions(conf: torch.Tensor, proportions: list[float]) -> list[float]:
    """MSDNet / DVT `dynamic_evaluate`: walk the exits in order; at exit k the floor(N * p_k) most
    confident images among those still in the cascade leave, and the threshold is the confidence of the
    last of them (NEVER when none leave)."""
    S, N = conf.shape
    remaining = torch.ones(N, dtype=torch.bool)
    thresholds = []
    for k in range(S - 1):
        n_out = math.floor(N * proportions[k])
        candidates = conf[k][remaining]
        if n_out <= 0 or len(candidates) == 0:
            t = NEVER
        else:
            t = float(candidates.sort(descending=True).values[min(n_out, len(candidates)) - 1])
        thresholds.append(t)
        remaining &= conf[k] < t
    return thresholds


def geometric_proportions(q: float, num_exits: int) -> list[float]:
    """Exit proportions p_k proportional to q^(k+1), k = 0..S-1 (MSDNet's budgeted setting)."""
    w = [q ** (k + 1) for k in range(num_exits)]
    return [v / sum(w) for v in w]


def calibrate_thresholds(
    exit_logits: list[torch.Tensor],
    labels: torch.Tensor,
    exit_gmacs: list[float] | tuple[float, ...],
    target_gmacs: float,
) -> dict[str, Any]:
    """Thresholds for an average cost of `target_gmacs` per image on held-out data.

    Solves for q (bisection in log q) so that the expected cost of the exit proportions p_k ~ q^k
    equals the target, then sets the thresholds from the held-out confidences
    (`thresholds_for_proportions`). Returns the thresholds with the realised held-out exit fractions,
    accuracy (%) and mean GMACs."""
    S = len(exit_logits)
    costs = list(exit_gmacs)
    if target_gmacs < costs[0] * (1 - 1e-6):  # (a tolerance for rounding in the caller's arithmetic)
        raise ValueError(
            f"target {target_gmacs:.5f} GMACs is below the cost of the first exit ({costs[0]:.5f}): "
            f"no thresholds can meet it"
        )
    target = min(target_gmacs, costs[-1])

    def expected(q: float) -> float:
        return sum(p * c for p, c in zip(geometric_proportions(q, S), costs))

    lo, hi = -30.0, 30.0  # log q: from (almost) all at the first exit to all at the last
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(math.exp(mid)) < target else (lo, mid)
    q = math.exp((lo + hi) / 2)
    conf = exit_confidences(exit_logits)
    thresholds = thresholds_for_proportions(conf, geometric_proportions(q, S))
    exits, logits = simulate_exits(exit_logits, thresholds)
    counts = torch.bincount(exits, minlength=S)
    return {
        "thresholds": thresholds,
        "q": q,
        "target_gmacs": target_gmacs,
        "heldout_gmacs": float(torch.tensor(costs, dtype=torch.float64)[exits].mean()),
        "heldout_acc": 100.0 * float((logits.argmax(-1) == labels).float().mean()),
        "heldout_exit_fractions": [round(float(c) / len(exits), 4) for c in counts],
        "heldout_images": len(exits),
    }


def split_batches(data, batch_size: int):
    """(images, labels) batches of a dataset split in order: `data.batch(indices)` where the split has it
    (vitkit's in-memory splits), else a `torch.utils.data.DataLoader` over any map-style dataset."""
    if hasattr(data, "batch"):
        for i in range(0, len(data), batch_size):
            yield data.batch(torch.arange(i, min(i + batch_size, len(data))))
    else:
        yield from torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=0)


@torch.no_grad()
def collect_exit_logits(
    model: DynamicVisionTransformer, data, norm: nn.Module, batch_size: int = 128, desc: str = "exits"
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every exit's logits on a dataset split (all stages on every image): ([(N, K)] * S, labels (N,))."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_exit: list[list[torch.Tensor]] = [[] for _ in range(model.num_exits)]
    labels = []
    for x, y in tqdm(
        split_batches(data, batch_size), total=math.ceil(len(data) / batch_size), desc=desc, leave=False, unit="batch"
    ):
        for k, lg in enumerate(model.forward_exits(norm(x.to(device)))):
            per_exit[k].append(lg.float().cpu())
        labels.append(y)
    model.train(was_training)
    return [torch.cat(p) for p in per_exit], torch.cat(labels)


@torch.no_grad()
def exit_statistics(model: DynamicVisionTransformer, data, norm: nn.Module, batch_size: int = 128) -> dict[str, Any]:
    """Early-exit evaluation with the model's thresholds: accuracy, exit counts, mean GMACs per image."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    exits, correct = [], 0
    for x, y in split_batches(data, batch_size):
        logits, e = model.forward_dynamic(norm(x.to(device)))
        correct += int((logits.argmax(-1).cpu() == y).sum())
        exits.append(e.cpu())
    model.train(was_training)
    all_exits = torch.cat(exits)
    costs = model.config.exit_gmacs or model.measure_exit_gmacs()
    counts = torch.bincount(all_exits, minlength=model.num_exits).tolist()
    return {
        "acc": 100.0 * correct / len(all_exits),
        "exit_counts": counts,
        "exit_fractions": [c / len(all_exits) for c in counts],
        "exit_gmacs": list(costs),
        "mean_gmacs": float(torch.tensor(costs, dtype=torch.float64)[all_exits].mean()),
        "thresholds": list(model.config.exit_thresholds) if model.config.exit_thresholds else None,
    }


# --------------------------------------------------------------------------------------------- names
def _register_all() -> None:
    mnist = dict(mean=MNIST_MEAN, std=MNIST_STD, crop_pct=1.0)
    micro = dict(img_size=28, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
    # 4x4, 7x7 and 14x14 tokens on 28x28 grayscale images (MNIST, Fashion-MNIST); each stage is the
    # vit_micro_patch{7,4,2}_28 backbone.
    register_model("dvt_micro_28", "dvt", dict(micro, patch_sizes=(7, 4, 2)), **mnist)
    # The paper's DVT-DeiT-S: 7x7, 10x10, 14x14 tokens by resizing the input to 112, 160, 224.
    register_model(
        "dvt_deit_small_patch16_224",
        "dvt",
        dict(
            img_size=224,
            in_chans=3,
            num_classes=1000,
            embed_dim=384,
            depth=12,
            num_heads=6,
            mlp_ratio=4.0,
            patch_sizes=(16, 16, 16),
            stage_img_sizes=(112, 160, 224),
            feature_reuse_dim=64,
            relation_reuse_hidden=64,
        ),
    )


_register_all()

__all__ = [
    "DVTConfig",
    "DynamicVisionTransformer",
    "calibrate_thresholds",
    "collect_exit_logits",
    "exit_statistics",
    "simulate_exits",
]
