"""The transformer MLP: Linear -> GELU -> Dropout -> Linear -> Dropout (timm keys `fc1`, `fc2`)."""

from __future__ import annotations

import torch
from torch import nn

from .linear import Linear

# Activations by the names configs use. 'gelu_tanh' is the tanh approximation that HF calls
# gelu_new / gelu_pytorch_tanh / gelu_fast (the last differs only in how the constant is written).
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class Mlp(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act: str = "gelu",
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = make_activation(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features or in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
