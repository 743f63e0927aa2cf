"""Pieces shared by three or more model families. Family-specific attention stays in its model file."""

from .attention import (
    Attention,
    attention_policy,
    attention_recorder,
    eager_attention,
    fused_attention_enabled,
    record_attention,
    split_heads,
)
from .block import Block, LayerScale
from .drop import DropPath, drop_path, drop_path_rates
from .linear import Linear, cpu_gemm, cpu_gemm_mode
from .mlp import Mlp, make_activation
from .patch_embed import PatchEmbed, resample_patch_embed, to_2tuple
from .pos_embed import resample_abs_pos_embed
from .tracing import is_fx_tracing

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Linear",
    "Mlp",
    "PatchEmbed",
    "attention_policy",
    "attention_recorder",
    "cpu_gemm",
    "cpu_gemm_mode",
    "drop_path",
    "drop_path_rates",
    "eager_attention",
    "fused_attention_enabled",
    "is_fx_tracing",
    "make_activation",
    "record_attention",
    "resample_abs_pos_embed",
    "resample_patch_embed",
    "split_heads",
    "to_2tuple",
]
