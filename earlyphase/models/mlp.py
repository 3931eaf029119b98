"""Fully connected networks: ``mlp`` (configurable widths) and LeNet-300-100, the lottery-ticket MLP."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Flatten, hidden Linear+activation layers in ``body``, then the linear output layer ``fc``."""

    output_layer: str = "fc"
    penultimate: str = "body"  # its output feeds the output layer

    def __init__(self, in_features: int, widths: tuple[int, ...], out_dim: int, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"model.activation {activation!r} is not available for mlp; "
                            f"use one of: {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in widths:
            layers += [nn.Linear(prev, width), ACTIVATIONS[activation]()]
            prev = width
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def build_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> MLP:
    """Any input shape works: the input is flattened."""
    return MLP(math.prod(input_shape), tuple(cfg.widths), out_dim, cfg.activation)


def build_lenet_300_100(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> MLP:
    """LeNet-300-100 is mlp with widths (300, 100), whatever cfg.widths says."""
    return MLP(math.prod(input_shape), (300, 100), out_dim, cfg.activation)
