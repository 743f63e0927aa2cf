"""`run_inspect` (what `vitkit inspect` runs): every inspection figure for one model and a set of images,
written to a folder, with the numbers behind them in `summary.json`."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .analysis import (
    HEAD_FUSIONS,
    attention_rollout,
    cls_attention_maps,
    mean_attention_distances,
    most_similar_is_neighbour,
    patch_embed_pca,
    pos_embed_similarity,
    rollout_map,
    similarity_by_distance,
    uniform_attention_distance,
    upsample,
)
from .capture import capture_attention
from .plots import (
    plot_attention_distance,
    plot_attention_overlays,
    plot_cls_heads,
    plot_patch_pca,
    plot_pos_embed_similarity,
)

logger = logging.getLogger("vitkit")

# photos bundled with scikit-image (no download): an astronaut, a cat, a coffee cup, a rocket
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def load_model(spec: str | Path):
    """A run directory (vitkit train --out), a model directory (vitkit or Hugging Face), or a
    registered model name (randomly initialised: a warning says so)."""
    from ..hub import from_pretrained
    from ..registry import create_model, list_models

    path = Path(spec)
    if path.exists():
        model_dir = path / "model" if (path / "model" / "config.json").is_file() else path
        return from_pretrained(model_dir).eval(), str(model_dir)
    if str(spec) in list_models():
        logger.warning(
            "%s: a registered name, so its weights are RANDOM; pass a trained model directory for meaningful maps", spec
        )
        return create_model(str(spec)).eval(), str(spec)
    raise FileNotFoundError(
        f"{spec} is neither a model/run directory nor a registered model name (see `vitkit models`)"
    )


def _stats(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean and std as (1, C, 1, 1), from its data config (what `vitkit predict` uses)."""
    from ..data.transforms import resolve_data_config

    config = resolve_data_config(model=model)
    return torch.tensor(config["mean"]).view(1, -1, 1, 1), torch.tensor(config["std"]).view(1, -1, 1, 1)


def _normalise(model, x01: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(model)
    return (x01 - mean) / std


def _denormalise(model, x: torch.Tensor) -> torch.Tensor:
    """Normalised (B, C, H, W) -> displayable (B, H, W, C) in [0, 1]."""
    mean, std = _stats(model)
    return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


def bundled_photos(model, names: tuple[str, ...] = PHOTOS) -> tuple[torch.Tensor, list[str]]:
    """scikit-image's bundled photos, preprocessed for `model` like `vitkit predict` does."""
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        raise ImportError("the bundled photos need scikit-image and Pillow: pip install 'vitkit[inspect]'") from None
    from ..predict import image_transform, load_image

    out, transform = [], image_transform(model)
    for name in names:
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, format="PNG")
        buf.seek(0)
        out.append(load_image(buf, model, transform))
    return torch.stack(out), list(names)


def image_files(model, paths: list[str]) -> tuple[torch.Tensor, list[str]]:
    from ..predict import image_transform, load_image

    transform = image_transform(model)
    return torch.stack([load_image(p, model, transform) for p in paths]), [Path(p).name for p in paths]


