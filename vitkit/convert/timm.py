"""Fit a timm-keyed state dict (timm, official DeiT/DINO/MAE releases) to a vitkit ViT.

vitkit keeps timm's key names, so this is an identity map with a short list of documented
adaptations, each of which is logged:
    - keys of the self-supervised wrappers that are not part of the backbone are dropped: MAE's
      decoder (`decoder_*`, `mask_token`);
    - position embeddings trained on another grid are resampled (bicubic, antialias: as timm);
    - old timm checkpoints with a linear patch projection (D, C*p*p) are reshaped to the conv;
    - a head with another number of classes, or no head at all (feature checkpoints), leaves
      the model's freshly zero-initialised head in place.

`config_from_timm` reads the config.json of a folder written by timm's `save_for_hf` / `push_to_hf_hub`
(model name, `model_args`, `num_classes`, `pretrained_cfg`) into a vitkit model configuration.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from ..layers import resample_abs_pos_embed

logger = logging.getLogger("vitkit")

_HEAD_PREFIXES = ("head.", "head_dist.")
_MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def _grid_of(n: int, model) -> tuple[int, int]:
    """The (h, w) grid of `n` checkpoint position embeddings: the model's aspect ratio if it fits."""
    gh, gw = model.patch_embed.grid_size
    if gh != gw:
        scale = math.sqrt(n / (gh * gw))
        h, w = round(gh * scale), round(gw * scale)
        if h * w == n:
            return h, w
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot infer the grid of {n} position embeddings in the checkpoint")
    return side, side


def adapt_checkpoint(model, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    state = dict(state)
    expected = model.state_dict()

    dropped = sorted(k for k in state if k.startswith(_MAE_DECODER_PREFIXES) and k not in expected)
    if dropped:
        logger.warning(
            "%s: ignoring %d MAE decoder key(s) (%s, ...): only the encoder is loaded", source, len(dropped), dropped[0]
        )
        for k in dropped:
            del state[k]

    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 2 and "patch_embed.proj.weight" in expected:
        target = expected["patch_embed.proj.weight"].shape
        if w.numel() == target.numel():  # linear patchify of very old timm checkpoints
            state["patch_embed.proj.weight"] = w.reshape(target)

    pos = state.get("pos_embed")
    same_prefix = ("cls_token" in state) == (model.cls_token is not None) and ("dist_token" in state) == (
        model.dist_token is not None
    )  # else the strict loader reports the tokens
    if (
        pos is not None
        and pos.ndim == 3
        and "pos_embed" in expected
        and same_prefix
        and pos.shape != expected["pos_embed"].shape
    ):
        prefix = model.num_prefix_tokens
        old = _grid_of(pos.shape[1] - prefix, model)
        new = model.patch_embed.grid_size
        if pos.shape[-1] == expected["pos_embed"].shape[-1]:
            state["pos_embed"] = resample_abs_pos_embed(
                pos,
                new,
                old_size=old,
                num_prefix_tokens=prefix,
                interpolation=model.config.pos_embed_interp,
                antialias=model.config.pos_embed_antialias,
            )
            logger.info(
                "%s: resampled position embeddings from a %dx%d to a %dx%d grid (%s)",
                source,
                *old,
                *new,
                model.config.pos_embed_interp,
            )

    fit_heads(model, state, expected, source)
    return state


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """timm's `adapt_input_conv`: first-convolution weights (O, I, *kernel) trained on I channels, for
    `in_chans` channels. One channel sums the I filters (a grey image then gives what its RGB copy gave);
    more repeats them and scales by I / in_chans."""
    base = weight.shape[1]
    if in_chans == base:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / base), *([1] * (w.ndim - 2)))[:, :in_chans] * (base / in_chans)
    return w.to(weight.dtype)


