"""Learning-rate schedules as explicit per-step values (as DINO's `cosine_scheduler`)."""

from __future__ import annotations

import math


def cosine_schedule(base_lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> list[float]:
    """Linear warm-up from base_lr / warmup_steps to base_lr, then cosine decay to `min_lr`."""
    lrs = []
    for step in range(total_steps):
        if step < warmup_steps:
            lrs.append(base_lr * (step + 1) / warmup_steps)
        else:
            t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            lrs.append(min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t)))
    return lrs
