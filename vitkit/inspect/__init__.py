"""Looking inside a trained ViT: attention capture, attention rollout, [CLS] attention maps, mean
attention distance, position-embedding similarity and patch-filter principal components (ViT paper
figures 6-7), as arrays and as PNG figures. See docs/inspection.md; `vitkit inspect` runs them all.
"""

from .analysis import (
    HEAD_FUSIONS,
    PatchPCA,
    attention_distance,
    attention_rollout,
    cls_attention_maps,
    fuse_heads,
    mean_attention_distance,
    mean_attention_distances,
    most_similar_is_neighbour,
    patch_embed_pca,
    patch_embed_weight,
    pos_embed_similarity,
    rollout_map,
    similarity_by_distance,
    uniform_attention_distance,
    upsample,
)
from .capture import (
    AttentionCapture,
    AttentionRecord,
    WindowLayout,
    capture_attention,
    get_attention,
    infer_grid,
)
from .run import bundled_photos, load_model, run_inspect

__all__ = [
    "HEAD_FUSIONS",
    "AttentionCapture",
    "AttentionRecord",
    "PatchPCA",
    "WindowLayout",
    "attention_distance",
    "attention_rollout",
    "bundled_photos",
    "capture_attention",
    "cls_attention_maps",
    "fuse_heads",
    "get_attention",
    "infer_grid",
    "load_model",
    "mean_attention_distance",
    "mean_attention_distances",
    "most_similar_is_neighbour",
    "patch_embed_pca",
    "patch_embed_weight",
    "pos_embed_similarity",
    "rollout_map",
    "run_inspect",
    "similarity_by_distance",
    "uniform_attention_distance",
    "upsample",
]
