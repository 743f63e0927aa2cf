"""Whether a model is being traced symbolically by `torch.fx`.

Under `torch.fx.symbolic_trace` (and timm's / torchvision's feature extractors built on it) tensor
shapes are `Proxy` objects: a Python `if` on them cannot be decided. vitkit's forward passes keep
their input checks (with messages that say what is wrong and how to fix it) and their shape-dependent
shortcuts for eager runs, and skip them while fx traces: the traced graph then takes the general path.
`torch.export` and `torch.compile` see real (or fake) shapes and run the checks as usual.
"""

from __future__ import annotations

import torch.fx  # noqa: F401  (loads torch.fx._symbolic_trace)

try:  # torch >= 2.2: true only under symbolic tracing, not under make_fx / export
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _is_symbolic
except ImportError:  # pragma: no cover - older torch
    from torch.fx._symbolic_trace import is_fx_tracing as _is_symbolic


def is_fx_tracing() -> bool:
    """True while `torch.fx` traces the model symbolically."""
    return bool(_is_symbolic())


__all__ = ["is_fx_tracing"]
