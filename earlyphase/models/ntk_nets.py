"""Deeper networks of the linear-dynamics lab (docs/experiments/linear_dynamics.md), in NTK parametrization: every weight is
N(0, 1) and the layer divides by sqrt(fan_in) in its forward pass, so the NTK has a finite width limit.

- ``fc_ntk``: flatten, 3 hidden layers of 512 (``model.widths`` when given), relu, linear output.
- ``cnn_ntk``: three 3x3 convolutions of 64 channels (padding 1), relu, global average pooling, linear.

No biases (as ``two_layer``): the kernel's constant part then comes from the activations alone. The
layers are not ``nn.Linear``/``nn.Conv2d`` on purpose: ``init_weights`` would give those Kaiming
weights. They declare ``ntk_structure`` so that ``earlyphase.probes.ntk`` computes their NTK from
structured Grams.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig

FC_WIDTHS = (512, 512, 512)
CNN_CHANNELS = 64


class NTKLinear(nn.Module):
    """y = W a / sqrt(fan_in), W ~ N(0, 1) of shape (out, in)."""

    ntk_structure = "linear"

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in))
        self.weight_scale = 1.0 / math.sqrt(fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * self.weight_scale


class NTKConv2d(nn.Module):
    """3x3 (or k x k) convolution, stride 1, 'same' padding, W ~ N(0, 1), output / sqrt(C_in k^2)."""

    ntk_structure = "conv2d"
    stride, dilation = (1, 1), (1, 1)

    def __init__(self, c_in: int, c_out: int, k: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.weight_scale = 1.0 / math.sqrt(c_in * k * k)
        self.padding = (k // 2, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=self.padding) * self.weight_scale


class FCNTK(nn.Module):
    output_layer = "out"

    def __init__(self, d: int, widths: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        dims = (d, *widths)
        self.hidden = nn.ModuleList(NTKLinear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = NTKLinear(dims[-1], out_dim)
        self.weight_params = tuple(n for n, _ in self.named_parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)


class CNNNTK(nn.Module):
    output_layer = "out"

    def __init__(self, c_in: int, out_dim: int, channels: int = CNN_CHANNELS) -> None:
        super().__init__()
        self.convs = nn.ModuleList([NTKConv2d(c_in, channels), NTKConv2d(channels, channels),
                                    NTKConv2d(channels, channels)])
        self.out = NTKLinear(channels, out_dim)
        self.weight_params = tuple(n for n, _ in self.named_parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = torch.relu(conv(h))
        return self.out(h.mean(dim=(2, 3)))


def build_fc_ntk(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> FCNTK:
    """``model.widths`` when set away from the mlp default (300, 100), else 3 x 512."""
    widths = FC_WIDTHS if tuple(cfg.widths) == (300, 100) else tuple(cfg.widths)
    return FCNTK(math.prod(input_shape), widths, out_dim)


def build_cnn_ntk(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> CNNNTK:
    """Images (C, H, W); a flat vector is read as one channel of a square image if it is one."""
    if len(input_shape) == 3:
        return CNNNTK(input_shape[0], out_dim)
    from ..errors import UserError

    raise UserError(f"model cnn_ntk needs image inputs (C, H, W), got shape {input_shape}; use fc_ntk or two_layer")
