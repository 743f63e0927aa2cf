"""Model size and cost: parameter counts and multiply-accumulates (GMACs, the unit vision papers
call "FLOPs"), computed on the meta device so even ViT-H costs nothing to measure.

MACs are `torch.utils.flop_counter.FlopCounterMode` FLOPs / 2: matmuls and convolutions only
(layer norms, softmax and activations are not counted, as in fvcore and the papers' tables).
Attention is counted on the eager path, whose matmuls the counter sees.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .layers import eager_attention, to_2tuple


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_gmacs(name: str, img_size: int | tuple[int, int] | None = None, **overrides) -> float:
    """GMACs of one forward pass of a registered model on one image, in eval mode."""
    from .registry import create_model

    with torch.device("meta"):
        kw = {"img_size": img_size} if img_size is not None else {}
        model = create_model(name, **kw, **overrides).eval()
        return gmacs(model)


def gmacs(model: torch.nn.Module, input_size: tuple[int, ...] | None = None, forward=None) -> float:
    """GMACs of `model` on one input of `input_size` (default: (in_chans, *img_size) of its config;
    (in_chans, num_frames, *img_size) for video models).

    `forward` (default: `model`) is the callable measured, e.g. a method running part of the model
    (the DVT's cost of leaving at each exit)."""
    if input_size is None:
        c = model.config
        input_size = (c.in_chans, *to_2tuple(c.img_size))
        if getattr(c, "num_frames", None):  # video models: one clip (C, T, H, W)
            input_size = (c.in_chans, c.num_frames, *to_2tuple(c.img_size))
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, eager_attention(), torch.no_grad():
        (forward or model)(x)
    model.train(was_training)
    return counter.get_total_flops() / 2e9
