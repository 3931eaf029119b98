"""The linear model's coefficients (docs/experiments/linear_dynamics.md) for any activation, from phi alone.

With g ~ N(0, 1): zeta = E[phi'(g)], E[phi''(g)] and E[phi(g)]. Stein's identities move the
derivatives onto the Gaussian density, zeta = E[g phi(g)] and E[phi''(g)] = E[(g^2 - 1) phi(g)], so
only phi itself is evaluated: a kink (relu at 0), where phi'' is a delta, needs no special case. The
integrals are Gauss-Legendre quadrature on [-L, L] (tails beyond L = 12 weigh below 1e-30), split at
the activation's kinks so that every piece is smooth and converges exponentially; 1e-12 accuracy is
typical, well inside the 1e-6 the tests ask for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..models.two_layer import activation_fn

KINKS: dict[str, tuple[float, ...]] = {"relu": (0.0,)}  # where a built-in activation is not smooth
_L = 12.0
_NODES = 160


@dataclass(frozen=True)
class Moments:
    """Gaussian moments of an activation: E[phi(g)], zeta = E[phi'(g)], E[phi''(g)]."""

    mean: float
    zeta: float
    second: float

    def nu1(self, tr_sigma2: float, d: int) -> float:
        """nu1 = E[phi''] sqrt(tr(Sigma^2) / d)."""
        return self.second * math.sqrt(tr_sigma2 / d)

    def nu2(self, tr_sigma2: float, d: int) -> float:
        """nu2 = sqrt(E[phi]^2 + E[phi'']^2 tr(Sigma^2) / (2 d^2))."""
        return math.sqrt(self.mean ** 2 + self.second ** 2 * tr_sigma2 / (2 * d * d))


def gaussian_expectation(h: Callable[[np.ndarray], np.ndarray], kinks: Sequence[float] = ()) -> float:
    """E[h(g)], g ~ N(0, 1), for h smooth between ``kinks``."""
    x, w = np.polynomial.legendre.leggauss(_NODES)
    edges = [-_L, *sorted(k for k in kinks if -_L < k < _L), _L]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        g = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
        total += 0.5 * (hi - lo) * float(np.sum(w * h(g) * np.exp(-0.5 * g * g)))
    return total / math.sqrt(2 * math.pi)


def moments(activation: str | Callable[[torch.Tensor], torch.Tensor], kinks: Sequence[float] | None = None) -> Moments:
    """Moments of a built-in activation by name (unknown names: a UserError naming the choices), or
    of any elementwise torch function with its kinks."""
    if isinstance(activation, str):
        kinks = KINKS.get(activation, ()) if kinks is None else kinks
        activation = activation_fn(activation)

    def phi(g: np.ndarray) -> np.ndarray:
        return activation(torch.from_numpy(g)).numpy()

    kinks = tuple(kinks or ())
    return Moments(mean=gaussian_expectation(phi, kinks),
                   zeta=gaussian_expectation(lambda g: g * phi(g), kinks),
                   second=gaussian_expectation(lambda g: (g * g - 1.0) * phi(g), kinks))
