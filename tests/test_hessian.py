"""Hessian-vector products against finite differences and the exact Hessian; Lanczos and ARPACK
eigenvalues against a dense eigendecomposition; subspace fraction and overlap."""
import numpy as np
import pytest
import torch
from torch import nn

from earlyphase.errors import UserError
from earlyphase.probes.hessian import (LossFunction, lanczos, arpack, subspace_fraction, subspace_overlap,
                                       top_eigenpairs)


def tiny(dtype=torch.float64, n=40):
    """A two-layer tanh net on random data, small enough for the exact Hessian (3*6+6 + 6*4+4 = 52)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)).to(dtype)
    x = torch.randn(n, 3, dtype=dtype)
    y = torch.randint(0, 4, (n,))
    return model, x, y


def exact_hessian(lf: LossFunction) -> torch.Tensor:
    theta = lf.flat(lf.params)

    def f(flat):
        return lf._chunk_loss(lf.unflat(flat), lf.x, lf.y)

    return torch.autograd.functional.hessian(f, theta)


@pytest.mark.parametrize("mode", ["fwd_rev", "rev_rev"])
def test_hvp_matches_the_exact_hessian(mode):
    model, x, y = tiny()
    lf = LossFunction(model, x, y, mode=mode)
    H = exact_hessian(lf)
    v = torch.randn(lf.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(lf.hvp(v), H @ v, atol=1e-10, rtol=1e-8)
    assert torch.allclose(H, H.T, atol=1e-12)


def test_hvp_matches_a_finite_difference_of_gradients():
    model, x, y = tiny()
    lf = LossFunction(model, x, y)
    v = torch.randn(lf.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps = 1e-5
    theta = lf.flat(lf.params)

    def grad_at(flat):
        shifted = LossFunction(model, x, y)
        shifted.params = shifted.unflat(flat)
        return shifted.gradient()

    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    hv = lf.hvp(v)
    assert torch.allclose(hv, fd, atol=1e-7, rtol=1e-5)
    assert hv.norm() > 1e-3  # not a trivially zero product


def test_chunked_loss_gradient_and_hvp_equal_the_whole_batch():
    model, x, y = tiny(n=50)
    whole, chunked = LossFunction(model, x, y, chunk=50), LossFunction(model, x, y, chunk=7)
    v = torch.randn(whole.dim, dtype=torch.float64)
    assert abs(whole.value() - chunked.value()) < 1e-12
    assert torch.allclose(whole.gradient(), chunked.gradient(), atol=1e-12)
    assert torch.allclose(whole.hvp(v), chunked.hvp(v), atol=1e-12)


@pytest.mark.parametrize("solver", [lanczos, arpack])
def test_top_eigenvalues_match_eigvalsh(solver):
    model, x, y = tiny()
    lf = LossFunction(model, x, y)
    H = exact_hessian(lf)
    want = torch.linalg.eigvalsh(H).flip(0)[:4].numpy()
    got = solver(lf.hvp, lf.dim, 4, tol=1e-8, max_iter=lf.dim)
    assert np.allclose(got.values, want, rtol=1e-6, atol=1e-9)
    # eigenvectors: orthonormal, and H v = lambda v
    V = got.vectors
    assert torch.allclose(V.T @ V, torch.eye(4, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(H @ V, V * torch.from_numpy(got.values.copy()), atol=1e-6)


def test_lanczos_stops_early_on_a_spectrum_with_outliers():
    """A planted spectrum: 5 outliers over a flat bulk; convergence needs far fewer products than n."""
    n, g = 400, torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    spectrum = torch.cat([torch.tensor([50.0, 40, 30, 20, 10], dtype=torch.float64),
                          torch.rand(n - 5, dtype=torch.float64, generator=g) * 0.5])
    A = (Q * spectrum) @ Q.T
    got = lanczos(lambda v: A @ v, n, 5, tol=1e-6)
    assert got.converged and got.matvecs < 60
    assert np.allclose(got.values, [50, 40, 30, 20, 10], rtol=1e-6)
    assert subspace_overlap(got.vectors, Q[:, :5]) > 1 - 1e-6


def test_fraction_and_overlap():
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=g))
    V, W = Q[:, :3], Q[:, 3:6]
    inside = V @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert subspace_fraction(inside, V) == pytest.approx(1.0)
    assert subspace_fraction(W[:, 0], V) == pytest.approx(0.0, abs=1e-12)
    half = (V[:, 0] + W[:, 0])
    assert subspace_fraction(half, V) == pytest.approx(0.5)
    assert subspace_overlap(V, V) == pytest.approx(1.0)
    assert subspace_overlap(V, W) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [0, 52, 100])
def test_k_out_of_range_is_a_user_error(k):
    model, x, y = tiny()
    lf = LossFunction(model, x, y)
    with pytest.raises(UserError, match="eigenpairs"):
        top_eigenpairs(lf.hvp, lf.dim, k)
    with pytest.raises(UserError, match="eigensolver"):
        top_eigenpairs(lf.hvp, lf.dim, 2, solver="power")
