"""What the ViT paper's figures 6-7 and the attention-map literature compute, as arrays.

attention_rollout        Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020
                         (arXiv:2005.00928), section 3: residual-aware rollout through the layers.
cls_attention_maps       the last layer's [CLS] attention per head, as DINO shows it (Caron et al.,
                         "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021, fig. 1).
mean_attention_distance  ViT paper (Dosovitskiy et al., ICLR 2021) figure 7 right / appendix D.7:
                         the pixel distance across which each head attends, weighted by attention.
pos_embed_similarity     figure 7 centre: cosine similarity between the position embeddings.
patch_embed_pca          figure 7 left: principal components of the patch projection filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .capture import AttentionRecord, WindowLayout

HEAD_FUSIONS = ("mean", "max", "min")


# ------------------------------------------------------------------------------------ rollout
def fuse_heads(weights: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return weights.mean(dim=1)
    if head_fusion == "max":
        return weights.amax(dim=1)
    if head_fusion == "min":
        return weights.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def attention_rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, eq. 1): R = A~_L ... A~_1 with
    A~_l = normalise_rows(0.5 A_l + 0.5 I), the identity standing for the residual connection.

    `attentions`: per-layer weights (B, heads, N, N), first layer first. Heads are fused first
    (`head_fusion`); `discard_ratio` then zeroes that fraction of each image's smallest fused weights
    (the diagonal is kept), as in J. Gildenblat's vit-explain, which sharpens the maps. Returns
    (B, N, N), rows summing to 1: row i is how much each input token flows into output token i.
    """
    if not attentions:
        raise ValueError("attention_rollout needs at least one layer's attention")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    N = attentions[0].shape[-1]
    for i, a in enumerate(attentions):
        if a.ndim != 4 or a.shape[-2:] != (N, N):
            raise ValueError(
                f"rollout needs every layer to attend among the same N tokens: layer {i} has weights "
                f"{tuple(a.shape)}, layer 0 {tuple(attentions[0].shape)} (hierarchical models such as Swin "
                "and CvT change the token count; use the per-layer maps or the attention distance instead)"
            )
    B = attentions[0].shape[0]
    eye = torch.eye(N, dtype=torch.float64)
    result = eye.expand(B, N, N).clone()
    for a in attentions:
        fused = fuse_heads(a.double(), head_fusion)
        if discard_ratio > 0:
            flat = fused.masked_fill(eye.bool(), float("inf")).flatten(1)  # the diagonal is never discarded
            k = int(flat.shape[1] * discard_ratio)
            if k:
                idx = flat.topk(k, dim=1, largest=False).indices
                fused = fused.flatten(1).scatter(1, idx, 0.0).view(B, N, N)
        a_res = 0.5 * fused + 0.5 * eye
        a_res = a_res / a_res.sum(dim=-1, keepdim=True)
        result = a_res @ result
    return result.float()


def token_map(rows: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N) weights over all tokens -> (B, h, w) over the patch grid (prefix tokens dropped).
    With no prefix token there is no [CLS] row: the caller passes the mean over query rows."""
    B = rows.shape[0]
    return rows[:, num_prefix_tokens:].reshape(B, *grid)


def rollout_map(rollout: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
    """The [CLS] row of a rollout as a (B, h, w) map; with no [CLS] token, the mean over patch rows."""
    rows = rollout[:, 0] if num_prefix_tokens else rollout.mean(dim=1)
    return token_map(rows, num_prefix_tokens, grid)


def cls_attention_maps(record: AttentionRecord) -> torch.Tensor:
    """DINO-style maps: the [CLS] query's attention over the patches, per head: (B, heads, h, w)."""
    if record.num_prefix_tokens == 0:
        raise ValueError(f"{record.name}: the model has no [CLS] token to take the attention of")
    if record.query_grid is None:
        raise ValueError(f"{record.name}: its tokens do not form an image grid")
    P = record.num_prefix_tokens
    B, heads = record.weights.shape[:2]
    return record.weights[:, :, 0, P:].reshape(B, heads, *record.key_grid)


