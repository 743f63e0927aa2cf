"""Parameter groups and optimizers: weight-decay exclusions and layer-wise LR decay."""

from __future__ import annotations

import re

import torch
from torch import nn

from .config import OptimConfig


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth index of every parameter from the model's `group_matcher()` (timm format).

    0 = stem (embeddings), i + 1 = block i, num_blocks + 1 = everything after (final norm, head).
    Returns (name -> id, number of ids - 1)."""
    matcher = model.group_matcher()
    stem = re.compile(matcher["stem"])
    blocks = matcher["blocks"]
    patterns = [(re.compile(blocks), None)] if isinstance(blocks, str) else [(re.compile(p), s) for p, s in blocks]
    ids: dict[str, int] = {}
    block_ids: set[int] = set()
    for name, _ in model.named_parameters():
        if stem.match(name):
            ids[name] = 0
            continue
        for pattern, suffix in patterns:
            m = pattern.match(name)
            if m and suffix is None and m.groups():
                ids[name] = int(m.group(1)) + 1
                block_ids.add(int(m.group(1)))
                break
        else:
            ids[name] = -1  # after the blocks; fixed up below
    last = (max(block_ids) + 2) if block_ids else 1
    return {n: (last if i == -1 else i) for n, i in ids.items()}, last


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Groups by (decay or not, layer scale). 1-D parameters (norms, biases) and the model's
    `no_weight_decay()` names get no weight decay; with `layer_decay` d, a parameter at depth i
    of L learns at lr * d ** (L - i)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    ids, last = layer_ids(model) if cfg.layer_decay else ({}, 0)
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip
        layer = ids.get(name, last)
        key = (no_decay, layer)
        if key not in groups:
            scale = cfg.layer_decay ** (last - layer) if cfg.layer_decay else 1.0
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr_scale": scale}
        groups[key]["params"].append(p)
    return list(groups.values())


FUSED_DEVICES = ("cpu", "cuda")  # where torch has the fused AdamW and SGD kernels (CPU since torch 2.4)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    fused = cfg.fused and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)
    if cfg.name == "sgd":
        # torch has no DTensor rule for the fused SGD kernel: FSDP2's sharded parameters take the foreach one
        fused = fused and not any(type(p).__name__ == "DTensor" for p in params)
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    raise ValueError(f"unknown optimizer {cfg.name!r}: choose adamw or sgd (--optim.name=sgd)")


def optimizer_step(
    optimizer: torch.optim.Optimizer, lr: float, parameters, clip_grad: float | None, kept=None, scaler=None
) -> torch.Tensor | None:
    """One optimizer step as the runner takes it (vitkit/train/runner.py): every group's learning rate set to
    `lr` times its layer-decay `lr_scale`, the gradients unscaled (fp16: `scaler`, a `torch.amp.GradScaler`)
    and clipped to norm `clip_grad` (None or 0: off), the step (skipped by the scaler when a gradient
    overflowed), the scaler's update, and the gradients zeroed: in place with `kept` (a
    `vitkit.allocator.KeptGradients`, which first takes parameters that got no gradient out of the step),
    otherwise set to None. Returns the gradients' total norm before clipping (None without clipping)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    if kept is not None:
        kept.before_step()
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = nn.utils.clip_grad_norm_(parameters, clip_grad) if clip_grad else None
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if kept is not None:
        kept.zero_grad()
    else:
        optimizer.zero_grad(set_to_none=True)
    return norm