def adapt_input_convs(model, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Fit the checkpoint's first convolution(s) (`model.pretrained_cfg['first_conv']`) to the model's number
    of input channels, as timm's `load_pretrained` does for `in_chans` other than the weights' (logged)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    expected = model.state_dict()
    for name in [names] if isinstance(names, str) else list(names or ()):
        key = f"{name}.weight"
        w, target = state.get(key), expected.get(key)
        if w is None or target is None or w.ndim < 3 or w.shape == target.shape:
            continue
        if w.shape[:1] + w.shape[2:] != target.shape[:1] + target.shape[2:]:
            continue  # another size, not another channel count: the loader's mismatch report names it
        state[key] = adapt_input_conv(target.shape[1], w)
        logger.info(
            "%s: converted the input convolution %s from %d to %d channel(s), as timm does",
            source,
            name,
            w.shape[1],
            target.shape[1],
        )


def fit_heads(model, state, expected, source) -> None:
    """Per head (`head`, `head_dist`): keep the checkpoint's if it fits, else keep the model's fresh one."""
    for prefix in _HEAD_PREFIXES:
        model_head = {k: v for k, v in expected.items() if k.startswith(prefix)}
        ckpt_head = {k: v for k, v in state.items() if k.startswith(prefix)}
        if not model_head:
            if ckpt_head and model.num_classes == 0:
                logger.warning(
                    "%s: the model has no classifier (num_classes=0): ignoring the checkpoint's %s",
                    source,
                    prefix.rstrip("."),
                )
                for k in ckpt_head:
                    del state[k]
            continue  # a head_dist the model lacks is left for the strict loader to report
        if ckpt_head.keys() == model_head.keys() and all(ckpt_head[k].shape == v.shape for k, v in model_head.items()):
            continue
        if ckpt_head:
            n_ckpt = next((v.shape[0] for k, v in ckpt_head.items() if k.endswith("weight")), "?")
            logger.warning(
                "%s: the checkpoint's %s has %s classes and the model's %d: it is re-initialised "
                "(zeros) and must be trained",
                source,
                prefix.rstrip("."),
                n_ckpt,
                model.num_classes,
            )
        else:
            logger.warning(
                "%s: the checkpoint has no %s (a feature/pre-training checkpoint): the model's "
                "%d-class %s is freshly initialised (zeros) and must be trained",
                source,
                prefix.rstrip("."),
                model.num_classes,
                prefix.rstrip("."),
            )
        for k in ckpt_head:
            del state[k]
        state.update({k: v.clone() for k, v in model_head.items()})


# ------------------------------------------------------------------------------------ timm Hub folders
# timm model arguments that vitkit's configs lack, with the value that means "as vitkit does"; any other
# value (say reg_tokens=4) describes a network vitkit does not build, and is refused by name.
_TIMM_NEUTRAL_ARGS: dict[str, Any] = {
    "qk_norm": False,
    "no_embed_class": False,
    "reg_tokens": 0,
    "pre_norm": False,
    "final_norm": True,
    "dynamic_img_pad": False,
    "use_naflex": False,
    "strict_img_size": True,
    "always_partition": False,
    "head_dim": None,
    "nlhb": False,
    "stem_norm": False,
    "scale_attn_norm": False,
    "scale_mlp_norm": False,
    "proj_bias": True,
    "pos_embed": "learn",
    "embed_norm": False,
    "embed_proj_type": "linear",
}
# timm argument name -> vitkit config field, per family
_TIMM_ARG_ALIASES: dict[str, dict[str, str]] = {"mixer": {"num_blocks": "depth"}}


def _listify(value: Any) -> Any:
    return tuple(_listify(v) for v in value) if isinstance(value, list) else value


def config_from_timm(
    cfg: Mapping[str, Any], source: str = "config.json"
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """(model name, family, config values, pretrained_cfg) for the config.json of a timm Hub folder.

    timm's `save_for_hf` / `push_to_hf_hub` write `architecture` (the timm model name, e.g.
    "vit_base_patch16_224"), `num_classes`, `pretrained_cfg` and `model_args` (the keyword arguments the
    model was created with); older exports hold the pretrained cfg at the top level instead. The model is
    vitkit's model of that name with timm's `model_args` applied, and, as timm's factory does, the
    pretrained cfg's `num_classes`, and its `input_size` for `in_chans` (and for `img_size` where
    `fixed_input_size`) unless `model_args` names them."""
    from dataclasses import fields

    from ..hub import CheckpointError
    from ..models import FAMILIES
    from ..registry import base_pretrained_cfg, get_model_spec

    cfg = dict(cfg)
    if "pretrained_cfg" not in cfg:  # timm's older single-dict layout
        pretrained = {k: v for k, v in cfg.items() if k not in ("architecture", "num_features")}
        if "labels" in pretrained:
            pretrained["label_names"] = pretrained.pop("labels")
        cfg = {"architecture": cfg["architecture"], "pretrained_cfg": pretrained}
    pretrained = dict(cfg.get("pretrained_cfg") or {})
    if "num_classes" in cfg:
        pretrained["num_classes"] = cfg["num_classes"]
    for key in ("label_names", "label_descriptions"):
        if key in cfg:
            pretrained[key] = cfg[key]
    name = str(cfg["architecture"]).partition(".")[0]
    try:
        spec = get_model_spec(name)
    except ValueError:
        raise CheckpointError(
            f"{source} is a timm {name!r} model, which vitkit does not implement; vitkit builds these timm "
            f"architectures: vitkit.list_models() (for example 'vit_base_patch16_224', "
            f"'swin_tiny_patch4_window7_224')"
        ) from None
    known = {f.name for f in fields(FAMILIES[spec.family].config_class)}
    aliases = _TIMM_ARG_ALIASES.get(spec.family, {})
    values = dict(spec.config)
    refused = []
    model_args = dict(cfg.get("model_args") or {})
    for key, value in model_args.items():
        field = aliases.get(key, key)
        if field in known:
            values[field] = _listify(value)
        elif key in _TIMM_NEUTRAL_ARGS and _listify(value) == _TIMM_NEUTRAL_ARGS[key]:
            continue
        else:
            refused.append(f"{key}={value!r}")
    if refused:
        raise CheckpointError(
            f"{source}: timm model argument(s) {', '.join(refused)} of {name!r} have no vitkit equivalent (vitkit's "
            f"{FAMILIES[spec.family].config_class.__name__} fields: {sorted(known)})"
        )
    input_size = pretrained.get("input_size")
    if isinstance(input_size, (list, tuple)) and len(input_size) == 3:
        if "in_chans" not in model_args and "in_chans" in known:
            values["in_chans"] = int(input_size[0])
        if pretrained.get("fixed_input_size") and "img_size" not in model_args and "img_size" in known:
            h, w = int(input_size[1]), int(input_size[2])
            values["img_size"] = h if h == w else (h, w)
    num_classes = pretrained.get("num_classes")
    if "num_classes" not in model_args and isinstance(num_classes, int) and num_classes >= 0 and "num_classes" in known:
        values["num_classes"] = num_classes
    out_cfg = base_pretrained_cfg(name)
    out_cfg.update({k: _listify(v) if k != "classifier" else v for k, v in pretrained.items()})
    out_cfg["architecture"] = name
    return name, spec.family, values, out_cfg
