"""The small 1-D conv net of the laptop lottery preset (mnist1d): three strided convs and one linear."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .common import sequence_shape

# (out_channels, kernel, stride, padding) of the three convs; length 40 -> 20 -> 10 -> 5, so 32*5 = 160
CONVS: tuple[tuple[int, int, int, int], ...] = ((32, 5, 2, 2), (32, 3, 2, 1), (32, 3, 2, 1))


class CNN1d(nn.Module):
    """Conv1d-ReLU x3 and Flatten in ``body``; linear output layer ``fc`` sized from the input length."""

    output_layer: str = "fc"
    penultimate: str = "body"

    def __init__(self, in_channels: int, length: int, out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels, kernel, stride, padding in CONVS:
            layers += [nn.Conv1d(channels, out_channels, kernel, stride, padding), nn.ReLU()]
            channels = out_channels
            length = (length + 2 * padding - kernel) // stride + 1
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(channels * length, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def build_cnn1d(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> CNN1d:
    """Needs (channels, length) inputs; any length >= 1 works (padding keeps every stage non-empty)."""
    channels, length = sequence_shape(cfg.name, input_shape)
    return CNN1d(channels, length, out_dim)
