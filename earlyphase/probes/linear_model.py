"""The linear model of early training (docs/experiments/linear_dynamics.md), trained side by side with the network.

Why a recorder: the linear model is a function of what the run already determines (its data, its
network at initialization, its learning rates), so it observes the run rather than defining it. It
trains inside the run's own loop, one cheap function-space step per network step, and its curves
land in the run's metrics table: stored with the run, cached, queryable, and never a separate
trajectory that could drift from the network's.

The linear model's kernel is K(x, x') = a <x, x'>/d + b + c [x = x' in the training set]:
- ``two_layer``: a, b from docs/experiments/linear_dynamics.md (zeta, nu1, nu2 of the activation, tr(Sigma^2), and mean(v_r^2) of
  the network's actual second layer for the first-layer kernel), weighted by the per-layer learning
  rate factors: first layer ``eta1 K1``, second ``eta2 K2``, both their sum; c = 0.
- any other network: a least-squares fit of its empirical NTK at initialization onto
  {X X^T/d, 1 1^T, I} (the identity absorbs the diagonal excess), with the off-diagonal residual.
Gradient descent on (1/2n) sum (f - y)^2 in function space, f <- f - (lr/n) K (f - y), costs O(n d)
per step through K's low-rank form. It starts from the network's own outputs at initialization (0 with
the symmetric initialization; otherwise this is the "fit y - f0" variant of docs/experiments/linear_dynamics.md).

``observe.recorders = ["linear_dynamics"]`` records, all at evaluation steps:

=================  ==========  =====================================================================
name               split       value
=================  ==========  =====================================================================
lin_loss           train/test  the linear model's square loss (the network's is ``loss``)
lin_accuracy       train/test  sign agreement with the +-1 targets
gap_mse            test        mean (f_net - f_lin)^2
gap_rel            test        RMS(f_net - f_lin) / RMS(f_lin)
agreement          test        fraction of test points where sign(f_net) = sign(f_lin)
out_net, out_lin   test        outputs on the first ``N_OUTPUTS`` test points (layer = index)
=================  ==========  =====================================================================

and once, at the step the run starts from (split ``train``, on the training inputs): ``ntk_gap``
(||Theta - Theta_lin||_2 / ||Theta_lin||_2), ``ntk_norm``, ``ntk_lin_norm``, ``ntk_fit_residual``
(off-diagonal relative Frobenius residual of Theta_lin against Theta), ``lin_coef`` (layer a, b, c)
and ``ntk_seconds``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..store.metrics import Row
from ..train.recorders import RecordContext, Recorder, register_recorder
from .coefficients import moments
from .ntk import check_budget, empirical_ntk

N_OUTPUTS = 300  # test points whose outputs are stored at every evaluation (scatter plots)


@dataclass(frozen=True)
class LinearKernel:
    """K(x, x') = a <x, x'>/d + b + c [same training sample]."""

    a: float
    b: float
    c: float = 0.0

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The n x n kernel on the training inputs (float64)."""
        x = x.flatten(1).double()
        k = (x @ x.T).mul_(self.a / x.shape[1]).add_(self.b)
        k.diagonal().add_(self.c)
        return k


def trace_sigma2(x: torch.Tensor) -> float:
    """tr(Sigma^2) estimated from samples, with the bias tr(Sigma)^2/n of the plug-in removed."""
    x = x.flatten(1).double()
    n = x.shape[0]
    cov = x.T @ x / n
    return float((cov * cov).sum() - torch.trace(cov) ** 2 / n)


def two_layer_kernel(model: torch.nn.Module, activation: str, scales: dict[str, float], tr_sigma2: float) -> LinearKernel:
    """docs/experiments/linear_dynamics.md: eta1 mean(v^2) psi1.psi1' + eta2 psi2.psi2'."""
    mo = moments(activation)
    d = model.d
    mv2 = float(model.v.detach().double().pow(2).mean())
    s1, s2 = scales.get("w", 1.0), scales.get("v", 1.0)
    a = mo.zeta ** 2 * (s1 * mv2 + s2)
    b = s1 * mv2 * mo.nu1(tr_sigma2, d) ** 2 / d + s2 * mo.nu2(tr_sigma2, d) ** 2
    return LinearKernel(a, b, 0.0)


def fit_kernel(theta: torch.Tensor, x: torch.Tensor) -> LinearKernel:
    """Least squares of Theta onto {X X^T/d, 1 1^T, I} over all entries (3 x 3 normal equations)."""
    x = x.flatten(1).double()
    theta = theta.double()
    n, d = x.shape
    k = x @ x.T / d
    gram = torch.tensor([[float((k * k).sum()), float(k.sum()), float(k.trace())],
                         [float(k.sum()), n * n, n], [float(k.trace()), n, n]], dtype=torch.float64)
    rhs = torch.tensor([float((theta * k).sum()), float(theta.sum()), float(theta.trace())], dtype=torch.float64)
    a, b, c = torch.linalg.lstsq(gram, rhs.unsqueeze(1)).solution.squeeze(1).tolist()
    return LinearKernel(a, b, c)


def offdiag_residual(theta: torch.Tensor, lin: torch.Tensor) -> float:
    """||offdiag(Theta - Theta_lin)||_F / ||offdiag(Theta)||_F."""
    diff, th = (theta - lin).clone(), theta.clone()
    diff.diagonal().zero_()
    th.diagonal().zero_()
    return float(diff.norm() / th.norm())


def spectral_norm(sym: torch.Tensor) -> float:
    """Largest |eigenvalue| of a symmetric matrix: ARPACK (a few dozen products) when large."""
    n = sym.shape[0]
    if n <= 600:
        return float(torch.linalg.eigvalsh(sym.double()).abs().max())
    from scipy.sparse.linalg import eigsh

    a = sym.double().numpy()
    val = eigsh(a, k=1, which="LM", return_eigenvectors=False, tol=1e-8,
                v0=np.ones(n) / math.sqrt(n))
    return float(abs(val[0]))


class KernelGD:
    """Full-batch gradient descent on (1/2n) sum (f - y)^2 for the kernel K, in function space."""

    def __init__(self, kernel: LinearKernel, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 f0_train: torch.Tensor, f0_test: torch.Tensor) -> None:
        self.k = kernel
        self.x = x_train.flatten(1).double()
        self.xt = x_test.flatten(1).double()
        self.y = y_train.double().reshape(-1)
        self.f = f0_train.double().reshape(-1).clone()
        self.ft = f0_test.double().reshape(-1).clone()
        self.d = self.x.shape[1]

    def step(self, lr: float) -> None:
        r = self.f - self.y
        u = self.x.T @ r
        s = r.sum()
        eta = lr / self.x.shape[0]
        self.f.sub_((self.x @ u).mul_(self.k.a / self.d).add_(s * self.k.b).add_(r, alpha=self.k.c), alpha=eta)
        self.ft.sub_((self.xt @ u).mul_(self.k.a / self.d).add_(s * self.k.b), alpha=eta)


def _scales(model: torch.nn.Module, lr_scales: tuple[float, ...]) -> dict[str, float]:
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, lr_scales)) if lr_scales else {n: 1.0 for n in names}


