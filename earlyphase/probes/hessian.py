"""Hessian-vector products of a network's loss on a fixed sample set (torch.func), and the top
eigenpairs of that Hessian by Lanczos (our own, with full reorthogonalization) or by scipy's ARPACK
(``eigsh`` on a ``LinearOperator``). See docs/experiments/gradient_subspace.md.

The loss is the mean over the samples, taken in chunks so a large set fits in memory; the network
runs in whatever mode it is in (eval mode for BatchNorm nets, so the loss is a function of the
parameters alone). Vectors are flat, in ``named_parameters()`` order."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal
from torch.func import functional_call, grad, jvp, vjp

from ..errors import UserError

MatVec = Callable[[torch.Tensor], torch.Tensor]


class LossFunction:
    """The mean loss of ``model`` over (x, y) as a function of its parameters, with its gradient and
    Hessian-vector products. ``mode``: "fwd_rev" (jvp over grad) or "rev_rev" (grad of grad . v)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str = "cross_entropy",
                 chunk: int = 2000, mode: str = "fwd_rev") -> None:
        if mode not in ("fwd_rev", "rev_rev"):
            raise UserError(f"HVP mode must be 'fwd_rev' or 'rev_rev', got {mode!r}")
        self.model, self.x, self.y, self.loss, self.mode = model, x, y, loss, mode
        self.chunk = max(1, chunk)
        self.params = {n: p.detach() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flat(self, tensors: dict[str, torch.Tensor] | tuple | list) -> torch.Tensor:
        values = tensors.values() if isinstance(tensors, dict) else tensors
        return torch.cat([t.reshape(-1) for t in values])

    def unflat(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, self.sizes)
        return {n: t.view(s) for n, t, s in zip(self.params, parts, self.shapes)}

    def _chunk_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, (params, self.buffers), (x,))
        if self.loss == "square":
            return 0.5 * (out.squeeze(-1) - y).pow(2).mean()
        return F.cross_entropy(out, y)

    def _chunks(self):
        n = self.x.shape[0]
        for i in range(0, n, self.chunk):
            xb, yb = self.x[i:i + self.chunk], self.y[i:i + self.chunk]
            yield xb, yb, xb.shape[0] / n

    def value(self) -> float:
        with torch.no_grad():
            return float(sum(w * self._chunk_loss(self.params, xb, yb) for xb, yb, w in self._chunks()))

    def gradient(self) -> torch.Tensor:
        total = torch.zeros(self.dim, dtype=self.x.dtype, device=self.x.device)
        for xb, yb, w in self._chunks():
            total += w * self.flat(grad(self._chunk_loss)(self.params, xb, yb))
        return total

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat ``v`` (cast to the parameters' dtype and device)."""
        tangent = self.unflat(v.to(self.x.device, next(iter(self.params.values())).dtype))
        total = torch.zeros(self.dim, dtype=tangent[next(iter(tangent))].dtype, device=self.x.device)
        for xb, yb, w in self._chunks():
            total += w * self.flat(self._hvp_chunk(tangent, xb, yb))
        return total

    def _hvp_chunk(self, tangent: dict, xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
        g = grad(self._chunk_loss)
        if self.mode == "fwd_rev":
            return jvp(lambda p: g(p, xb, yb), (self.params,), (tangent,))[1]
        _, pull = vjp(lambda p: g(p, xb, yb), self.params)
        return pull(tangent)[0]


@dataclass
class Eigenpairs:
    """Top eigenvalues (descending) and orthonormal eigenvectors (columns, float64 on the CPU)."""

    values: np.ndarray
    vectors: torch.Tensor
    matvecs: int
    converged: bool = True


def _as_float64(matvec: MatVec) -> MatVec:
    return lambda v: matvec(v).double().cpu()


def lanczos(matvec: MatVec, n: int, k: int, *, tol: float = 1e-3, max_iter: int = 300, seed: int = 0,
            check_every: int = 5) -> Eigenpairs:
    """The ``k`` largest (algebraic) eigenpairs of the symmetric operator ``matvec`` on R^n.

    Lanczos with full reorthogonalization (twice, classical Gram-Schmidt) in float64; stops when
    every one of the top k Ritz pairs has residual |beta_m s_mi| <= tol * |theta_1|, or after
    ``max_iter`` products, or on an invariant subspace."""
    _check_k(k, n)
    mv = _as_float64(matvec)
    q = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    basis = torch.empty((min(max_iter, n), n), dtype=torch.float64)
    alpha, beta = [], []
    basis[0] = q / q.norm()
    m, converged = 0, False
    for m in range(1, basis.shape[0] + 1):
        w = mv(basis[m - 1])
        alpha.append(float(w @ basis[m - 1]))
        for _ in range(2):
            w -= basis[:m].T @ (basis[:m] @ w)
        b = float(w.norm())
        done = b <= 1e-12 * max(1.0, abs(alpha[0])) or m == basis.shape[0]
        if m >= k and (done or m % check_every == 0) and _converged(alpha, beta, b, k, tol):
            converged = True
            break
        if done:
            break
        beta.append(b)
        basis[m] = w / b
    theta, s = eigh_tridiagonal(np.asarray(alpha), np.asarray(beta[:m - 1]))
    top = np.argsort(theta)[::-1][:k]
    vectors = basis[:m].T @ torch.from_numpy(np.ascontiguousarray(s[:, top]))
    return Eigenpairs(theta[top], vectors, m, converged or b <= 1e-12 * max(1.0, abs(alpha[0])))


def _converged(alpha: list[float], beta: list[float], b: float, k: int, tol: float) -> bool:
    theta, s = eigh_tridiagonal(np.asarray(alpha), np.asarray(beta[:len(alpha) - 1]))
    top = np.argsort(theta)[::-1][:k]
    scale = max(abs(theta).max(), 1e-30)
    return bool(np.all(np.abs(b * s[-1, top]) <= tol * scale))


def arpack(matvec: MatVec, n: int, k: int, *, tol: float = 1e-3, max_iter: int = 300, seed: int = 0) -> Eigenpairs:
    """The same through scipy's ``eigsh`` (implicitly restarted Lanczos, ARPACK), for comparison."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    _check_k(k, n)
    mv = _as_float64(matvec)
    count = [0]

    def apply(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        return mv(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))).numpy()

    v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    values, vectors = eigsh(LinearOperator((n, n), matvec=apply, dtype=np.float64), k=k, which="LA", tol=tol,
                            v0=v0, maxiter=max_iter)
    order = np.argsort(values)[::-1]
    return Eigenpairs(values[order], torch.from_numpy(np.ascontiguousarray(vectors[:, order])), count[0])


SOLVERS = {"lanczos": lanczos, "eigsh": arpack}


def top_eigenpairs(matvec: MatVec, n: int, k: int, *, solver: str = "lanczos", **kwargs) -> Eigenpairs:
    if solver not in SOLVERS:
        raise UserError(f"eigensolver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    return SOLVERS[solver](matvec, n, k, **kwargs)


def _check_k(k: int, n: int) -> None:
    if not 1 <= k < n:
        raise UserError(f"{k} eigenpairs asked for an operator on {n} parameters; ask for between 1 and {n - 1}")


def subspace_fraction(g: torch.Tensor, vectors: torch.Tensor) -> float:
    """||V^T g||^2 / ||g||^2: the share of g's squared norm inside span(V) (V orthonormal)."""
    g = g.double().cpu()
    total = float(g @ g)
    return float((vectors.T @ g).pow(2).sum()) / total if total > 0 else float("nan")


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """||P_a P_b||_F^2 / k = ||A^T B||_F^2 / k for orthonormal bases A, B of k columns: 1 when the
    subspaces agree, k/n in expectation for random ones."""
    return float((a.T @ b).pow(2).sum()) / a.shape[1]
