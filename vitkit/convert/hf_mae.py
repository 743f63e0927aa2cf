"""Hugging Face `transformers` ViTMAE checkpoints (model_type "vit_mae") -> vitkit.

Source: `transformers` (checked against 5.23) `models/vit_mae/modeling_vit_mae.py`.
    - `ViTMAEForPreTraining` -> vitkit's MAE model (`vitkit.models.mae.MaskedAutoencoder`, family
      "mae"): given the same masking `noise`, its reconstruction and loss equal HF's
      (tests/methods/test_mae.py);
    - `ViTMAEModel` (the encoder alone) -> a vitkit ViT with no head (`num_classes=0`). Note that
      HF's `ViTMAEModel.forward` masks 75% of the patches at random; the vitkit ViT encodes all.

Key map (HF -> vitkit). The encoder `vit.*` goes through the ViT map of `hf.py` and gets the
prefix `encoder.`; the decoder keeps MAE's official names:
    vit.{embeddings,encoder.layer.{i},layernorm}.*          -> encoder.* (see hf.py)
    decoder.decoder_embed / decoder_norm / decoder_pred     -> decoder_embed / decoder_norm / decoder_pred
    decoder.mask_token, decoder.decoder_pos_embed           -> mask_token, decoder_pos_embed
    decoder.decoder_encoder.layer.{i}.* (on disk), decoder.decoder_layers.{i}.* (5.x in memory)
                                                            -> decoder_blocks.{i}.* (the ViT layer map)
The position embeddings of both are fixed sin-cos tables in HF too and are copied as stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

_DECODER_LAYER_RE = re.compile(r"^decoder\.(?:decoder_encoder\.layer|decoder_layers)\.(\d+)\.(.+)$")
_DECODER_TOP = ("decoder_embed", "decoder_norm", "decoder_pred", "mask_token", "decoder_pos_embed")


def is_pretraining(keys: Iterable[str]) -> bool:
    """True for a `ViTMAEForPreTraining` state dict (it has the decoder)."""
    return any(k.startswith("decoder.") for k in keys)


def convert_hf_mae_state_dict(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF ViTMAE keys -> vitkit keys: MAE model keys with a decoder, plain ViT keys without."""
    from .hf import convert_hf_state_dict

    if not is_pretraining(state):
        return convert_hf_state_dict(state, None, source=source)
    encoder = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    out = {f"encoder.{k}": v for k, v in convert_hf_state_dict(encoder, None, source=source).items()}
    layers: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("decoder."):
            continue
        m = _DECODER_LAYER_RE.match(key)
        if m:  # the decoder layers are ViT layers: convert them with the ViT map
            layers[f"encoder.layer.{m.group(1)}.{m.group(2)}"] = value
            continue
        body = key[len("decoder.") :]
        out[body if body.split(".")[0] in _DECODER_TOP else key] = value  # unknown keys: left for the loader
    for key, value in convert_hf_state_dict(layers, None, source=source).items():
        out[f"decoder_{key}" if key.startswith("blocks.") else key] = value
    return out


def config_from_hf_mae(
    hf_config: Mapping[str, Any], source: str = "checkpoint", state_keys: Iterable[str] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, config values, pretrained_cfg) for a ViTMAE `config.json`: "mae" for
    `ViTMAEForPreTraining`, "vit" (no head) for `ViTMAEModel`."""
    from ..models.mae import ENCODER_FIELDS
    from ..registry import IMAGENET_MEAN, IMAGENET_STD
    from .hf import _error, config_from_hf

    keys = list(state_keys) if state_keys is not None else None
    archs = hf_config.get("architectures") or []
    pretraining = is_pretraining(keys) if keys is not None else (not archs or archs[0] == "ViTMAEForPreTraining")
    encoder_keys = None if keys is None else [k for k in keys if not k.startswith("decoder.")]
    as_vit = dict(hf_config, model_type="vit", architectures=["ViTModel"])
    _, values, pretrained_cfg = config_from_hf(as_vit, source=source, state_keys=encoder_keys or [])
    directory = Path(source)
    if not (directory.is_dir() and (directory / "preprocessor_config.json").is_file()):
        pretrained_cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)  # facebook/vit-mae-*: ImageNet statistics
    if not pretraining:
        return "vit", values, pretrained_cfg

    def get(name: str, default: Any) -> Any:
        value = hf_config.get(name)
        return default if value is None else value

    dec_hidden = int(get("decoder_hidden_size", 512))
    dec_inter = int(get("decoder_intermediate_size", 2048))
    dec_heads = int(get("decoder_num_attention_heads", 16))
    if dec_hidden % dec_heads:
        raise _error(
            f"{source}: decoder_hidden_size {dec_hidden} is not divisible by decoder_num_attention_heads {dec_heads}"
        )
    if int(dec_hidden * (dec_inter / dec_hidden)) != dec_inter:
        raise _error(
            f"{source}: decoder_intermediate_size {dec_inter} is not a multiple vitkit can express of "
            f"decoder_hidden_size {dec_hidden}"
        )
    mae = {f: values.pop(f) for f in ENCODER_FIELDS}
    values.pop("num_classes", None)
    mae.update(
        encoder_kwargs=values,  # HF's remaining ViT settings (dropouts, HF's position-embedding resampling)
        decoder_embed_dim=dec_hidden,
        decoder_depth=int(get("decoder_num_hidden_layers", 8)),
        decoder_num_heads=dec_heads,
        decoder_mlp_ratio=dec_inter / dec_hidden,
        mask_ratio=float(get("mask_ratio", 0.75)),
        norm_pix_loss=bool(get("norm_pix_loss", False)),
    )
    return "mae", mae, pretrained_cfg
