"""VGG nets with batch norm: the lottery-ticket CIFAR VGGs (configs A/B/D) and the learning-phases V8.

Convs feeding a BN carry no bias (the BN shift makes it redundant). The V8 also takes 1-D sequences
(Conv1d/BatchNorm1d: a V8 for mnist1d) and a BN-free form (``model.norm = "none"``, convs with biases),
the control of the learning-phases experiment.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .common import image_shape, sequence_shape, shape_error

POOL = "M"
# VGG configs A, B, D (Simonyan & Zisserman) without their last pool: a 32x32 input ends at 2x2, then
# global average pooling and one linear layer 512 -> out_dim, as in OpenLTH's CIFAR VGGs.
PLANS: dict[str, tuple[int | str, ...]] = {
    "vgg_cifar_11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512),
    "vgg_cifar_13": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512),
    "vgg_cifar_16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512),
}
PHASES_CHANNELS = (32, 64, 128, 256, 512)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, *, dims: int = 2, norm: bool = True) -> nn.Sequential:
    """conv3x3 (padding 1) - BN - ReLU, indices 0/1/2 inside the block; 1-D convs for ``dims = 1``;
    without BN (``norm = False``) conv - ReLU, the conv with a bias."""
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    if not norm:
        return nn.Sequential(conv(cin, cout, 3, stride, 1, bias=True), nn.ReLU())
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return nn.Sequential(conv(cin, cout, 3, stride, 1, bias=False), bn(cout), nn.ReLU())


class VGGCifar(nn.Module):
    """Conv blocks and pools in ``features``, global average pool ``pool``, output layer ``fc``."""

    output_layer: str = "fc"
    penultimate: str = "pool"

    def __init__(self, name: str, input_shape: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        channels, height, width = image_shape(name, input_shape)
        pools = PLANS[name].count(POOL)
        if min(height, width) < 2 ** pools:
            raise shape_error(name, f"images at least {2 ** pools}x{2 ** pools} for its {pools} 2x2 pools",
                              input_shape, "use larger images (cifar10) or a net for small ones (conv2, resnet_cifar_20)")
        layers: list[nn.Module] = []
        for item in PLANS[name]:
            if item == POOL:
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn_relu(channels, int(item)))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)))


class VGG8Phases(nn.Module):
    """Five stride-2 conv-BN-ReLU blocks ``blocks.0``..``blocks.4``, then ``pool`` (the penultimate
    features probed by the learning-phases experiments) and the output layer ``fc``. ``dims = 1``
    builds the same net for (channels, length) sequences; ``norm = False`` leaves out the BNs."""

    output_layer: str = "fc"
    penultimate: str = "pool"

    def __init__(self, in_channels: int, out_dim: int, channels: tuple[int, ...] = PHASES_CHANNELS, *,
                 dims: int = 2, norm: bool = True) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for cout in channels:
            blocks.append(conv_bn_relu(in_channels, cout, stride=2, dims=dims, norm=norm))
            in_channels = cout
        self.blocks = nn.Sequential(*blocks)
        pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
        self.pool = nn.Sequential(pool, nn.Flatten())  # 32x32 ends at 1x1: a flatten
        self.fc = nn.Linear(in_channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(x)))


def build_vgg_cifar(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> VGGCifar:
    return VGGCifar(cfg.name, input_shape, out_dim)


def build_vgg8_phases(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> VGG8Phases:
    """Any image size works: stride-2 convs with padding 1 never shrink below 1x1; (channels, length)
    sequences get the 1-D form. ``model.channels`` narrows or widens the blocks (a laptop-sized V8),
    one block per entry; ``model.norm = "none"`` is the BN-free control."""
    dims = 1 if len(input_shape) == 2 else 2
    channels = sequence_shape(cfg.name, input_shape)[0] if dims == 1 else image_shape(cfg.name, input_shape)[0]
    return VGG8Phases(channels, out_dim, tuple(cfg.channels) or PHASES_CHANNELS, dims=dims, norm=cfg.norm == "batch")
