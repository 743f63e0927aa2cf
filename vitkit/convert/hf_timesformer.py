"""Hugging Face TimeSformer (`TimesformerModel`, `TimesformerForVideoClassification`) -> vitkit.

Source: `transformers` 5.23 `models/timesformer/modeling_timesformer.py` (a port of
facebookresearch/TimeSformer, whose key names vitkit keeps). `[b]` is the base prefix `timesformer.`:

    [b]embeddings.cls_token                              -> cls_token
    [b]embeddings.position_embeddings                    -> pos_embed      (1, 1 + S, D), spatial
    [b]embeddings.time_embeddings                        -> time_embed     (1, T, D)
    [b]embeddings.patch_embeddings.projection            -> patch_embed.proj (Conv2d (D, C, p, p) ->
                                                            the one-frame tubelet (D, C, 1, p, p))
    [b]encoder.layer.{i}.layernorm_before                -> blocks.{i}.norm1
    [b]encoder.layer.{i}.attention.attention.qkv         -> blocks.{i}.attn.qkv
    [b]encoder.layer.{i}.attention.output.dense          -> blocks.{i}.attn.proj
    [b]encoder.layer.{i}.temporal_layernorm              -> blocks.{i}.temporal_norm1
    [b]encoder.layer.{i}.temporal_attention.attention.qkv -> blocks.{i}.temporal_attn.qkv
    [b]encoder.layer.{i}.temporal_attention.output.dense -> blocks.{i}.temporal_attn.proj
    [b]encoder.layer.{i}.temporal_dense                  -> blocks.{i}.temporal_fc
    [b]encoder.layer.{i}.layernorm_after                 -> blocks.{i}.norm2
    [b]encoder.layer.{i}.intermediate.dense / output.dense -> blocks.{i}.mlp.fc1 / fc2
    [b]layernorm                                         -> norm
    classifier                                           -> head

Conventions: HF takes clips as (B, T, C, H, W), vitkit as (B, C, T, H, W). Parity holds for
'divided_space_time' and 'joint_space_time'. For 'space_only' HF classifies every frame
(logits (B*T, K)); vitkit follows the reference code and averages the frames' tokens first, so
the two differ by design. Preprocessing (HF's video processor): shorter side 224, bilinear,
centre crop 224, ImageNet mean/std.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .hf import _ACTIVATIONS, _encoder_fields, _error, _label_names

ARCHITECTURES = ("TimesformerModel", "TimesformerForVideoClassification")
_PREFIX = "timesformer."
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_LAYER = {
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def convert_hf_timesformer_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """HF keys -> vitkit keys; unknown keys pass through for the strict loader to name."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        body = key.removeprefix(_PREFIX)
        if body in _TOP:
            if body.endswith("projection.weight") and value.ndim == 4:
                value = value.unsqueeze(2)  # Conv2d per frame -> one-frame tubelet
            out[_TOP[body]] = value
            continue
        if key.startswith("classifier."):
            out["head." + key[len("classifier.") :]] = value
            continue
        m = _LAYER_RE.match(body)
        if m and m.group(2) in _LAYER:
            out[f"blocks.{m.group(1)}.{_LAYER[m.group(2)]}.{m.group(3)}"] = value
            continue
        out[key] = value
    return out


def config_from_hf_timesformer(
    hf_config: Mapping[str, Any], source: str = "checkpoint", state_keys: Iterable[str] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    archs = hf_config.get("architectures") or []
    if archs and archs[0] not in ARCHITECTURES:
        raise _error(
            f"{source}: Hugging Face architecture {archs[0]!r} is not supported for model_type "
            f"'timesformer'; supported: {', '.join(ARCHITECTURES)}"
        )

    get, hidden, heads, intermediate, act = _encoder_fields(hf_config, source, "gelu")
    patch = get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise _error(f"{source}: non-square patch_size {patch} is not supported")
        patch = patch[0]
    if state_keys is not None:
        has_classifier = any(k.startswith("classifier.") for k in state_keys)
    else:
        has_classifier = not archs or archs[0] == "TimesformerForVideoClassification"
    num_labels = int(get("num_labels", len(hf_config.get("id2label") or {}) or 2))
    num_classes = num_labels if has_classifier else 0
    image_size = get("image_size", 224)
    values = dict(
        img_size=tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
        patch_size=int(patch),
        num_frames=int(get("num_frames", 8)),
        in_chans=int(get("num_channels", 3)),
        num_classes=num_classes,
        attention_type=str(get("attention_type", "divided_space_time")),
        embed_dim=hidden,
        depth=int(get("num_hidden_layers", 12)),
        num_heads=heads,
        mlp_ratio=intermediate / hidden,
        qkv_bias=bool(get("qkv_bias", True)),
        norm_eps=float(get("layer_norm_eps", 1e-6)),
        act=_ACTIVATIONS[act],
        pos_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        proj_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        attn_drop_rate=float(get("attention_probs_dropout_prob", 0.0)),
        drop_path_rate=float(get("drop_path_rate", 0.0)),
    )
    if int(hidden * values["mlp_ratio"]) != intermediate:
        raise _error(f"{source}: intermediate_size {intermediate} is not hidden_size {hidden} times an mlp_ratio")
    from ..registry import IMAGENET_MEAN, IMAGENET_STD

    pretrained_cfg: dict[str, Any] = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, interpolation="bilinear")
    labels = _label_names(hf_config, num_classes)
    if labels:
        pretrained_cfg["label_names"] = labels
    return "timesformer", values, pretrained_cfg
