"""Fit a timm-keyed state dict (timm, official DeiT/DINO/MAE releases) to a vitkit ViT.

vitkit keeps timm's key names, so this is an identity map with a short list of documented
adaptations, each of which is logged:
    - keys of the self-supervised wrappers that are not part of the backbone are dropped: MAE's
      decoder (`decoder_*`, `mask_token`);
    - position embeddings trained on another grid are resampled (bicubic, antialias: as timm);
    - old timm checkpoints with a linear patch projection (D, C*p*p) are reshaped to the conv;
    - a head with another number of classes, or no head at all (feature checkpoints), leaves
      the model's freshly zero-initialised head in place.
"""

from __future__ import annotations

import logging
import math

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
        logger.warning("%s: ignoring %d MAE decoder key(s) (%s, ...): only the encoder is loaded",
                       source, len(dropped), dropped[0])
        for k in dropped:
            del state[k]

    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 2 and "patch_embed.proj.weight" in expected:
        target = expected["patch_embed.proj.weight"].shape
        if w.numel() == target.numel():  # linear patchify of very old timm checkpoints
            state["patch_embed.proj.weight"] = w.reshape(target)

    pos = state.get("pos_embed")
    same_prefix = ("cls_token" in state) == (model.cls_token is not None) and \
        ("dist_token" in state) == (model.dist_token is not None)  # else the strict loader reports the tokens
    if (pos is not None and pos.ndim == 3 and "pos_embed" in expected and same_prefix
            and pos.shape != expected["pos_embed"].shape):
        prefix = model.num_prefix_tokens
        old = _grid_of(pos.shape[1] - prefix, model)
        new = model.patch_embed.grid_size
        if pos.shape[-1] == expected["pos_embed"].shape[-1]:
            state["pos_embed"] = resample_abs_pos_embed(
                pos, new, old_size=old, num_prefix_tokens=prefix,
                interpolation=model.config.pos_embed_interp, antialias=model.config.pos_embed_antialias,
            )
            logger.info("%s: resampled position embeddings from a %dx%d to a %dx%d grid (%s)",
                        source, *old, *new, model.config.pos_embed_interp)

    _fit_heads(model, state, expected, source)
    return state


def _fit_heads(model, state, expected, source) -> None:
    """Per head (`head`, `head_dist`): keep the checkpoint's if it fits, else keep the model's fresh one."""
    for prefix in _HEAD_PREFIXES:
        model_head = {k: v for k, v in expected.items() if k.startswith(prefix)}
        ckpt_head = {k: v for k, v in state.items() if k.startswith(prefix)}
        if not model_head:
            if ckpt_head and model.num_classes == 0:
                logger.warning("%s: the model has no classifier (num_classes=0): ignoring the checkpoint's %s",
                               source, prefix.rstrip("."))
                for k in ckpt_head:
                    del state[k]
            continue  # a head_dist the model lacks is left for the strict loader to report
        if ckpt_head.keys() == model_head.keys() and all(ckpt_head[k].shape == v.shape for k, v in model_head.items()):
            continue
        if ckpt_head:
            n_ckpt = next((v.shape[0] for k, v in ckpt_head.items() if k.endswith("weight")), "?")
            logger.warning("%s: the checkpoint's %s has %s classes and the model's %d: it is re-initialised "
                           "(zeros) and must be trained", source, prefix.rstrip("."), n_ckpt, model.num_classes)
        else:
            logger.warning("%s: the checkpoint has no %s (a feature/pre-training checkpoint): the model's "
                           "%d-class %s is freshly initialised (zeros) and must be trained",
                           source, prefix.rstrip("."), model.num_classes, prefix.rstrip("."))
        for k in ckpt_head:
            del state[k]
        state.update({k: v.clone() for k, v in model_head.items()})
