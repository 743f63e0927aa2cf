"""PNG figures of the inspection arrays (matplotlib, imported lazily; files written atomically)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..hub import atomic_write
from .analysis import PatchPCA


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the inspection figures need matplotlib: pip install 'vitkit[inspect]'") from None
    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG through a temporary file, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        _plt().close(fig)
    return path


def _show(ax, image: torch.Tensor) -> None:
    """image (H, W, C) in [0, 1]."""
    img = image.clamp(0, 1).cpu().numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention_overlays(
    images: torch.Tensor, maps: torch.Tensor, path: str | Path, title: str, labels: list[str] | None = None
) -> Path:
    """Each image (B, H, W, C) above its map (B, H, W) laid over it (maps scaled to [0, 1] per image)."""
    plt = _plt()
    B = images.shape[0]
    fig, axes = plt.subplots(2, B, figsize=(1.9 * B, 4.0), squeeze=False)
    for i in range(B):
        _show(axes[0, i], images[i])
        if labels:
            axes[0, i].set_title(labels[i], fontsize=8)
        m = maps[i] - maps[i].min()
        m = m / m.max().clamp_min(1e-12)
        _show(axes[1, i], images[i])
        axes[1, i].imshow(m.cpu().numpy(), cmap="jet", alpha=0.5)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_cls_heads(image: torch.Tensor, maps: torch.Tensor, path: str | Path, title: str) -> Path:
    """The image and the [CLS] attention of every head (heads, H, W), each in its own colour scale."""
    plt = _plt()
    heads = maps.shape[0]
    fig, axes = plt.subplots(1, heads + 1, figsize=(2.0 * (heads + 1), 2.3), squeeze=False)
    _show(axes[0, 0], image)
    axes[0, 0].set_title("input", fontsize=8)
    for h in range(heads):
        axes[0, h + 1].imshow(maps[h].cpu().numpy(), cmap="inferno")
        axes[0, h + 1].set_title(f"head {h}", fontsize=8)
        axes[0, h + 1].set_xticks([])
        axes[0, h + 1].set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_attention_distance(
    distances: torch.Tensor,
    path: str | Path,
    title: str,
    layer_names: list[str] | None = None,
    uniform: list[float] | None = None,
) -> Path:
    """ViT paper fig. 7 right: one dot per head at (layer, mean attention distance in pixels);
    `uniform`, per layer, the distance of uniform attention (dashed)."""
    plt = _plt()
    L, H = distances.shape
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    cmap = plt.get_cmap("tab10" if H <= 10 else "tab20")
    for h in range(H):
        ax.scatter(range(L), distances[:, h].numpy(), s=18, color=cmap(h % cmap.N), label=f"head {h}")
    ax.plot(range(L), torch.nanmean(distances, dim=1).numpy(), color="k", lw=1, label="mean over heads")
    if uniform is not None:
        ax.plot(range(L), uniform, color="gray", ls="--", lw=1, label="uniform attention")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    if layer_names and L <= 24:
        ax.set_xticks(range(L), layer_names, rotation=60, fontsize=6, ha="right")
    ax.set_title(title, fontsize=10)
    if H <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def mosaic(tiles: torch.Tensor, rows: int, cols: int, gap: int = 1) -> torch.Tensor:
    """(n, h, w[, C]) tiles -> one (rows (h + gap) - gap, cols (w + gap) - gap[, C]) image, NaN in the gaps."""
    n, h, w = tiles.shape[:3]
    extra = tiles.shape[3:]
    out = torch.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *extra), float("nan"), dtype=torch.float64)
    for k in range(n):
        i, j = divmod(k, cols)
        out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = tiles[k].double()
    return out


def plot_pos_embed_similarity(sim: torch.Tensor, path: str | Path, title: str) -> Path:
    """ViT paper fig. 7 centre: an h x w grid of small maps; tile (i, j) is the cosine similarity of
    patch (i, j)'s position embedding with every patch's."""
    plt = _plt()
    h, w = sim.shape[:2]
    gap = max(1, h // 7)
    img = mosaic(sim.reshape(h * w, h, w), h, w, gap)
    fig, ax = plt.subplots(figsize=(min(9.0, 0.6 * w + 1.5), min(8.0, 0.6 * h + 0.8)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(img.numpy(), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (w + gap) + (w - 1) / 2 for j in range(w)], [str(j + 1) for j in range(w)], fontsize=6)
    ax.set_yticks([i * (h + gap) + (h - 1) / 2 for i in range(h)], [str(i + 1) for i in range(h)], fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_patch_pca(pca: PatchPCA, path: str | Path, title: str, count: int = 28) -> Path:
    """ViT paper fig. 7 left: the first principal components of the patch filters as images, each
    scaled to [0, 1] on its own (RGB for 3 channels, the first channel in grey otherwise), with the
    share of the filters' variance each explains."""
    plt = _plt()
    k = min(count, pca.components.shape[0])
    comps = pca.components[:k].float()
    comps = comps if comps.shape[1] == 3 else comps[:, :1]
    lo = comps.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = comps.flatten(1).amax(1).view(-1, 1, 1, 1)
    comps = ((comps - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1)  # (k, p, p, C)
    cols = min(7, k)
    rows = math.ceil(k / cols)
    p = comps.shape[1]
    gap = max(1, p // 4)
    img = mosaic(comps, rows, cols, gap)
    fig, ax = plt.subplots(figsize=(1.1 * cols + 0.4, 1.2 * rows + 0.6))
    if img.shape[-1] == 1:
        cmap = plt.get_cmap("gray").with_extremes(bad="white")
        ax.imshow(img[..., 0].numpy(), cmap=cmap, interpolation="nearest")
    else:
        ax.imshow(torch.nan_to_num(img, nan=1.0).numpy(), interpolation="nearest")
    for i in range(k):
        r, c = divmod(i, cols)
        ax.text(
            c * (p + gap) + (p - 1) / 2,
            r * (p + gap) - 0.6,
            f"{100 * pca.explained_variance_ratio[i]:.1f}%",
            ha="center",
            va="bottom",
            fontsize=6,
        )
    ax.axis("off")
    ax.set_title(title, fontsize=9, pad=12)
    return save_figure(fig, path)
