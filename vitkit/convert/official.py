"""Key layouts of official releases that differ from timm's, renamed to vitkit's (= timm's) keys.

Each model's `adapt_checkpoint` recognises the layout by a key only that layout has and calls the
function here; the fitting that follows (heads, resampled tables) is the model's own.
"""

from __future__ import annotations

import torch


def convert_official_swin(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official Swin code's layout (microsoft/Swin-Transformer) -> timm's: patch merging sits at the end of
    stages 1-3 there and at the start of stages 2-4 in timm, and the classifier `head` is timm's `head.fc`."""
    moved = {}
    for k, v in state.items():
        if k.startswith("layers.") and ".downsample." in k:
            i, rest = k[len("layers.") :].split(".", 1)
            k = f"layers.{int(i) + 1}.{rest}"
        elif k.startswith("head.") and not k.startswith("head.fc."):
            k = "head.fc." + k[len("head.") :]
        moved[k] = v
    return moved


_TV_RENAMES = (
    ("conv_proj.", "patch_embed.proj."),
    ("pos_encoding.class_token", "cls_token"),
    ("pos_encoding.spatial_pos", "pos_embed_spatial"),
    ("pos_encoding.temporal_pos", "pos_embed_temporal"),
    ("pos_encoding.class_pos", "pos_embed_class"),
    ("head.1.", "head."),
)
_TV_BLOCK_RENAMES = (
    (".attn.project.0.", ".attn.proj."),
    (".norm_act.0.", ".norm."),
    (".mlp.0.", ".mlp.fc1."),
    (".mlp.3.", ".mlp.fc2."),
    (".project.", ".proj."),
)


def convert_torchvision_mvit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision `MViT` keys -> vitkit keys; the embedding vectors gain the (1, n, C) layout."""
    out = {}
    for key, value in state.items():
        for old, new in _TV_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        if key.startswith("blocks."):
            for old, new in _TV_BLOCK_RENAMES:
                key = key.replace(old, new)
        if key in ("cls_token", "pos_embed_class"):
            value = value.reshape(1, 1, -1)
        elif key in ("pos_embed_spatial", "pos_embed_temporal"):
            value = value.unsqueeze(0)
        out[key] = value
    return out
