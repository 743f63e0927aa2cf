"""Hugging Face Swin (`SwinModel`, `SwinForImageClassification`) -> vitkit's Swin.

Source: `transformers` 5.23 `models/swin/modeling_swin.py`. Both the on-disk names of the hub
checkpoints (transformers 4 layout) and transformers 5's module names are read. `[b]` is the
base-model prefix `swin.` (absent in a bare `SwinModel` checkpoint):

    [b]embeddings.patch_embeddings.projection             -> patch_embed.proj
    [b]embeddings.norm                                    -> patch_embed.norm
    [b]encoder.layers.{i}.blocks.{j}.layernorm_before     -> layers.{i}.blocks.{j}.norm1
    ...attention.self.{query,key,value}  (5.x: attention.{q,k,v}_proj)   -> ...attn.qkv (rows q, k, v)
    ...attention.self.relative_position_bias_table
                       (5.x: attention.relative_position_bias.relative_position_bias_table)
                                                          -> ...attn.relative_position_bias_table
    ...attention.output.dense            (5.x: attention.o_proj)         -> ...attn.proj
    ...layernorm_after                                    -> ...norm2
    ...intermediate.dense / output.dense (5.x: mlp.fc1 / mlp.fc2)        -> ...mlp.fc1 / mlp.fc2
    [b]encoder.layers.{i}.downsample.{norm,reduction}     -> layers.{i+1}.downsample.* (HF merges at
                                                             the end of a stage, timm/vitkit at the start)
    [b]layernorm                                          -> norm
    classifier                                            -> head.fc

Dropped (logged): saved `relative_position_index` buffers, `embeddings.mask_token` (SimMIM).
Refused: `use_absolute_embeddings=True` (no vitkit counterpart yet).
HF pads inputs whose grid the window does not divide exactly as vitkit does (pad, then shift). HF
also shrinks a stage's window on every forward pass from that input's grid (`SwinLayer.
set_shift_and_window_size`: when min(H, W) <= window, a min(H, W) window without shift), where timm
and the official code fix the window once for the configured image size; the converted config sets
`window_rule='hf'` so vitkit applies HF's rule, and `strict_img_size=False` so any input size runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .hf import _LAYER_MAP, _error, _label_names, _preprocessing

logger = logging.getLogger("vitkit")

ARCHITECTURES = ("SwinModel", "SwinForImageClassification")
_BLOCK_RE = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$")
_DOWN_RE = re.compile(r"^encoder\.layers\.(\d+)\.downsample\.(.+)$")
_QKV = {
    "attention.self.query": 0,
    "attention.self.key": 1,
    "attention.self.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_TOP = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.norm.": "patch_embed.norm.",
    "layernorm.": "norm.",
}


def _strip(key: str) -> str:
    return key[len("swin.") :] if key.startswith("swin.") else key


def looks_like_hf_swin(state: Mapping[str, Any]) -> bool:
    return any(_strip(k).startswith("encoder.layers.") and ".blocks." in k for k in state)


def convert_hf_swin_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, int, str], list] = {}
    dropped = []
    for key, value in state.items():
        body = _strip(key)
        if body.endswith("relative_position_index") or body == "embeddings.mask_token":
            dropped.append(key)
            continue
        if key.startswith("classifier."):
            out["head.fc." + key[len("classifier.") :]] = value
            continue
        top = next((p for p in _TOP if body.startswith(p)), None)
        if top:
            out[_TOP[top] + body[len(top) :]] = value
            continue
        m = _DOWN_RE.match(body)
        if m:
            out[f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"] = value
            continue
        m = _BLOCK_RE.match(body)
        if m:
            i, j, sub, param = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            prefix = f"layers.{i}.blocks.{j}."
            if param == "relative_position_bias_table":
                out[prefix + "attn.relative_position_bias_table"] = value
                continue
            if sub in _QKV:
                qkv.setdefault((i, j, param), [None, None, None])[_QKV[sub]] = value
                continue
            if sub in _LAYER_MAP:  # a Swin layer names its norms, projection and MLP as a ViT layer does
                out[f"{prefix}{_LAYER_MAP[sub]}.{param}"] = value
                continue
        out[key] = value  # unknown: passes through, and the strict loader names it
    for (i, j, param), parts in qkv.items():
        if any(p is None for p in parts):
            raise _error(f"{source}: layers.{i}.blocks.{j} has only some of query/key/value {param}")
        out[f"layers.{i}.blocks.{j}.attn.qkv.{param}"] = torch.cat(parts, dim=0)
    if dropped:
        logger.info(
            "%s: ignoring %d key(s) without a vitkit counterpart or rebuilt at load (%s, ...)",
            source,
            len(dropped),
            dropped[0],
        )
    return out


def config_from_hf_swin(
    hf_config: Mapping[str, Any], source: str = "checkpoint", state_keys: Iterable[str] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, SwinConfig values, pretrained_cfg) for an HF Swin `config.json`."""

    def get(name: str, default: Any) -> Any:
        value = hf_config.get(name)
        return default if value is None else value

    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is not None and arch not in ARCHITECTURES:
        raise _error(
            f"{source}: Hugging Face architecture {arch!r} is not supported for model_type 'swin'; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    if get("use_absolute_embeddings", False):
        raise _error(f"{source}: use_absolute_embeddings=True (Swin's 'ape') is not supported by vitkit's Swin")
    if get("hidden_act", "gelu") != "gelu":
        raise _error(f"{source}: hidden_act {hf_config['hidden_act']!r} is not supported (vitkit's Swin: 'gelu')")
    if state_keys is not None:
        has_classifier = "classifier.weight" in set(state_keys)
    else:
        has_classifier = arch != "SwinModel"
    if hf_config.get("num_labels") is not None:
        num_labels = int(hf_config["num_labels"])
    elif isinstance(hf_config.get("id2label"), Mapping):
        num_labels = len(hf_config["id2label"])
    else:
        num_labels = 2
    num_classes = num_labels if has_classifier else 0
    image_size, patch_size = get("image_size", 224), get("patch_size", 4)
    if isinstance(patch_size, (list, tuple)):
        if patch_size[0] != patch_size[1]:
            raise _error(f"{source}: non-square patch_size {patch_size} is not supported")
        patch_size = patch_size[0]
    values: dict[str, Any] = dict(
        img_size=tuple(int(v) for v in image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
        patch_size=int(patch_size),
        in_chans=int(get("num_channels", 3)),
        num_classes=num_classes,
        embed_dim=int(get("embed_dim", 96)),
        depths=tuple(int(v) for v in get("depths", [2, 2, 6, 2])),
        num_heads=tuple(int(v) for v in get("num_heads", [3, 6, 12, 24])),
        window_size=int(get("window_size", 7)),
        mlp_ratio=float(get("mlp_ratio", 4.0)),
        qkv_bias=bool(get("qkv_bias", True)),
        norm_eps=float(get("layer_norm_eps", 1e-5)),
        proj_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        attn_drop_rate=float(get("attention_probs_dropout_prob", 0.0)),
        strict_img_size=False,  # HF takes any input size (padding to the patch and window grids)
        window_rule="hf",  # windows shrink per forward pass from the input's grid, as HF's SwinLayer
    )
    directory = Path(source)
    pretrained_cfg = _preprocessing("deit", directory if directory.is_dir() else None)  # ImageNet mean/std
    labels = _label_names(hf_config, num_classes)
    if labels:
        pretrained_cfg["label_names"] = labels
    return "swin", values, pretrained_cfg