def upsample(maps: torch.Tensor, image_size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(..., h, w) -> (..., H, W) by interpolation (nearest shows the token grid as it is)."""
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=image_size, mode=mode, **kwargs).reshape(*lead, *image_size)


# ------------------------------------------------------------------------------------ distance
def attention_distance(weights: torch.Tensor, query_xy: torch.Tensor, key_xy: torch.Tensor) -> torch.Tensor:
    """Expected distance sum_j a_ij ||x_i - x_j|| of each query (ViT paper appendix D.7).

    weights (..., N_q, N_k), rows summing to 1; query_xy (..., N_q, 2) and key_xy (..., N_k, 2)
    positions (broadcast against the weights' leading dims). Returns (..., N_q)."""
    dist = torch.cdist(query_xy.double(), key_xy.double())  # (..., N_q, N_k)
    return (weights.double() * dist).sum(dim=-1)


def mean_attention_distance(record: AttentionRecord) -> torch.Tensor:
    """Per head, the attention-weighted pixel distance between a patch and what it attends to,
    averaged over the images and the query patches: (heads,) float64.

    Prefix tokens ([CLS]) have no position: they are dropped as queries and as keys, and each
    query's weights over the patches are renormalised. Token positions are cell centres (a token
    grid of h x w cells covering the image). Windowed attention (Swin) is measured inside each
    window with the tokens' positions on the unshifted map; queries on padding are skipped."""
    q_xy, k_xy = record.token_centres()
    w = record.weights
    if record.window is not None:
        lay = record.window
        nW, N = q_xy.shape[:2]
        w = w.reshape(lay.batch, nW, record.num_heads, N, N)
        d = attention_distance(w, q_xy[:, None], k_xy[:, None])  # (B, nW, heads, N)
        pos = lay.token_positions()
        real = (pos[..., 0] < lay.size[0]) & (pos[..., 1] < lay.size[1])  # (nW, N)
        d = d.permute(2, 0, 1, 3)[:, :, real]  # (heads, B, real tokens)
        return d.mean(dim=(1, 2))
    P = record.num_prefix_tokens
    w = w[:, :, P:, P:]
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return attention_distance(w, q_xy, k_xy).mean(dim=(0, 2))


def uniform_attention_distance(record: AttentionRecord) -> float:
    """The mean attention distance the record's layer would have with uniform attention over the
    keys each query can reach: the reference for 'attends as widely as it can'. For shifted windows
    (SW-MSA) that excludes the tokens the cyclic shift wrapped in from the far side of the map, which
    Swin's mask hides."""
    if record.window is None:
        w = record.weights[:1]
        uniform = AttentionRecord(
            record.name,
            torch.ones_like(w) / w.shape[-1],
            record.image_size,
            record.num_prefix_tokens,
            record.query_grid,
            record.key_grid,
        )
        return float(mean_attention_distance(uniform).mean())
    lay = record.window
    pos = lay.token_positions()  # (nW, N, 2) on the unshifted map
    diff = (pos[:, :, None] - pos[:, None, :]).abs()
    allowed = ((diff[..., 0] < lay.window[0]) & (diff[..., 1] < lay.window[1])).double()  # (nW, N, N)
    w = (allowed / allowed.sum(-1, keepdim=True))[:, None]  # (nW, 1, N, N): one image, one head
    one = WindowLayout(1, lay.size, lay.padded, lay.window, lay.shift)
    return float(mean_attention_distance(AttentionRecord(record.name, w, record.image_size, window=one)).mean())


def mean_attention_distances(records: Sequence[AttentionRecord]) -> torch.Tensor:
    """(layers, max heads) mean attention distance in pixels, NaN where a layer has fewer heads."""
    per_layer = [mean_attention_distance(r) for r in records]
    out = torch.full((len(per_layer), max(len(d) for d in per_layer)), float("nan"), dtype=torch.float64)
    for i, d in enumerate(per_layer):
        out[i, : len(d)] = d
    return out


# ------------------------------------------------------------------------------------ embeddings
def _patch_grid(model: nn.Module) -> tuple[int, int]:
    """The (h, w) patch grid: the backbone interface's `grid_size`, or a timm model's `patch_embed.grid_size`."""
    grid = getattr(model, "grid_size", None) or getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise ValueError(f"{type(model).__name__} has no patch grid (grid_size) to lay the embeddings out on")
    return tuple(grid)


def pos_embed_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between the learned position embedding of each patch and every other
    (ViT paper fig. 7 centre): (h, w, h, w), entry [i, j] is the map of patch (i, j)."""
    pos = getattr(model, "pos_embed", None)
    if pos is None:
        raise ValueError(
            f"{type(model).__name__} has no learned absolute position embedding (`pos_embed`): "
            "Swin uses a relative position bias and CvT convolutions instead"
        )
    h, w = _patch_grid(model)
    P = int(getattr(model, "num_prefix_tokens", 0))
    emb = pos.detach()[0, P:].double()
    if emb.shape[0] != h * w:
        raise ValueError(f"pos_embed has {emb.shape[0]} patch entries, the patch grid {h}x{w} needs {h * w}")
    emb = F.normalize(emb, dim=-1)
    return (emb @ emb.T).reshape(h, w, h, w)


def similarity_by_distance(sim: torch.Tensor) -> dict[float, float]:
    """Mean cosine similarity of pairs of distinct patches, grouped by their grid distance
    (Euclidean, in patches): {1.0: ..., 1.41: ..., 2.0: ...}."""
    h, w = sim.shape[:2]
    yx = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2).double()
    dist = torch.cdist(yx, yx).round(decimals=2)
    flat = sim.reshape(h * w, h * w)
    return {float(d): float(flat[dist == d].mean()) for d in dist.unique().tolist() if d > 0}


def most_similar_is_neighbour(sim: torch.Tensor) -> float:
    """Fraction of patches whose most similar other position embedding is one of its 8 neighbours."""
    h, w = sim.shape[:2]
    flat = sim.reshape(h * w, h * w).clone()
    flat.fill_diagonal_(-float("inf"))
    best = flat.argmax(dim=1)
    dy = (best // w - torch.arange(h * w) // w).abs()
    dx = (best % w - torch.arange(h * w) % w).abs()
    return float(((dy <= 1) & (dx <= 1)).double().mean())


def patch_embed_weight(model: nn.Module) -> torch.Tensor:
    """The first patch projection filters (D, C, p, p) acting on the image (`...patch_embed.proj`)."""
    in_chans = getattr(getattr(model, "config", None), "in_chans", None)
    for name, m in model.named_modules():
        if name.endswith("patch_embed.proj") and isinstance(m, nn.Conv2d) and m.in_channels == in_chans:
            return m.weight.detach()
    raise ValueError(
        f"{type(model).__name__} has no convolutional patch projection on the image (`patch_embed.proj` "
        f"with {in_chans} input channels); a hybrid model embeds CNN features instead"
    )


@dataclass
class PatchPCA:
    """Principal components of the patch projection filters (ViT paper fig. 7 left)."""

    components: torch.Tensor  # (k, C, p, p), unit norm, largest variance first
    explained_variance_ratio: torch.Tensor  # (k,)
    mean: torch.Tensor  # (C, p, p): the mean filter
    coefficients: torch.Tensor  # (D, k): each filter's coordinates on the components

    def reconstruct(self) -> torch.Tensor:
        """(D, C, p, p) filters from the kept components (exact when all are kept)."""
        flat = self.coefficients @ self.components.flatten(1) + self.mean.flatten()
        return flat.view(-1, *self.mean.shape)


def patch_embed_pca(weight: torch.Tensor | nn.Module, num_components: int | None = None) -> PatchPCA:
    """PCA of the D filters (D, C, p, p) of the patch projection, each a C p p vector, centred on the
    mean filter; `weight` may also be a model (its `patch_embed_weight`). Returns all
    min(D, C p p) components unless `num_components`."""
    if isinstance(weight, nn.Module):
        weight = patch_embed_weight(weight)
    if weight.ndim != 4:
        raise ValueError(f"expected conv filters (D, C, p, p), got shape {tuple(weight.shape)}")
    D = weight.shape[0]
    flat = weight.detach().double().reshape(D, -1)
    mean = flat.mean(dim=0)
    _, S, Vh = torch.linalg.svd(flat - mean, full_matrices=False)
    var = S**2
    ratio = var / var.sum().clamp_min(1e-30)
    k = len(S) if num_components is None else min(num_components, len(S))
    comps = Vh[:k]
    return PatchPCA(
        components=comps.reshape(k, *weight.shape[1:]),
        explained_variance_ratio=ratio[:k],
        mean=mean.reshape(weight.shape[1:]),
        coefficients=(flat - mean) @ comps.T,
    )
