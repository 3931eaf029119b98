"""Ridge regression in closed form from streamed sufficient statistics (SPEC §4.1, *ours*).

A linear map from activations X (n x p) to targets Y (n x q) needs only the float64 sums
n, Σx, Σy, XᵀX, XᵀY and Σy² — so the activations are accumulated chunk by chunk and never held
whole. The intercept is not penalized (the data are centred through the sums). The strength λ is
picked per group of target columns (pixels, source labels, target labels) by the squared error on a
held-out part of the training set, computed from that part's sums as well; then the model is refit
on the whole training set. One batched eigendecomposition per layer serves every checkpoint and
every λ of the grid.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# λ candidates, relative to the mean eigenvalue of the centred Gram matrix (its trace / p)
RELATIVE_LAMBDAS: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
MEMORY_BYTES = 2 ** 30  # stacked Gram matrices per batched solve


@dataclass
class Moments:
    """Float64 sufficient statistics of (X, Y) over the rows added so far."""

    n: int
    sx: torch.Tensor  # p
    sy: torch.Tensor  # q
    xx: torch.Tensor  # p x p
    xy: torch.Tensor  # p x q
    yy: torch.Tensor  # q: per-column sum of squares

    @classmethod
    def zeros(cls, p: int, q: int, device: torch.device | str | None = None) -> "Moments":
        z = dict(dtype=torch.float64, device=device)
        return cls(0, torch.zeros(p, **z), torch.zeros(q, **z), torch.zeros(p, p, **z), torch.zeros(p, q, **z),
                   torch.zeros(q, **z))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate rows x (m x p) and targets y (m x q)."""
        if x.shape[0] == 0:
            return
        x, y = x.to(self.xx.device, torch.float64), y.to(self.xx.device, torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx.addmm_(x.T, x)
        self.xy.addmm_(x.T, y)
        self.yy += (y * y).sum(0)

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.sx + other.sx, self.sy + other.sy, self.xx + other.xx,
                       self.xy + other.xy, self.yy + other.yy)


@dataclass
class RidgeFit:
    """Weights (p x q), intercept (q) and the λ chosen for each target column."""

    weight: torch.Tensor
    bias: torch.Tensor
    lam: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight) @ self.weight + self.bias


def _stack(ms: Sequence[Moments]) -> tuple[torch.Tensor, ...]:
    n = torch.tensor([float(m.n) for m in ms], dtype=torch.float64, device=ms[0].xx.device)
    return (n, torch.stack([m.sx for m in ms]), torch.stack([m.sy for m in ms]), torch.stack([m.xx for m in ms]),
            torch.stack([m.xy for m in ms]), torch.stack([m.yy for m in ms]))


def _eigh(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigendecomposition. On the CPU, LAPACK through numpy, one matrix at a time:
    measured here, torch.linalg.eigh took 7 s for one 640 x 640 matrix where numpy took 0.5 s."""
    if c.device.type != "cpu":
        return torch.linalg.eigh(c)
    import numpy as np

    pairs = [np.linalg.eigh(m) for m in c.numpy()]
    return (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))


def _eig(ms: Sequence[Moments]) -> tuple[torch.Tensor, ...]:
    """Centred Gram eigendecomposition and the centred cross moments, batched: (n, mx, my, s, V, VᵀCxy)."""
    n, sx, sy, xx, xy, _ = _stack(ms)
    mx, my = sx / n[:, None], sy / n[:, None]
    cxx = xx - n[:, None, None] * mx[:, :, None] * mx[:, None, :]
    cxy = xy - n[:, None, None] * mx[:, :, None] * my[:, None, :]
    s, v = _eigh(cxx)
    return n, mx, my, s.clamp_min(0.0), v, v.transpose(1, 2) @ cxy


def _weights(s: torch.Tensor, v: torch.Tensor, a: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """W = V diag(1/(s+λ)) Vᵀ Cxy with λ per (item, column): lam is B x q."""
    return v @ (a / (s[:, :, None] + lam[:, None, :]))


def sse(ms: Sequence[Moments], weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-column sum of squared errors of predictions x W + b over the rows behind each Moments,
    from the sums alone: ‖Y‖² - 2 tr(Yᵀ P) + ‖P‖². B x q."""
    n, sx, sy, xx, xy, yy = _stack(ms)
    cross = (weight * xy).sum(1) + bias * sy
    pp = (weight * (xx @ weight)).sum(1) + 2 * bias * (sx[:, None, :] @ weight)[:, 0] + n[:, None] * bias ** 2
    return yy - 2 * cross + pp


def fit_ridge(fit: Sequence[Moments], hold: Sequence[Moments] | None, groups: Sequence[slice],
              lambdas: Sequence[float] = RELATIVE_LAMBDAS) -> list[RidgeFit]:
    """Closed-form ridge for a batch of problems of the same shape (one layer at several checkpoints).

    ``groups`` partition the target columns; each group gets the λ (relative to trace(Cxx)/p) with the
    least held-out squared error, then every problem is refit on fit + held-out sums. With
    ``hold=None`` the smallest λ of the grid is used and nothing is refit."""
    out: list[RidgeFit] = []
    p = fit[0].xx.shape[0]
    per_batch = max(1, int(MEMORY_BYTES // (8 * 3 * p * p + 1)))
    for i in range(0, len(fit), per_batch):
        f = list(fit[i:i + per_batch])
        h = list(hold[i:i + per_batch]) if hold is not None else None
        out.extend(_fit_batch(f, h, groups, lambdas))
    return out


def _fit_batch(fit: list[Moments], hold: list[Moments] | None, groups: Sequence[slice],
               lambdas: Sequence[float]) -> list[RidgeFit]:
    q = fit[0].xy.shape[1]
    n, mx, my, s, v, a = _eig(fit)
    scale = (s.sum(1) / s.shape[1]).clamp_min(1e-30)  # B: mean eigenvalue
    rel = torch.tensor(list(lambdas), dtype=torch.float64, device=s.device)
    chosen = torch.full((len(fit), q), float(rel[0]), dtype=torch.float64, device=s.device)
    if hold is not None and len(rel) > 1:
        errors = []
        for r in rel:
            lam = (scale * r)[:, None].expand(-1, q)
            w = _weights(s, v, a, lam)
            b = my - (mx[:, None, :] @ w)[:, 0]
            errors.append(sse(hold, w, b))  # B x q
        err = torch.stack(errors)  # L x B x q
        for g in groups:
            best = err[:, :, g].sum(2).argmin(0)  # B
            chosen[:, g] = rel[best][:, None]
        n, mx, my, s, v, a = _eig([f + h for f, h in zip(fit, hold)])
        scale = (s.sum(1) / s.shape[1]).clamp_min(1e-30)
    lam = scale[:, None] * chosen
    w = _weights(s, v, a, lam)
    b = my - (mx[:, None, :] @ w)[:, 0]
    return [RidgeFit(w[j], b[j], lam[j]) for j in range(len(fit))]
