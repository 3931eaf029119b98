"""Conv-2/4/6 of Frankle & Carbin (2019): pairs of 3x3 convs with max pools, then FC 256-256-out.

The flatten size is computed from the input, so the same nets run on 32x32 CIFAR and 8x8 digits.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .common import image_shape, shape_error

POOL = "M"
PLANS: dict[str, tuple[int | str, ...]] = {
    "conv2": (64, 64, POOL),
    "conv4": (64, 64, POOL, 128, 128, POOL),
    "conv6": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL),
}


class ConvNet(nn.Module):
    """Convs and pools in ``features``, two hidden FC layers in ``hidden``, output layer ``fc``."""

    output_layer: str = "fc"
    penultimate: str = "hidden"

    def __init__(self, name: str, input_shape: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        channels, height, width = image_shape(name, input_shape)
        layers: list[nn.Module] = []
        for item in PLANS[name]:
            if item == POOL:
                height, width = height // 2, width // 2
                if height == 0 or width == 0:
                    raise shape_error(name, f"images large enough for its {PLANS[name].count(POOL)} 2x2 pools",
                                      input_shape, "use larger images or a shallower net (conv2, conv4)")
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(channels * height * width, 256), nn.ReLU(),
                                    nn.Linear(256, 256), nn.ReLU())
        self.fc = nn.Linear(256, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.features(x)))


def build_conv(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> ConvNet:
    return ConvNet(cfg.name, input_shape, out_dim)