def dataset_images(model, name: str, count: int, data_dir: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """The first `count` test images of a vitkit dataset, preprocessed as `vitkit eval` does (the model's
    image size and data config) and normalised with the model's statistics."""
    from ..data.transforms import load_dataset_for_model

    splits = load_dataset_for_model(model, name, data_dir)
    idx = torch.arange(min(count, len(splits.test)))
    x, y = splits.test.batch(idx) if hasattr(splits.test, "batch") else splits.test.load_batch(idx)
    return _normalise(model, x), [splits.classes[i] for i in y.tolist()]


def run_inspect(
    model_spec: str | Path,
    out: str | Path,
    images: list[str] | None = None,
    data: str | None = None,
    num_images: int = 128,
    show: int = 8,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    batch_size: int = 32,
    data_dir: str | None = None,
    photos: bool = False,
) -> dict[str, Any]:
    """Write the inspection figures of one model into `out` and return (and save) the numbers.

    Images: `images` (files), else `data` (the first `num_images` test images of that dataset), else
    the dataset the model was trained on, else (or with `photos`) scikit-image's bundled photos. The attention
    distance averages over all of them; the maps show the first `show`."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if num_images < 1 or show < 1 or batch_size < 1:
        raise ValueError(f"num_images, show and batch_size must be positive, got {num_images}, {show}, {batch_size}")
    model, source = load_model(model_spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = model.model_name or type(model).__name__
    if source == str(model_spec) and not Path(model_spec).exists():
        name += " (RANDOM weights)"
    if images:
        x, labels = image_files(model, images)
        origin = "files"
    else:
        data = None if photos else data or model.pretrained_cfg.get("dataset")
        if data:
            x, labels = dataset_images(model, data, num_images, data_dir)
            origin = f"{data} test[:{len(x)}]"
        else:
            x, labels = bundled_photos(model)
            origin = "scikit-image photos"
    summary: dict[str, Any] = {
        "model": source,
        "model_name": name,
        "images": origin,
        "num_images": len(x),
        "figures": {},
    }
    figs = summary["figures"]

    # one pass over the images: attention distance for all, maps for the first `show`
    dist_sum, shown, first_records = None, None, None
    with torch.no_grad():
        for start in tqdm(range(0, len(x), batch_size), desc="inspect", leave=False):
            xb = x[start : start + batch_size]
            with capture_attention(model) as cap:
                model(xb)
            if not cap.records:
                raise ValueError(
                    f"{name} recorded no attention: it has no opted-in attention modules (see vitkit.inspect.capture)"
                )
            d = mean_attention_distances(cap.records) * len(xb)
            dist_sum = d if dist_sum is None else dist_sum + d
            if first_records is None:
                first_records, shown = cap.records, xb[:show]
    dist = dist_sum / len(x)
    layer_names = [r.name.removesuffix(".attn") for r in first_records]
    summary["layers"] = layer_names
    summary["mean_attention_distance_px"] = [[round(v, 3) for v in row] for row in dist.tolist()]
    uniform = [uniform_attention_distance(r) for r in first_records]
    summary["uniform_attention_distance_px"] = [round(v, 3) for v in uniform]
    figs["attention_distance"] = str(
        plot_attention_distance(
            dist,
            out / "attention_distance.png",
            f"{name}: mean attention distance ({len(x)} images)",
            layer_names,
            uniform,
        )
    )

    display = _denormalise(model, shown)
    img_size = tuple(shown.shape[-2:])
    shown_labels = labels[: len(shown)]
    last = first_records[-1]
    same_grid = all(
        r.window is None and r.query_grid is not None and r.query_grid == r.key_grid == last.query_grid
        for r in first_records
    )
    if same_grid:
        roll = attention_rollout([r.weights[: len(shown)] for r in first_records], head_fusion, discard_ratio)
        maps = upsample(rollout_map(roll, last.num_prefix_tokens, last.query_grid), img_size)
        figs["rollout"] = str(
            plot_attention_overlays(
                display,
                maps,
                out / "rollout.png",
                f"{name}: attention rollout (heads: {head_fusion}, discard {discard_ratio:g})",
                shown_labels,
            )
        )
    else:
        summary["rollout"] = "skipped: the layers do not share one token grid (hierarchical model)"
    if last.num_prefix_tokens and last.query_grid is not None and last.window is None:
        cls = upsample(cls_attention_maps(last), img_size, mode="nearest")
        figs["cls_attention"] = []
        for i in range(min(len(shown), 4)):
            figs["cls_attention"].append(
                str(
                    plot_cls_heads(
                        display[i],
                        cls[i],
                        out / f"cls_attention_{i}.png",
                        f"{name}: last layer [CLS] attention per head ({shown_labels[i]})",
                    )
                )
            )

    try:
        sim = pos_embed_similarity(model)
    except ValueError as e:
        summary["pos_embed"] = f"skipped: {e}"
    else:
        summary["pos_embed_similarity_by_distance"] = {
            f"{k:g}": round(v, 4) for k, v in similarity_by_distance(sim).items()
        }
        summary["pos_embed_most_similar_is_neighbour"] = round(most_similar_is_neighbour(sim), 4)
        figs["pos_embed_similarity"] = str(
            plot_pos_embed_similarity(sim, out / "pos_embed_similarity.png", f"{name}: position embedding similarity")
        )
    try:
        pca = patch_embed_pca(model)
    except ValueError as e:
        summary["patch_embed"] = f"skipped: {e}"
    else:
        summary["patch_embed_explained_variance"] = [round(v, 4) for v in pca.explained_variance_ratio[:10].tolist()]
        figs["patch_embed_pca"] = str(
            plot_patch_pca(pca, out / "patch_embed_pca.png", f"{name}: principal components of the patch filters")
        )

    path = out / "summary.json"
    from ..hub import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    summary["summary"] = str(path)
    return summary