def _tr_sigma2(cfg, data) -> float:
    """Known for gaussian data (its spectrum), else estimated from the training inputs (docs/experiments/linear_dynamics.md)."""
    if cfg.data.name == "gaussian":
        from ..data.gaussian import eigenvalues

        return float(eigenvalues(cfg.data.dim, cfg.data.spectrum).pow(2).sum())
    return trace_sigma2(data.x_train)


class LinearDynamicsRecorder(Recorder):
    """Trains the linear model beside the network and compares the two (see the module docstring)."""

    name = "linear_dynamics"

    def start(self, ctx: RecordContext) -> None:
        cfg, data = ctx.config, ctx.data
        if cfg is None or data is None:
            raise UserError("the linear_dynamics recorder needs the run's config and data (train through the engine)")
        t = cfg.train
        if not (t.full_batch and t.loss == "square" and t.optimizer == "sgd" and t.momentum == 0 and t.weight_decay == 0):
            raise UserError("the linear_dynamics recorder models full-batch gradient descent on the square loss: set "
                            "train.full_batch = true, train.loss = 'square', train.optimizer = 'sgd', "
                            "train.momentum = 0, train.weight_decay = 0")
        if not data.y_train.is_floating_point():
            raise UserError("the linear_dynamics recorder needs +-1 targets: a two-class task with data.targets = 'pm1'")
        model = ctx.model
        if ctx.start != 0:  # resumed: the kernel is that of the network at initialization
            state = ctx.initial_state()
            if state is None:
                raise UserError("cannot resume the linear model without the step-0 weights; add observe.checkpoints = ['0it']")
            model = copy.deepcopy(model)
            model.load_state_dict(state)
        self.lr_at = ctx.lr_at
        self.start_step = ctx.start
        scales = _scales(model, t.lr_scales)
        x_tr, x_te = data.x_train, data.x_test
        t0 = time.time()
        check_budget(x_tr.shape[0], torch.float64, hint="lower data.n_train")
        theta = empirical_ntk(model, x_tr, scales=scales).double()
        from ..models.two_layer import TwoLayer

        if isinstance(model, TwoLayer):
            kernel = two_layer_kernel(model, model.activation, scales, _tr_sigma2(cfg, data))
        else:
            kernel = fit_kernel(theta, x_tr)
        lin = kernel.matrix(x_tr.cpu()).to(theta.device)
        lin_norm = spectral_norm(lin.cpu())
        gap = spectral_norm((theta - lin).cpu()) / lin_norm
        self.ntk_rows: list[Row] = [] if ctx.start != 0 else [
            (ctx.start, "ntk_gap", "", "train", gap), (ctx.start, "ntk_norm", "", "train", spectral_norm(theta.cpu())),
            (ctx.start, "ntk_lin_norm", "", "train", lin_norm),
            (ctx.start, "ntk_fit_residual", "", "train", offdiag_residual(theta, lin)),
            *[(ctx.start, "lin_coef", k, "train", v) for k, v in (("a", kernel.a), ("b", kernel.b), ("c", kernel.c))],
            (ctx.start, "ntk_seconds", "", "train", time.time() - t0)]
        del theta, lin
        with torch.no_grad():
            f0_tr, f0_te = model(x_tr), model(x_te)
        self.gd = KernelGD(kernel, x_tr, data.y_train, x_te, f0_tr, f0_te)
        for s in range(ctx.start):  # replay the linear model up to a resume point (cheap, deterministic)
            self.gd.step(self.lr_at(s))
        self.x_test, self.y_test, self.y_train = x_te, data.y_test.double().reshape(-1), data.y_train.double().reshape(-1)

    def after_step(self, model: torch.nn.Module, step: int, loss: torch.Tensor) -> None:
        self.gd.step(self.lr_at(step - 1))

    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        with torch.no_grad():
            f_net = model(self.x_test).double().reshape(-1)
        gd = self.gd
        f_lin = gd.ft
        diff = f_net - f_lin
        rms_lin = float(f_lin.pow(2).mean().sqrt())
        rows: list[Row] = self.ntk_rows
        self.ntk_rows = []
        rows += [(step, "lin_loss", "", "train", float(0.5 * (gd.f - self.y_train).pow(2).mean())),
                 (step, "lin_loss", "", "test", float(0.5 * (f_lin - self.y_test).pow(2).mean())),
                 (step, "lin_accuracy", "", "train", float((torch.sign(gd.f) == torch.sign(self.y_train)).double().mean())),
                 (step, "lin_accuracy", "", "test", float((torch.sign(f_lin) == torch.sign(self.y_test)).double().mean())),
                 (step, "gap_mse", "", "test", float(diff.pow(2).mean())),
                 (step, "gap_rel", "", "test", float(diff.pow(2).mean().sqrt()) / rms_lin if rms_lin > 0 else float("nan")),
                 (step, "agreement", "", "test", float((torch.sign(f_net) == torch.sign(f_lin)).double().mean()))]
        k = min(N_OUTPUTS, f_net.numel())
        net, lin = f_net[:k].tolist(), f_lin[:k].tolist()
        rows += [(step, "out_net", str(i), "test", v) for i, v in enumerate(net)]
        rows += [(step, "out_lin", str(i), "test", v) for i, v in enumerate(lin)]
        return rows


register_recorder("linear_dynamics", LinearDynamicsRecorder)
