"""Linear mode connectivity: a network's test error along the straight line between two end points
in weight space, and the error barrier (see docs/experiments/instability.md).

Parameters and floating-point buffers (BatchNorm running statistics) are interpolated; integer
buffers (BatchNorm's step counter) are taken from the first end point. With ``reestimate`` set, the
BatchNorm statistics of every point on the path are re-estimated on the given training inputs
instead, since interpolated running statistics do not describe the interpolated weights."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .batchnorm import reestimate_bn


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every floating-point entry; integer entries from ``a``."""
    if set(a) != set(b):
        raise ValueError(f"the end points hold different entries: {sorted(set(a) ^ set(b))[:3]}")
    return {k: torch.lerp(a[k], b[k].to(a[k].dtype), alpha) if a[k].is_floating_point() else a[k].clone()
            for k in a}


@torch.no_grad()
def error_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Fraction of misclassified samples, in eval mode (one output per class, or a sign for +-1)."""
    model.eval()
    wrong = 0
    for i in range(0, x.shape[0], batch):
        out = model(x[i:i + batch])
        yb = y[i:i + batch]
        pred_ok = (out.squeeze(-1).sign() == yb.sign()) if yb.is_floating_point() else (out.argmax(1) == yb)
        wrong += int((~pred_ok).sum())
    return wrong / x.shape[0]


def path_errors(model: torch.nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                alphas: Sequence[float], x: torch.Tensor, y: torch.Tensor, *,
                reestimate: torch.Tensor | None = None, batch: int = 2000) -> list[float]:
    """Error of ``model`` loaded with each point of the path; ``reestimate``: training inputs whose
    BatchNorm statistics replace the interpolated ones at every point."""
    out = []
    for alpha in alphas:
        model.load_state_dict(interpolate_state(a, b, float(alpha)))
        if reestimate is not None:
            reestimate_bn(model, reestimate, batch=500)
        out.append(error_rate(model, x, y, batch))
    return out


def barrier(errors: Sequence[float]) -> float:
    """The error barrier: the path's maximum minus the mean of its two end points."""
    e = np.asarray(errors, dtype=float)
    return float(e.max() - (e[0] + e[-1]) / 2)


def alphas(points: int) -> np.ndarray:
    """``points`` evenly spaced interpolation weights from 0 to 1, ends included."""
    return np.linspace(0.0, 1.0, points)
