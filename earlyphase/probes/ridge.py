"""Ridge regression in closed form from streamed sufficient statistics (docs/experiments/learning_phases.md, *ours*).

A linear map from activations X (n x p) to targets Y (n x q) needs only the sums
n, Σx, Σy, XᵀX, XᵀY and Σy² — so the activations are accumulated chunk by chunk and never held
whole. The sums are kept in float64 about a reference point (the means of the first chunk added), so
that each chunk's products can be taken in the inputs' precision: float32 activations give float32
matrix products (about 2x faster on a CPU) on nearly centred data, added into float64 totals;
float64 inputs stay float64 throughout. The intercept is not penalized (the data are centred through
the sums). The strength λ is picked per group of target columns (pixels, source labels, target
labels) by the squared error on a held-out part of the training set, computed from that part's sums
for every λ of the grid from one eigendecomposition of the fit part's Gram matrix; then the model is
refit on the whole training set with one Cholesky solve per group. All of it is batched over problems
of the same shape (one layer at several checkpoints).
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
    """Float64 sufficient statistics of (X, Y) over the rows added so far, about the reference point
    (cx, cy): sx = Σ(x - cx), xx = Σ(x - cx)(x - cx)ᵀ, xy = Σ(x - cx)(y - cy)ᵀ, yy = Σ(y - cy)² per column."""

    n: int
    sx: torch.Tensor  # p
    sy: torch.Tensor  # q
    xx: torch.Tensor  # p x p
    xy: torch.Tensor  # p x q
    yy: torch.Tensor  # q
    cx: torch.Tensor  # p: reference point (the first chunk's mean; zeros while empty)
    cy: torch.Tensor  # q

    @classmethod
    def zeros(cls, p: int, q: int, device: torch.device | str | None = None) -> "Moments":
        z = dict(dtype=torch.float64, device=device)
        return cls(0, torch.zeros(p, **z), torch.zeros(q, **z), torch.zeros(p, p, **z), torch.zeros(p, q, **z),
                   torch.zeros(q, **z), torch.zeros(p, **z), torch.zeros(q, **z))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate rows x (m x p) and targets y (m x q). Products are taken in float32 when both
        are float32 (or lower), else in float64; the totals are float64."""
        if x.shape[0] == 0:
            return
        low = x.dtype in (torch.float32, torch.float16, torch.bfloat16) and y.dtype in (
            torch.float32, torch.float16, torch.bfloat16)
        dtype = torch.float32 if low else torch.float64
        dev = self.xx.device
        x, y = x.to(dev, dtype), y.to(dev, dtype)
        if self.n == 0:  # reference point: this chunk's mean (in float64)
            self.cx = x.double().mean(0)
            self.cy = y.double().mean(0)
        x = x - self.cx.to(dtype)  # new tensors: y is squared in place below
        y = y - self.cy.to(dtype)
        self.n += x.shape[0]
        # chunk sums in the chunk's precision (a float64 reduction of float32 data is several times
        # slower), then into the float64 totals
        self.sx += x.sum(0).double()
        self.sy += y.sum(0).double()
        xt = x.T
        self.xx += (xt @ x).double()
        self.xy += (xt @ y).double()
        self.yy += y.square_().sum(0).double()

    def shifted(self, cx: torch.Tensor, cy: torch.Tensor) -> "Moments":
        """The same statistics about another reference point (exact algebra in float64)."""
        d, e, n = cx - self.cx, cy - self.cy, float(self.n)
        sx, sy = self.sx - n * d, self.sy - n * e
        xx = self.xx - torch.outer(self.sx, d) - torch.outer(d, self.sx) + n * torch.outer(d, d)
        xy = self.xy - torch.outer(self.sx, e) - torch.outer(d, self.sy) + n * torch.outer(d, e)
        yy = self.yy - 2 * e * self.sy + n * e * e
        return Moments(self.n, sx, sy, xx, xy, yy, cx.clone(), cy.clone())

    def __add__(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return Moments(self.n, *(t.clone() for t in (self.sx, self.sy, self.xx, self.xy, self.yy, self.cx,
                                                         self.cy)))
        if self.n == 0:
            return other + self
        o = other if torch.equal(other.cx, self.cx) and torch.equal(other.cy, self.cy) else other.shifted(self.cx,
                                                                                                          self.cy)
        return Moments(self.n + o.n, self.sx + o.sx, self.sy + o.sy, self.xx + o.xx, self.xy + o.xy,
                       self.yy + o.yy, self.cx.clone(), self.cy.clone())


@dataclass
class RidgeFit:
    """Weights (p x q), intercept (q) and the λ chosen for each target column."""

    weight: torch.Tensor
    bias: torch.Tensor
    lam: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in x's precision (float32 activations: a float32 matmul, 2x faster on a CPU)."""
        dtype = x.dtype if x.is_floating_point() else self.weight.dtype
        return x.to(dtype) @ self.weight.to(dtype) + self.bias.to(dtype)


def _stack(ms: Sequence[Moments]) -> tuple[torch.Tensor, ...]:
    n = torch.tensor([float(m.n) for m in ms], dtype=torch.float64, device=ms[0].xx.device)
    return (n, *(torch.stack([getattr(m, k) for m in ms]) for k in ("sx", "sy", "xx", "xy", "yy", "cx", "cy")))


def _centred(ms: Sequence[Moments]) -> tuple[torch.Tensor, ...]:
    """Batched (n, mean x, mean y, Cxx, Cxy, Cyy): moments about each problem's own means."""
    n, sx, sy, xx, xy, yy, cx, cy = _stack(ms)
    dx, dy = sx / n[:, None], sy / n[:, None]  # means relative to the reference point
    cxx = xx - n[:, None, None] * dx[:, :, None] * dx[:, None, :]
    cxy = xy - n[:, None, None] * dx[:, :, None] * dy[:, None, :]
    cyy = yy - n[:, None] * dy * dy
    return n, cx + dx, cy + dy, cxx, cxy, cyy


def sse(ms: Sequence[Moments], weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-column sum of squared errors of predictions x W + b over the rows behind each Moments,
    from the sums alone: ‖Y‖² - 2 tr(Yᵀ P) + ‖P‖², about the reference point. B x q."""
    n, sx, sy, xx, xy, yy, cx, cy = _stack(ms)
    # x W + b - y = (x - cx) W - (y - cy) + c, with c = cx W + b - cy
    c = (cx[:, None, :] @ weight)[:, 0] + bias - cy
    quad = (weight * (xx @ weight)).sum(1)
    cross = (weight * xy).sum(1)
    lin = (sx[:, None, :] @ weight)[:, 0]
    return yy + quad - 2 * cross + 2 * c * (lin - sy) + n[:, None] * c * c


def _solve(cxx: torch.Tensor, cxy: torch.Tensor, lam: torch.Tensor, groups: Sequence[slice]) -> torch.Tensor:
    """W with (Cxx + λ_g I) W[:, g] = Cxy[:, g], λ per (problem, group): lam is B x G. A batched
    Cholesky solve per group; an eigendecomposition where a factorization fails."""
    eye = torch.eye(cxx.shape[1], dtype=cxx.dtype, device=cxx.device)
    w = torch.empty_like(cxy)
    for k, g in enumerate(groups):
        a = cxx + lam[:, k, None, None] * eye
        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info == 0).all()):
            w[:, :, g] = torch.cholesky_solve(cxy[:, :, g], chol)
        else:
            s, v = torch.linalg.eigh(cxx)
            w[:, :, g] = v @ ((v.transpose(1, 2) @ cxy[:, :, g]) / (s.clamp_min(0.0) + lam[:, k, None])[:, :, None])
    return w


def fit_ridge(fit: Sequence[Moments], hold: Sequence[Moments] | None, groups: Sequence[slice],
              lambdas: Sequence[float] = RELATIVE_LAMBDAS) -> list[RidgeFit]:
    """Closed-form ridge for a batch of problems of the same shape (one layer at several checkpoints).

    ``groups`` partition the target columns; each group gets the λ (relative to trace(Cxx)/p) with the
    least held-out squared error, then every problem is refit on fit + held-out sums. With
    ``hold=None`` the smallest λ of the grid is used and nothing is refit."""
    q = fit[0].xy.shape[1]
    covered = sorted(i for g in groups for i in range(q)[g])
    if covered != list(range(q)):
        raise ValueError(f"the groups {list(groups)} do not partition the {q} target columns")
    out: list[RidgeFit] = []
    p = fit[0].xx.shape[0]
    per_batch = max(1, int(MEMORY_BYTES // (8 * 3 * p * p + 1)))
    for i in range(0, len(fit), per_batch):
        f = list(fit[i:i + per_batch])
        h = list(hold[i:i + per_batch]) if hold is not None else None
        out.extend(_fit_batch(f, h, groups, lambdas))
    return out


def _held_out_errors(fit: list[Moments], hold: list[Moments], groups: Sequence[slice],
                     rel: torch.Tensor) -> torch.Tensor:
    """Held-out squared error summed over each group, for every λ of the grid: L x B x G.

    With Cxx = V diag(s) Vᵀ (fit part, one eigendecomposition) and W_λ = V D_λ Vᵀ Cxy, D_λ = 1/(s+λ),
    the held-out rows (about the fit part's means, H* their moments) give, summed over a group g,
    SSE_g(λ) = Σ Hyy - 2 Σ_i d_i [Vᵀ Hxy Cxyᵀ V]_ii + Σ_ik d_i d_k [Vᵀ Hxx V]_ik [Vᵀ Cxy Cxyᵀ V]_ik,
    so the grid costs O(p²) per λ once the group's p x p products are formed."""
    _, mx, my, cxx, cxy, _ = _centred(fit)
    s, v = torch.linalg.eigh(cxx)
    s = s.clamp_min(0.0)
    h = [m.shifted(mx[j], my[j]) for j, m in enumerate(hold)]
    _, _, _, hxx, hxy, hyy, _, _ = _stack(h)
    vt = v.transpose(1, 2)
    g_x = vt @ hxx @ v  # B x p x p
    scale = (s.sum(1) / s.shape[1]).clamp_min(1e-30)  # B
    d = 1.0 / (s[None] + (rel[:, None] * scale[None])[:, :, None])  # L x B x p
    errors = []
    for g in groups:
        c = cxy[:, :, g]
        m_cc = vt @ (c @ c.transpose(1, 2)) @ v  # B x p x p
        n_hc = torch.diagonal(vt @ (hxy[:, :, g] @ c.transpose(1, 2)) @ v, dim1=1, dim2=2)  # B x p
        quad = torch.einsum("lbi,bik,lbk->lb", d, g_x * m_cc, d)
        cross = (d * n_hc[None]).sum(2)
        errors.append(hyy[:, g].sum(1)[None] - 2 * cross + quad)
    return torch.stack(errors, 2)


def _fit_batch(fit: list[Moments], hold: list[Moments] | None, groups: Sequence[slice],
               lambdas: Sequence[float]) -> list[RidgeFit]:
    q = fit[0].xy.shape[1]
    rel = torch.tensor(list(lambdas), dtype=torch.float64, device=fit[0].xx.device)
    chosen = torch.full((len(fit), len(groups)), float(rel[0]), dtype=torch.float64, device=rel.device)
    if hold is not None and len(rel) > 1:
        err = _held_out_errors(fit, hold, groups, rel)  # L x B x G
        chosen = rel[err.argmin(0)]  # B x G
        fit = [f + h for f, h in zip(fit, hold)]
    _, mx, my, cxx, cxy, _ = _centred(fit)
    scale = (torch.diagonal(cxx, dim1=1, dim2=2).sum(1) / cxx.shape[1]).clamp_min(1e-30)  # trace / p
    lam_g = scale[:, None] * chosen  # B x G
    w = _solve(cxx, cxy, lam_g, groups)
    b = my - (mx[:, None, :] @ w)[:, 0]
    lam = torch.empty(len(fit), q, dtype=torch.float64, device=w.device)
    for k, g in enumerate(groups):
        lam[:, g] = lam_g[:, k, None]
    return [RidgeFit(w[j], b[j], lam[j]) for j in range(len(fit))]
