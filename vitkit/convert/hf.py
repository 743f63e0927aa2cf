"""Hugging Face `transformers` ViT and DeiT checkpoints -> vitkit.

Source: `transformers` (checked against 5.23) `models/vit/modeling_vit.py` and
`models/deit/modeling_deit.py`: `ViTModel`, `ViTForImageClassification`,
`ViTForMaskedImageModeling` (model_type "vit"); `DeiTModel`, `DeiTForImageClassification`,
`DeiTForImageClassificationWithTeacher`, `DeiTForMaskedImageModeling` (model_type "deit");
`models/vit_msn/modeling_vit_msn.py`: `ViTMSNModel`, `ViTMSNForImageClassification` (model_type
"vit_msn": a ViT without pooler whose base prefix is `vit.`, LayerNorm eps 1e-6 by default;
transformers 5's `save_pretrained` of the classifier writes the encoder layers without the prefix,
the Hub's facebook/vit-msn-* checkpoints with it: both are read).

Key map (HF -> vitkit). `{b}` is the base-model prefix `vit.` / `deit.` (absent in a checkpoint
saved from a bare `ViTModel`/`DeiTModel`); both the on-disk names that `save_pretrained` writes
(`encoder.layer.{i}.attention.attention.query`, ...) and transformers 5's in-memory module names
(`layers.{i}.attention.q_proj`, ...), which `torch.save(model.state_dict())` writes, are read:
    {b}embeddings.cls_token                            -> cls_token
    {b}embeddings.distillation_token                   -> dist_token
    {b}embeddings.position_embeddings                  -> pos_embed
    {b}embeddings.patch_embeddings.projection          -> patch_embed.proj
    {b}encoder.layer.{i}.layernorm_before              -> blocks.{i}.norm1
    {b}encoder.layer.{i}.attention.attention.{query,key,value}
                       (5.x: layers.{i}.attention.{q,k,v}_proj)
                                                       -> blocks.{i}.attn.qkv (rows q, k, v)
    {b}encoder.layer.{i}.attention.output.dense (5.x: attention.o_proj) -> blocks.{i}.attn.proj
    {b}encoder.layer.{i}.layernorm_after               -> blocks.{i}.norm2
    {b}encoder.layer.{i}.intermediate.dense (5.x: mlp.fc1) -> blocks.{i}.mlp.fc1
    {b}encoder.layer.{i}.output.dense       (5.x: mlp.fc2) -> blocks.{i}.mlp.fc2
    {b}layernorm                                       -> norm
    {b}pooler.dense (Linear + tanh on [CLS])           -> pre_logits.fc (`representation_size`)
    classifier / cls_classifier                        -> head
    distillation_classifier                            -> head_dist

Documented exceptions (each is logged):
    - dropped as unused by inference and without a vitkit counterpart: `embeddings.mask_token`
      (masked-image-modelling input token) and the SimMIM `decoder.*` of `*ForMaskedImageModeling`;
      every other key that is not in the map is passed through unchanged, so the strict loader
      names it;
    - `DeiTForImageClassification` (no teacher) keeps the distillation token -- it takes part in
      attention -- but classifies from [CLS] alone. It becomes a distilled vitkit model with
      `distilled_output='cls'` (config_from_hf sets it: eval logits then equal HF's), and, since
      the checkpoint has no distillation head, `head_dist` is zero-filled (what a fresh vitkit
      head is). In training mode vitkit returns (cls logits, dist logits) where HF returns the cls
      logits alone. Loaded by `create_model`, pass `distilled=True, distilled_output='cls'`.

Configuration (`config_from_hf`):
    - HF's `layer_norm_eps` default is 1e-12 for ViT and DeiT, 1e-6 for ViTMSN (timm/DeiT/DINO: 1e-6) -> `norm_eps`;
    - `hidden_act` 'gelu' is the erf GELU; 'gelu_new', 'gelu_pytorch_tanh', 'gelu_fast' are the tanh
      approximation ('gelu_tanh');
    - whether a pooler exists is not in config.json (`ViTModel(add_pooling_layer=...)`): it is read
      from the weights' key names; the ViT in21k checkpoints' pooler is the paper's pre-logits layer;
    - a `*Model` or `*ForMaskedImageModeling` architecture has no classifier: num_classes=0;
    - position embeddings: HF's `interpolate_pos_encoding` resamples with plain bicubic
      (`F.interpolate(size=..., mode='bicubic', align_corners=False)`, no antialias), vitkit's default
      is timm's antialiased bicubic. For bicubic, torch's antialias path is not a no-op even when
      upsampling: it uses the PIL kernel (a=-0.5, renormalised at the borders) instead of a=-0.75, so
      a 4x4 -> 8x8 grid differs by ~0.2 per value. Models built from an HF config therefore get
      `pos_embed_antialias=False`, and `from_pretrained(hf_dir, img_size=...)` equals HF run with
      `interpolate_pos_encoding=True` at that size;
    - dropout: `attention_probs_dropout_prob` -> `attn_drop_rate`; `hidden_dropout_prob` ->
      `pos_drop_rate` and `proj_drop_rate` (vitkit's MLP also drops after the activation, HF only
      after fc2; training only);
    - preprocessing comes from `preprocessor_config.json` beside config.json when there is one,
      else from the HF image-processor defaults of the weights' family (ViT: mean = std = 0.5,
      bilinear resize to the model size, no crop; DeiT: ImageNet mean/std, bicubic, 224/256 crop).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("vitkit")

# cvt: see hf_cvt.py, swin: hf_swin.py, vit_mae: hf_mae.py, vivit/timesformer: hf_vivit.py, hf_timesformer.py
SUPPORTED_MODEL_TYPES = ("vit", "deit", "vit_msn", "cvt", "swin", "vit_mae", "vivit", "timesformer")
_ARCHITECTURES = {
    "vit": ("ViTModel", "ViTForImageClassification", "ViTForMaskedImageModeling"),
    "deit": (
        "DeiTModel",
        "DeiTForImageClassification",
        "DeiTForImageClassificationWithTeacher",
        "DeiTForMaskedImageModeling",
    ),
    "vit_msn": ("ViTMSNModel", "ViTMSNForImageClassification"),
    "cvt": ("CvtModel", "CvtForImageClassification"),
    "swin": ("SwinModel", "SwinForImageClassification"),
    "vit_mae": ("ViTMAEForPreTraining", "ViTMAEModel"),
    "vivit": ("VivitModel", "VivitForVideoClassification"),
    "timesformer": ("TimesformerModel", "TimesformerForVideoClassification"),
}
_CLASSIFIER_ARCHS = {
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "ViTMSNForImageClassification",
}
_POOLER_ARCHS = {"ViTModel", "DeiTModel"}  # add_pooling_layer defaults to True there

# HF hidden_act -> vitkit act; all are exact equivalents.
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

_BASE_PREFIXES = ("vit.", "deit.")
_HF_MARKERS = ("embeddings.", "encoder.layer.")  # no timm/vitkit key starts so

_EMBED_MAP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
}
_TOP_MAP = {"layernorm": "norm", "pooler.dense": "pre_logits.fc"}
_HEAD_MAP = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
# Per-layer sub-keys: legacy (save_pretrained) and transformers-5 module names.
_LAYER_MAP = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_LAYER_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
_DROPPED = ("embeddings.mask_token",)


def _error(message: str) -> Exception:
    from ..hub import CheckpointError

    return CheckpointError(message)


def _strip_base(key: str) -> str:
    for prefix in _BASE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def looks_like_hf(state: Mapping[str, Any]) -> bool:
    """True for the key names of an HF ViT/DeiT/CvT/Swin state dict (with or without `vit.`/`deit.`/`cvt.`/
    `swin.`)."""
    from .hf_cvt import looks_like_hf_cvt
    from .hf_swin import looks_like_hf_swin

    if looks_like_hf_cvt(state) or looks_like_hf_swin(state):
        return True
    for key in state:
        body = _strip_base(key)
        if body.startswith(_HF_MARKERS) or (body != key and body.startswith("layers.")):
            return True
    return False


def _check_model_type(hf_config: Mapping[str, Any] | None, source: str) -> str | None:
    if hf_config is None:
        return None
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise _error(
            f"{source}: Hugging Face model_type {model_type!r} is not supported; vitkit reads "
            + ", ".join(f"'{t}' ({', '.join(a)})" for t, a in _ARCHITECTURES.items())
        )
    return model_type


def convert_hf_state_dict(
    state: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any] | None = None, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """HF ViT/DeiT keys -> vitkit keys (see the module docstring). Unknown keys pass through."""
    from .hf_cvt import convert_hf_cvt_state_dict, looks_like_hf_cvt

    if _check_model_type(hf_config, source) == "cvt" or (hf_config is None and looks_like_hf_cvt(state)):
        return convert_hf_cvt_state_dict(state, source=source)
    from .hf_swin import looks_like_hf_swin

    if (hf_config is not None and hf_config.get("model_type") == "swin") or (
        hf_config is None and looks_like_hf_swin(state)
    ):  # with no config.json, a bare weights file: Swin by its key names
        from .hf_swin import convert_hf_swin_state_dict

        return convert_hf_swin_state_dict(state, source=source)
    if hf_config is not None and hf_config.get("model_type") == "vit_mae":
        from .hf_mae import convert_hf_mae_state_dict

        return convert_hf_mae_state_dict(state, source=source)
    if hf_config is not None and hf_config.get("model_type") in ("vivit", "timesformer"):
        from .hf_timesformer import convert_hf_timesformer_state_dict
        from .hf_vivit import convert_hf_vivit_state_dict

        convert = (
            convert_hf_vivit_state_dict if hf_config["model_type"] == "vivit" else convert_hf_timesformer_state_dict
        )
        return convert(state, source=source)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, tuple[str, torch.Tensor]]] = {}  # (layer, param) -> q/k/v
    dropped: list[str] = []
    for key, value in state.items():
        body = _strip_base(key)
        if body in _EMBED_MAP:
            out[_EMBED_MAP[body]] = value
            continue
        if body in _DROPPED or key.startswith("decoder."):  # SimMIM decoder: top level
            dropped.append(key)
            continue
        name, _, param = body.rpartition(".")
        if name in _TOP_MAP and param in ("weight", "bias"):
            out[f"{_TOP_MAP[name]}.{param}"] = value
            continue
        if key == body and name in _HEAD_MAP and param in ("weight", "bias"):  # heads sit outside the base model
            out[f"{_HEAD_MAP[name]}.{param}"] = value
            continue
        m = _LAYER_RE.match(body)
        if m:
            i, sub, param = int(m.group(1)), m.group(2), m.group(3)
            if sub in _LAYER_MAP:
                out[f"blocks.{i}.{_LAYER_MAP[sub]}.{param}"] = value
                continue
            if sub in _QKV:
                qkv.setdefault((i, param), {})[_QKV[sub]] = (key, value)
                continue
        out[key] = value  # unknown: left in for the strict loader to report

    for (i, param), parts in sorted(qkv.items()):
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts[n][1] for n in "qkv"], dim=0)
        else:  # incomplete: keep the originals so the loader reports them
            out.update({k: v for k, v in parts.values()})

    if dropped:
        logger.info(
            "%s: ignoring %d Hugging Face key(s) unused at inference (%s)",
            source,
            len(dropped),
            ", ".join(dropped[:3]) + (", ..." if len(dropped) > 3 else ""),
        )

    if "dist_token" in out and "head.weight" in out and "head_dist.weight" not in out:
        # DeiTForImageClassification: the distillation token exists but only [CLS] is classified.
        logger.warning(
            "%s: a Hugging Face DeiTForImageClassification checkpoint classifies from the class token only: "
            "the distillation head is zero-filled, and the model must use distilled_output='cls' to give "
            "HF's logits (from_pretrained sets it)",
            source,
        )
        out["head_dist.weight"] = torch.zeros_like(out["head.weight"])
        if "head.bias" in out:
            out["head_dist.bias"] = torch.zeros_like(out["head.bias"])
    return out


# ------------------------------------------------------------------------------------ config
def _size(value: Any, what: str, source: str) -> int | tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _error(f"{source}: {what} {value!r} is neither an int nor a (height, width) pair")
        h, w = int(value[0]), int(value[1])
        return h if h == w else (h, w)
    return int(value)


def _label_names(hf_config: Mapping[str, Any], num_classes: int) -> list[str] | None:
    id2label = hf_config.get("id2label")
    if not isinstance(id2label, Mapping) or num_classes <= 0 or len(id2label) != num_classes:
        return None
    names = [id2label.get(str(i), id2label.get(i)) for i in range(num_classes)]
    if any(n is None for n in names) or names == [f"LABEL_{i}" for i in range(num_classes)]:
        return None  # incomplete, or HF's placeholders rather than real label names
    return [str(n) for n in names]


def _preprocessing(model_type: str, directory: Path | None) -> dict[str, Any]:
    from ..registry import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD

    if model_type in ("deit", "cvt"):  # DeiT/ConvNext image processors of facebook/deit-*, microsoft/cvt-*: crop 0.875
        cfg: dict[str, Any] = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bicubic")
    else:  # ViTImageProcessor: resize straight to the model size, bilinear, [-1, 1]
        cfg = dict(mean=HALF_MEAN, std=HALF_STD, crop_pct=1.0, interpolation="bilinear")
    path = directory / "preprocessor_config.json" if directory is not None else None
    if path is None or not path.is_file():
        return cfg
    from ..hub import read_json

    proc = read_json(path)
    if proc.get("image_mean") is not None:
        cfg["mean"] = tuple(float(v) for v in proc["image_mean"])
    if proc.get("image_std") is not None:
        cfg["std"] = tuple(float(v) for v in proc["image_std"])
    resample = proc.get("resample")
    if isinstance(resample, int) and resample in _PIL_RESAMPLE:
        cfg["interpolation"] = _PIL_RESAMPLE[resample]
    elif isinstance(resample, str):
        cfg["interpolation"] = resample.lower()

    def side(size: Any) -> float | None:
        if isinstance(size, Mapping):
            size = size.get("height", size.get("shortest_edge"))
        return float(size) if isinstance(size, (int, float)) and size > 0 else None

    if proc.get("crop_pct") is not None:
        cfg["crop_pct"] = float(proc["crop_pct"])
    elif proc.get("do_center_crop"):
        resized, crop = side(proc.get("size")), side(proc.get("crop_size"))
        if resized and crop:
            cfg["crop_pct"] = round(crop / resized, 4)
    else:
        cfg["crop_pct"] = 1.0
    return cfg


def _encoder_fields(hf_config: Mapping[str, Any], source: str, default_act: str):
    """The transformer-encoder fields every HF vision config shares, checked: returns `get` (a config
    lookup where None means the default), hidden size, heads, intermediate size and activation name."""

    def get(name: str, default: Any) -> Any:
        value = hf_config.get(name)
        return default if value is None else value

    hidden, heads = int(get("hidden_size", 768)), int(get("num_attention_heads", 12))
    intermediate = int(get("intermediate_size", 3072))
    if hidden % heads:
        raise _error(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    act = get("hidden_act", default_act)
    if act not in _ACTIVATIONS:
        raise _error(f"{source}: hidden_act {act!r} has no vitkit equivalent; supported: {sorted(_ACTIVATIONS)}")
    return get, hidden, heads, intermediate, act


def config_from_hf(
    hf_config: Mapping[str, Any], source: str = "checkpoint", state_keys: Iterable[str] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, ViTConfig values, pretrained_cfg) for an HF ViT/DeiT `config.json`.

    `state_keys`, the key names of the checkpoint's weights, tell whether it has a pooler and a
    classifier; without them the `architectures` entry (and HF's defaults) decide."""
    model_type = _check_model_type(hf_config, source)
    from ..validate import check_hf_config

    check_hf_config(hf_config, source)  # integer sizes in range, before any division or allocation
    if model_type == "cvt":
        from .hf_cvt import config_from_hf_cvt

        return config_from_hf_cvt(hf_config, source, state_keys)
    if model_type == "swin":
        from .hf_swin import config_from_hf_swin

        return config_from_hf_swin(hf_config, source, state_keys)
    if model_type == "vit_mae":
        from .hf_mae import config_from_hf_mae

        return config_from_hf_mae(hf_config, source, state_keys)
    if model_type in ("vivit", "timesformer"):
        from .hf_timesformer import config_from_hf_timesformer
        from .hf_vivit import config_from_hf_vivit

        video_config = config_from_hf_vivit if model_type == "vivit" else config_from_hf_timesformer
        return video_config(hf_config, source, state_keys)
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch is not None and arch not in _ARCHITECTURES[model_type]:
        raise _error(
            f"{source}: Hugging Face architecture {arch!r} is not supported for model_type "
            f"{model_type!r}; supported: {', '.join(_ARCHITECTURES[model_type])}"
        )

    def get(name: str, default: Any) -> Any:
        value = hf_config.get(name)
        return default if value is None else value

    hidden = int(get("hidden_size", 768))
    heads = int(get("num_attention_heads", 12))
    intermediate = int(get("intermediate_size", 3072))
    if hidden % heads:
        raise _error(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if hf_config.get("head_dim") not in (None, hidden // heads):
        raise _error(
            f"{source}: head_dim {hf_config['head_dim']} != hidden_size / num_attention_heads "
            f"({hidden // heads}); vitkit's attention needs them equal"
        )
    mlp_ratio = intermediate / hidden
    if int(hidden * mlp_ratio) != intermediate:
        raise _error(
            f"{source}: intermediate_size {intermediate} is not reproduced by hidden_size {hidden} "
            f"times an mlp_ratio (int({hidden} * {mlp_ratio!r}) != {intermediate})"
        )
    hidden_act = get("hidden_act", "gelu")
    if hidden_act not in _ACTIVATIONS:
        raise _error(f"{source}: hidden_act {hidden_act!r} has no vitkit equivalent; supported: {sorted(_ACTIVATIONS)}")

    keys = None if state_keys is None else {_strip_base(k) for k in state_keys}
    if keys is not None:
        has_classifier = bool(keys & {"classifier.weight", "cls_classifier.weight"})
        has_teacher_heads = "distillation_classifier.weight" in keys
        has_pooler = "pooler.dense.weight" in keys
    else:
        has_classifier = arch in _CLASSIFIER_ARCHS if arch else True
        has_teacher_heads = arch == "DeiTForImageClassificationWithTeacher"
        has_pooler = arch in _POOLER_ARCHS
    if hf_config.get("num_labels") is not None:
        num_labels = int(hf_config["num_labels"])
    elif isinstance(hf_config.get("id2label"), Mapping):
        num_labels = len(hf_config["id2label"])
    else:
        num_labels = 2  # HF's default
    num_classes = num_labels if has_classifier else 0

    values: dict[str, Any] = dict(
        img_size=_size(get("image_size", 224), "image_size", source),
        patch_size=_size(get("patch_size", 16), "patch_size", source),
        in_chans=int(get("num_channels", 3)),
        num_classes=num_classes,
        global_pool="token",
        embed_dim=hidden,
        depth=int(get("num_hidden_layers", 12)),
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=bool(get("qkv_bias", True)),
        class_token=True,
        fc_norm=False,
        norm_eps=float(get("layer_norm_eps", 1e-6 if model_type == "vit_msn" else 1e-12)),
        act=_ACTIVATIONS[hidden_act],
        pos_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        proj_drop_rate=float(get("hidden_dropout_prob", 0.0)),
        attn_drop_rate=float(get("attention_probs_dropout_prob", 0.0)),
        pos_embed_interp="bicubic",
        pos_embed_antialias=False,  # HF's interpolate_pos_encoding
    )
    if has_pooler:
        pooler_act = get("pooler_act", "tanh")
        if pooler_act != "tanh":
            raise _error(f"{source}: the pooler uses {pooler_act!r}; vitkit's pre-logits layer is Linear + tanh")
        values["representation_size"] = int(get("pooler_output_size", hidden))
    if model_type == "deit":  # DeiTEmbeddings always has the distillation token
        values["distilled"] = True
        values["distilled_output"] = "mean" if has_teacher_heads else "cls"

    directory = Path(source)
    pretrained_cfg = _preprocessing(model_type, directory if directory.is_dir() else None)
    labels = _label_names(hf_config, num_classes)
    if labels:
        pretrained_cfg["label_names"] = labels
    return "vit", values, pretrained_cfg
