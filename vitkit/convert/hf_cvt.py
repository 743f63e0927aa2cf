"""Hugging Face CvT (`CvtModel`, `CvtForImageClassification`) -> vitkit's CvT.

vitkit's CvT keeps the official microsoft/CvT key names, which HF's own conversion script maps
from; this file maps back:

    [cvt.]encoder.stages.{i}.embedding.convolution_embeddings.projection     stage{i}.patch_embed.proj
    [cvt.]encoder.stages.{i}.embedding.convolution_embeddings.normalization  stage{i}.patch_embed.norm
    [cvt.]encoder.stages.{i}.cls_token                                       stage{i}.cls_token
    ...layers.{j}.attention.attention.convolution_projection_{query,key,value}
        .convolution_projection.convolution / .normalization                 stage{i}.blocks.{j}.attn.conv_proj_{q,k,v}.conv / .bn
    ...layers.{j}.attention.attention.projection_{query,key,value}           ...attn.proj_{q,k,v}
    ...layers.{j}.attention.output.dense                                     ...attn.proj
    ...layers.{j}.layernorm_before / layernorm_after                         ...norm1 / norm2
    ...layers.{j}.intermediate.dense / output.dense                          ...mlp.fc1 / mlp.fc2
    layernorm / classifier (CvtForImageClassification only)                  norm / head

Configuration (`config_from_hf_cvt`): HF's per-stage lists map one to one (`embed_dim` ->
`embed_dims`, `depth` -> `depths`, `patch_stride` -> `patch_strides`, `mlp_ratio` -> `mlp_ratios`,
`attention_drop_rate` -> `attn_drop_rate`, the rest keep their names). Notes:
    - HF's `layer_norm_eps` is not read by its CvT modules (every LayerNorm uses torch's 1e-5), so
      vitkit uses 1e-5 whatever the config says;
    - `CvtModel` has no final LayerNorm and no classifier: it loads with `final_norm=False`,
      `num_classes=0`, so `forward_features` is HF's [CLS] + `last_hidden_state` tokens and the
      model's output is HF's `cls_token_value`;
    - only the 'dw_bn' q/k/v projection is supported (HF cannot run 'avg' either), and a [CLS]
      token only in the last stage;
    - preprocessing: `preprocessor_config.json` when present, else the microsoft/cvt-* defaults
      (ImageNet mean/std, bicubic, crop 0.875).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .hf import _error, _label_names, _preprocessing

logger = logging.getLogger("vitkit")

ARCHITECTURES = ("CvtModel", "CvtForImageClassification")
_STAGE_RE = re.compile(r"^encoder\.stages\.(\d+)\.(.+)$")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
_QKV = {"query": "q", "key": "k", "value": "v"}
_EMBED = {
    "embedding.convolution_embeddings.projection.": "patch_embed.proj.",
    "embedding.convolution_embeddings.normalization.": "patch_embed.norm.",
}
_LAYER = {
    "attention.output.dense.": "attn.proj.",
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
}
_CONV_PROJ_RE = re.compile(
    r"^attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\."
    r"(convolution|normalization)\.(.+)$"
)
_LINEAR_PROJ_RE = re.compile(r"^attention\.attention\.projection_(query|key|value)\.(weight|bias)$")
_TOP = {"layernorm.": "norm.", "classifier.": "head."}


def looks_like_hf_cvt(keys: Iterable[str]) -> bool:
    """True for the key names of an HF CvT state dict (with or without the `cvt.` prefix)."""
    return any(k.startswith(("cvt.encoder.stages.", "encoder.stages.")) for k in keys)


def _map_key(key: str) -> str | None:
    body = key[len("cvt.") :] if key.startswith("cvt.") else key
    if body == key:  # heads sit outside the base model
        for old, new in _TOP.items():
            if key.startswith(old) and key.count(".") == 1:
                return new + key[len(old) :]
    m = _STAGE_RE.match(body)
    if not m:
        return None
    i, rest = m.group(1), m.group(2)
    if rest == "cls_token":
        return f"stage{i}.cls_token"
    for old, new in _EMBED.items():
        if rest.startswith(old):
            return f"stage{i}.{new}{rest[len(old) :]}"
    m = _LAYER_RE.match(rest)
    if not m:
        return None
    j, sub = m.group(1), m.group(2)
    prefix = f"stage{i}.blocks.{j}."
    c = _CONV_PROJ_RE.match(sub)
    if c:
        part = "conv" if c.group(2) == "convolution" else "bn"
        return f"{prefix}attn.conv_proj_{_QKV[c.group(1)]}.{part}.{c.group(3)}"
    p = _LINEAR_PROJ_RE.match(sub)
    if p:
        return f"{prefix}attn.proj_{_QKV[p.group(1)]}.{p.group(2)}"
    for old, new in _LAYER.items():  # 'attention.output.dense.' is tried before 'output.dense.'
        if sub.startswith(old) and sub.count(".") == old.count("."):
            return prefix + new + sub[len(old) :]
    return None


def convert_hf_cvt_state_dict(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF CvT keys -> vitkit (official microsoft/CvT) keys. Unknown keys pass through unchanged,
    for the strict loader to report."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _map_key(key)
        out[new if new is not None else key] = value
    return out


def _per_stage(hf_config: Mapping[str, Any], name: str, default: Any, n: int, source: str) -> tuple:
    value = hf_config.get(name)
    if value is None:
        value = default
    if not isinstance(value, (list, tuple)):
        value = [value] * n
    if len(value) != n:
        raise _error(f"{source}: {name} {list(value)} has {len(value)} values for {n} stages")
    return tuple(value)


def config_from_hf_cvt(
    hf_config: Mapping[str, Any], source: str = "checkpoint", state_keys: Iterable[str] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """('cvt', CvtConfig values, pretrained_cfg) for an HF CvT `config.json`.

    `state_keys` (the checkpoint's key names) tell whether it has the final LayerNorm and a
    classifier; without them the `architectures` entry decides (HF's default: classification)."""
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is not None and arch not in ARCHITECTURES:
        raise _error(
            f"{source}: Hugging Face architecture {arch!r} is not supported for model_type 'cvt'; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    depths = hf_config.get("depth") or [1, 2, 10]
    if not isinstance(depths, (list, tuple)) or not depths:
        raise _error(f"{source}: depth {depths!r} is not a list of per-stage depths")
    n = len(depths)

    def stage(name: str, default: Any) -> tuple:
        return _per_stage(hf_config, name, default, n, source)

    methods = stage("qkv_projection_method", "dw_bn")
    if any(m != "dw_bn" for m in methods):
        raise _error(
            f"{source}: qkv_projection_method {list(methods)} is not supported; vitkit's CvT "
            f"implements 'dw_bn' (depth-wise conv + BatchNorm), the method of every released CvT"
        )
    cls_token = tuple(bool(v) for v in stage("cls_token", [False] * (n - 1) + [True]))
    if any(cls_token[:-1]):
        raise _error(
            f"{source}: cls_token {list(cls_token)}: vitkit's CvT supports a [CLS] token in the last "
            f"stage only (HF sizes earlier ones with the last stage's width)"
        )

    keys = None if state_keys is None else set(state_keys)
    if keys is not None:
        has_classifier = "classifier.weight" in keys
        has_norm = "layernorm.weight" in keys
    else:
        has_classifier = has_norm = arch != "CvtModel"
    if hf_config.get("num_labels") is not None:
        num_labels = int(hf_config["num_labels"])
    elif isinstance(hf_config.get("id2label"), Mapping):
        num_labels = len(hf_config["id2label"])
    else:
        num_labels = 2  # HF's default
    num_classes = num_labels if has_classifier else 0

    values: dict[str, Any] = dict(
        img_size=224,  # nominal: HF's CvtConfig has no image size and the model takes any
        in_chans=int(hf_config.get("num_channels") or 3),
        num_classes=num_classes,
        global_pool="token" if cls_token[-1] else "avg",
        embed_dims=tuple(int(v) for v in stage("embed_dim", [64, 192, 384])),
        depths=tuple(int(v) for v in depths),
        num_heads=tuple(int(v) for v in stage("num_heads", [1, 3, 6])),
        patch_sizes=tuple(int(v) for v in stage("patch_sizes", [7, 3, 3])),
        patch_strides=tuple(int(v) for v in stage("patch_stride", [4, 2, 2])),
        patch_padding=tuple(int(v) for v in stage("patch_padding", [2, 1, 1])),
        mlp_ratios=tuple(float(v) for v in stage("mlp_ratio", 4.0)),
        qkv_bias=tuple(bool(v) for v in stage("qkv_bias", True)),
        cls_token=cls_token,
        kernel_qkv=tuple(int(v) for v in stage("kernel_qkv", 3)),
        stride_q=tuple(int(v) for v in stage("stride_q", 1)),
        stride_kv=tuple(int(v) for v in stage("stride_kv", 2)),
        padding_q=tuple(int(v) for v in stage("padding_q", 1)),
        padding_kv=tuple(int(v) for v in stage("padding_kv", 1)),
        norm_eps=1e-5,  # HF's CvT LayerNorms ignore config.layer_norm_eps
        final_norm=has_norm,
        drop_rate=tuple(float(v) for v in stage("drop_rate", 0.0)),
        attn_drop_rate=tuple(float(v) for v in stage("attention_drop_rate", 0.0)),
        drop_path_rate=tuple(float(v) for v in stage("drop_path_rate", 0.0)),
    )
    for i, (d, h) in enumerate(zip(values["embed_dims"], values["num_heads"])):
        if d % h:
            raise _error(f"{source}: stage {i}: embed_dim {d} is not divisible by num_heads {h}")

    directory = Path(source)
    pretrained_cfg = _preprocessing("cvt", directory if directory.is_dir() else None)
    labels = _label_names(hf_config, num_classes)
    if labels:
        pretrained_cfg["label_names"] = labels
    return "cvt", values, pretrained_cfg
