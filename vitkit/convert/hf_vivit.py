"""Hugging Face ViViT (`VivitModel`, `VivitForVideoClassification`) -> vitkit's ViViT (Model 1).

Source: `transformers` 5.23 `models/vivit/modeling_vivit.py`. HF implements only ViViT's Model 1
(spatio-temporal attention over all tubelets); its layers are ViT's, so the key map is the ViT one
of `hf.py` under the base prefix `vivit.` (both the on-disk names of `save_pretrained` and
transformers 5's module names are read):

    vivit.embeddings.cls_token                        -> cls_token
    vivit.embeddings.position_embeddings              -> pos_embed          (1, 1 + n_t n_h n_w, D)
    vivit.embeddings.patch_embeddings.projection      -> patch_embed.proj   (Conv3d, (D, C, t, h, w))
    vivit.encoder.layer.{i}.attention.attention.{query,key,value}
                     (5.x: vivit.layers.{i}.attention.{q,k,v}_proj)     -> blocks.{i}.attn.qkv
    ...attention.output.dense (5.x: attention.o_proj) -> blocks.{i}.attn.proj
    ...layernorm_before / layernorm_after             -> blocks.{i}.norm1 / norm2
    ...intermediate.dense / output.dense (5.x: mlp.fc1 / mlp.fc2) -> blocks.{i}.mlp.fc1 / fc2
    vivit.layernorm                                   -> norm
    classifier                                        -> head

Dropped (logged): the pooler of a bare `VivitModel` (`vivit.pooler.dense`, Linear + tanh on [CLS]),
which `VivitForVideoClassification` does not use.

Conventions: HF takes clips as (B, T, C, H, W), vitkit as (B, C, T, H, W) (`x.transpose(1, 2)`);
HF's default activation `gelu_fast` is the tanh GELU ('gelu_tanh'); LayerNorm eps 1e-6.
Preprocessing (`VivitImageProcessor` defaults): shorter side 256, bilinear, centre crop 224, values
rescaled to [-1, 1] and then normalised with mean = std = 0.5 -- on the [0, 1] scale that is
mean 0.75, std 0.25.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .hf import _ACTIVATIONS, _encoder_fields, _error, _label_names

logger = logging.getLogger("vitkit")

ARCHITECTURES = ("VivitModel", "VivitForVideoClassification")
_PREFIX = "vivit."


def convert_hf_vivit_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    from .hf import convert_hf_state_dict

    body = {}
    dropped = []
    for key, value in state.items():
        key = key.removeprefix(_PREFIX)
        if key.startswith("pooler."):
            dropped.append(key)
            continue
        body[key] = value
    if dropped:
        logger.info(
            "%s: ignoring the pooler of a bare VivitModel (%s): vitkit's ViViT classifies from the "
            "final [CLS] as VivitForVideoClassification does",
            source,
            ", ".join(dropped),
        )
    # Unprefixed, these are the keys of a bare HF ViT: reuse its map (embeddings, layers, layernorm, classifier).
    return convert_hf_state_dict(body, {"model_type": "vit"}, source=source)


def config_from_hf_vivit(
    hf_config: Mapping[str, Any], source: str = "checkpoint", state_keys: Iterable[str] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    archs = hf_config.get("architectures") or []
    if archs and archs[0] not in ARCHITECTURES:
        raise _error(
            f"{source}: Hugging Face architecture {archs[0]!r} is not supported for model_type 'vivit'; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )

    get, hidden, heads, intermediate, act = _encoder_fields(hf_config, source, "gelu_fast")
    if state_keys is not None:
        has_classifier = any(k.startswith("classifier.") for k in state_keys)
    else:
        has_classifier = not archs or archs[0] == "VivitForVideoClassification"
    num_labels = int(get("num_labels", len(hf_config.get("id2label") or {}) or 2))
    num_classes = num_labels if has_classifier else 0
    image_size = get("image_size", 224)
    values = dict(
        img_size=tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
        num_frames=int(get("num_frames", 32)),
        tubelet_size=tuple(int(v) for v in get("tubelet_size", (2, 16, 16))),
        in_chans=int(get("num_channels", 3)),
        num_classes=num_classes,
        attention_type="spatio_temporal",
        embed_dim=hidden,
        depth=int(get("num_hidden_layers", 12)),
        num_heads=heads,
        mlp_ratio=intermediate / hidden,
        qkv_bias=bool(get("qkv_bias", True)),
        class_token=True,
        global_pool="token",
        norm_eps=float(get("layer_norm_eps", 1e-6)),
        act=_ACTIVATIONS[act],
        pos_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        proj_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        attn_drop_rate=float(get("attention_probs_dropout_prob", 0.0)),
    )
    if int(hidden * values["mlp_ratio"]) != intermediate:
        raise _error(f"{source}: intermediate_size {intermediate} is not hidden_size {hidden} times an mlp_ratio")
    pretrained_cfg: dict[str, Any] = dict(
        mean=(0.75,) * 3, std=(0.25,) * 3, crop_pct=224 / 256, interpolation="bilinear"
    )
    labels = _label_names(hf_config, num_classes)
    if labels:
        pretrained_cfg["label_names"] = labels
    return "vivit", values, pretrained_cfg
