"""CIFAR ResNets of He et al. (2016), depth 6n+2: the Frankle et al. paper network (resnet_cifar_20).

Projection shortcuts (1x1 conv + BN) where the shape changes, as in OpenLTH; global average pooling
makes them run on any image size.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from .common import image_shape

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """``stem``, ``stages.0..2`` (n blocks each; stride 2 entering stages 1 and 2), ``pool``, ``fc``."""

    output_layer: str = "fc"
    penultimate: str = "pool"

    def __init__(self, depth: int, in_channels: int, out_dim: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        stages: list[nn.Module] = []
        cin = STAGE_CHANNELS[0]
        for i, cout in enumerate(STAGE_CHANNELS):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if i > 0 and j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(STAGE_CHANNELS[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


def build_resnet(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> ResNetCifar:
    """resnet_cifar_20 (n=3) and resnet_cifar_56 (n=9): the depth is the name's suffix."""
    channels, _, _ = image_shape(cfg.name, input_shape)
    return ResNetCifar(int(cfg.name.rsplit("_", 1)[1]), channels, out_dim)
