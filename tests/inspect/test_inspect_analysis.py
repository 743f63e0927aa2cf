"""Rollout, attention distance, position-embedding similarity and patch-filter PCA on hand-built
inputs whose answers are known in closed form."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import vitkit
from vitkit.inspect import (
    AttentionRecord,
    WindowLayout,
    attention_distance,
    attention_rollout,
    cls_attention_maps,
    get_attention,
    mean_attention_distance,
    most_similar_is_neighbour,
    patch_embed_pca,
    pos_embed_similarity,
    rollout_map,
    similarity_by_distance,
    uniform_attention_distance,
    upsample,
)


def softmax_attn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).softmax(-1)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_rollout_rows_sum_to_one(fusion, discard):
    layers = [softmax_attn(2, 3, 10, 10, seed=i) for i in range(4)]
    r = attention_rollout(layers, fusion, discard)
    assert r.shape == (2, 10, 10) and (r >= 0).all()
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 10))


def test_rollout_matches_the_equation():
    """R = A~_2 A~_1 with A~ = rownorm(0.5 mean_h(A) + 0.5 I), computed by hand."""
    a1, a2 = softmax_attn(1, 2, 5, 5, seed=1), softmax_attn(1, 2, 5, 5, seed=2)

    def tilde(a):
        t = 0.5 * a[0].double().mean(0) + 0.5 * torch.eye(5, dtype=torch.float64)
        return t / t.sum(-1, keepdim=True)

    torch.testing.assert_close(attention_rollout([a1, a2])[0].double(), tilde(a2) @ tilde(a1), atol=1e-6, rtol=0)
    # identity attention (each token on itself) rolls out to the identity
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout([eye, eye, eye])[0], torch.eye(5))


def test_rollout_discard_keeps_the_diagonal_and_errors():
    a = softmax_attn(1, 1, 6, 6, seed=3)
    r = attention_rollout([a], discard_ratio=0.9)
    assert (torch.diagonal(r[0]) > 0).all()
    with pytest.raises(ValueError, match="same N tokens"):
        attention_rollout([softmax_attn(1, 1, 6, 6), softmax_attn(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout([a], discard_ratio=1.0)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([a], head_fusion="median")


def grid_record(weights, grid, image, prefix=0):
    return AttentionRecord("hand", weights, image, prefix, grid, grid)


def test_attention_distance_self_is_zero():
    N = 16
    eye = torch.eye(N + 1).expand(2, 3, N + 1, N + 1)  # [CLS] + 4x4 patches, all mass on self
    assert mean_attention_distance(grid_record(eye, (4, 4), (16, 16), prefix=1)).abs().max() == 0
    # windowed: self-attention inside shifted, padded windows
    lay = WindowLayout(batch=2, size=(6, 6), padded=(8, 8), window=(4, 4), shift=(2, 2))
    rec = AttentionRecord("win", torch.eye(16).expand(2 * 4, 3, 16, 16), (12, 12), window=lay)
    assert mean_attention_distance(rec).abs().max() == 0


def test_attention_distance_uniform_matches_closed_form():
    """Uniform attention over a 1 x n row of p-pixel patches: E|x_i - x_j| = p (n^2 - 1) / (3 n)."""
    n, p = 9, 4
    uniform = torch.full((1, 2, n, n), 1.0 / n)
    d = mean_attention_distance(grid_record(uniform, (1, n), (p, n * p)))
    torch.testing.assert_close(d, torch.full((2,), p * (n * n - 1) / (3 * n), dtype=torch.float64))
    # 2-D: against a brute-force double sum over the 5 x 5 patch centres (7 px patches)
    h = w = 5
    centres = [((i + 0.5) * 7, (j + 0.5) * 7) for i in range(h) for j in range(w)]
    brute = sum(math.dist(a, b) for a, b in itertools.product(centres, centres)) / len(centres) ** 2
    uniform = torch.full((1, 1, 1 + h * w, 1 + h * w), 1.0 / (1 + h * w))  # [CLS]'s share is renormalised away
    assert mean_attention_distance(grid_record(uniform, (h, w), (35, 35), prefix=1)).item() == pytest.approx(brute)


def test_attention_distance_neighbour():
    # every query attends to the patch to its right (wrapping at the row end is avoided: 1 x 2 grid)
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(1, 1, 2, 2)
    xy = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    torch.testing.assert_close(attention_distance(w, xy, xy), torch.full((1, 1, 2), 3.0, dtype=torch.float64))


def test_cls_maps_and_rollout_map_shapes():
    model = vitkit.create_model("vit_micro_patch4_28").eval()
    _, recs = get_attention(model, torch.randn(3, 1, 28, 28))
    cls = cls_attention_maps(recs[-1])
    assert cls.shape == (3, 4, 7, 7)
    torch.testing.assert_close(cls.sum((-1, -2)) + recs[-1].weights[:, :, 0, 0], torch.ones(3, 4))
    roll = attention_rollout([r.weights for r in recs])
    m = rollout_map(roll, 1, (7, 7))
    assert m.shape == (3, 7, 7)
    assert upsample(m, (28, 28)).shape == (3, 28, 28)
    assert torch.equal(upsample(m, (28, 28), mode="nearest")[:, ::4, ::4], m)


def sincos_pos_embed(h, w, dim):
    """2-D sine-cosine embedding (MAE's): smooth in position, so neighbours are the most similar."""
    out = []
    for coord in torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij"):
        omega = 1.0 / 10.0 ** (torch.arange(dim // 4).float() / (dim // 4))
        t = coord.reshape(-1, 1) * omega
        out += [t.sin(), t.cos()]
    return torch.cat(out, dim=1)


def test_pos_embed_similarity():
    model = vitkit.create_model("vit_micro_patch4_28")
    with torch.no_grad():
        model.pos_embed[0, 1:] = sincos_pos_embed(7, 7, 64)
    sim = pos_embed_similarity(model)
    assert sim.shape == (7, 7, 7, 7)
    flat = sim.reshape(49, 49)
    torch.testing.assert_close(torch.diagonal(flat), torch.ones(49, dtype=torch.float64))
    torch.testing.assert_close(flat, flat.T)
    by_d = similarity_by_distance(sim)
    assert by_d[1.0] > by_d[2.0] > by_d[3.0]
    assert most_similar_is_neighbour(sim) == 1.0
    with pytest.raises(ValueError, match="relative position bias"):
        pos_embed_similarity(vitkit.create_model("swin_micro_patch2_window7_28"))


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "swin_micro_patch2_window7_28", "cvt_micro_28"])
def test_patch_pca_reconstructs_the_weights(name):
    model = vitkit.create_model(name)
    pca = patch_embed_pca(model)
    W = next(m.weight for n, m in model.named_modules() if n.endswith("patch_embed.proj"))
    torch.testing.assert_close(pca.reconstruct().float(), W.detach(), atol=1e-6, rtol=0)
    k = pca.components.shape[0]
    flat = pca.components.flatten(1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(k, dtype=torch.float64), atol=1e-9, rtol=0)
    ev = pca.explained_variance_ratio
    assert ev.sum().item() == pytest.approx(1.0) and (ev[:-1] >= ev[1:]).all()
    few = patch_embed_pca(W, num_components=3)
    assert few.components.shape == (3, *W.shape[1:])
    # 3 components explain exactly their share of the variance
    resid = (few.reconstruct() - W.double()).pow(2).sum() / (W.double() - few.mean).pow(2).sum()
    assert resid.item() == pytest.approx(1 - few.explained_variance_ratio.sum().item(), abs=1e-9)


def test_uniform_reference_distance():
    n, p = 6, 5
    rec = grid_record(softmax_attn(2, 3, n + 1, n + 1), (1, n), (p, n * p), prefix=1)
    assert uniform_attention_distance(rec) == pytest.approx(p * (n * n - 1) / (3 * n))
    # windowed (Swin): uniform inside 4x4 windows of 2-pixel tokens equals one 4x4 grid's value;
    # shifted windows split into regions (the wrapped-in tokens are masked), so the reach is shorter
    one = mean_attention_distance(grid_record(torch.full((1, 1, 16, 16), 1 / 16), (4, 4), (8, 8))).item()
    dists = {}
    for shift in ((0, 0), (2, 2)):
        lay = WindowLayout(batch=2, size=(8, 8), padded=(8, 8), window=(4, 4), shift=shift)
        dists[shift] = uniform_attention_distance(
            AttentionRecord("w", softmax_attn(8, 3, 16, 16), (16, 16), window=lay)
        )
    assert dists[(0, 0)] == pytest.approx(one)
    assert 0 < dists[(2, 2)] < one
