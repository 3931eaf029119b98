"""The two-layer network of Hu, Xiao, Adlam & Pennington (docs/experiments/linear_dynamics.md), in NTK parametrization:

    f(x) = (1/sqrt(m)) sum_r v_r phi(w_r . x / sqrt(d)),  w: m x d,  v: out_dim x m,  all N(0, 1), no biases.

With the symmetric initialization the second half of the units copies the first half's w and negates
its v, so f0 = 0 without changing the NTK. The forward pass then computes the two halves as separate,
identically laid-out products, so their contributions cancel bit for bit at initialization.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig
from ..errors import UserError

Activation = Callable[[torch.Tensor], torch.Tensor]
ACTIVATIONS: dict[str, Activation] = {"relu": torch.relu, "tanh": torch.tanh, "erf": torch.erf,
                                      "softplus": F.softplus}


def activation_fn(name: str) -> Activation:
    """The elementwise torch function phi for an activation name (also used by the linear model)."""
    if name not in ACTIVATIONS:
        raise UserError(f"model.activation {name!r} is not available for two_layer; use one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy in a new (aligned) buffer, so both halves go through the same kernel path."""
    return t.clone(memory_format=torch.contiguous_format)


class TwoLayer(nn.Module):
    """Parameters ``w`` (m x d) and ``v`` (out_dim x m); the output layer is the parameter ``v``."""

    output_layer: str = "v"
    weight_params: tuple[str, ...] = ("w", "v")  # weights that are parameters, not modules (prunable)

    def __init__(self, d: int, m: int, out_dim: int, activation: str, symmetric: bool) -> None:
        super().__init__()
        if symmetric and m % 2:
            raise UserError(f"model.width must be even for the symmetric two_layer initialization, got {m}; "
                            "use an even width or set model.symmetric = false")
        self.d, self.m, self.symmetric = d, m, symmetric
        self.activation = activation
        self.phi = activation_fn(activation)
        self.w = nn.Parameter(torch.empty(m, d))
        self.v = nn.Parameter(torch.empty(out_dim, m))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 1) draws from the global RNG: w first, then v (half of each when symmetric)."""
        if not self.symmetric:
            self.w.normal_()
            self.v.normal_()
            return
        half = self.m // 2
        w = torch.randn(half, self.d, dtype=self.w.dtype)
        v = torch.randn(self.v.shape[0], half, dtype=self.v.dtype)
        self.w.copy_(torch.cat([w, w]))
        self.v.copy_(torch.cat([v, -v], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        scale_in, scale_out = 1.0 / math.sqrt(self.d), 1.0 / math.sqrt(self.m)
        if not self.symmetric:
            return self.phi(x @ self.w.t() * scale_in) @ self.v.t() * scale_out
        half = self.m // 2
        first, second = (self.phi(x @ _fresh(self.w[p]).t() * scale_in) @ _fresh(self.v[:, p]).t()
                          for p in (slice(0, half), slice(half, self.m)))
        return (first + second) * scale_out

    def extra_repr(self) -> str:
        return f"d={self.d}, m={self.m}, out_dim={self.v.shape[0]}, activation={self.activation}, symmetric={self.symmetric}"


def build_two_layer(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> TwoLayer:
    """d is the number of input entries: vectors as they are, anything else flattened."""
    return TwoLayer(math.prod(input_shape), cfg.width, out_dim, cfg.activation, cfg.symmetric)
