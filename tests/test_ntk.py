"""Coefficients of the linear model against closed forms, and the empirical NTK against the analytic
two_layer formula and a per-sample autograd computation."""
import math

import pytest
import torch

from earlyphase.config import ModelConfig
from earlyphase.errors import UserError
from earlyphase.models import build_model
from earlyphase.probes.coefficients import gaussian_expectation, moments
from earlyphase.probes.ntk import check_budget, empirical_ntk, naive_ntk

SQRT_2PI = math.sqrt(2 * math.pi)


def test_relu_closed_forms():
    mo = moments("relu")
    assert abs(mo.zeta - 0.5) < 1e-6
    assert abs(mo.mean - 1 / SQRT_2PI) < 1e-6
    assert abs(mo.second - 1 / SQRT_2PI) < 1e-6


def test_odd_and_smooth_activations():
    erf, tanh, softplus = moments("erf"), moments("tanh"), moments("softplus")
    assert abs(erf.zeta - 2 / math.sqrt(3 * math.pi)) < 1e-6  # E[2/sqrt(pi) exp(-g^2)]
    for mo in (erf, tanh):
        assert abs(mo.mean) < 1e-6 and abs(mo.second) < 1e-6  # odd activations
    assert abs(softplus.zeta - 0.5) < 1e-6  # E[sigmoid(g)] = 1/2 by symmetry
    # softplus'' = sigmoid', E[phi] by direct quadrature of the closed-form derivative
    second = gaussian_expectation(lambda g: 1 / (2 + 2 * __import__("numpy").cosh(g)))
    assert abs(softplus.second - second) < 1e-6


def test_any_activation_with_kinks():
    leaky = moments(lambda t: torch.where(t > 0, t, 0.1 * t), kinks=(0.0,))
    assert abs(leaky.zeta - 0.55) < 1e-6
    assert abs(leaky.second - 0.9 / SQRT_2PI) < 1e-6


def test_nu_coefficients():
    mo = moments("relu")
    assert abs(mo.nu1(100.0, 100) - 1 / SQRT_2PI) < 1e-12
    assert abs(mo.nu2(100.0, 100) ** 2 - (1 / (2 * math.pi) + 1 / (2 * math.pi) / 200)) < 1e-12


def test_unknown_activation():
    with pytest.raises(UserError, match="relu"):
        moments("swishy")


def _analytic_two_layer(model, x, s1=1.0, s2=1.0):
    w, v = model.w.detach().double(), model.v.detach().double()[0]
    d, m = model.d, model.m
    u = x.flatten(1) @ w.T / math.sqrt(d)
    uu = u.clone().requires_grad_(True)
    (dphi,) = torch.autograd.grad(model.phi(uu).sum(), uu)
    phi = model.phi(u)
    theta1 = torch.einsum("r,ir,jr->ij", v * v, dphi, dphi) / m * (x @ x.T) / d
    theta2 = phi @ phi.T / m
    return s1 * theta1 + s2 * theta2


@pytest.mark.parametrize("activation", ["relu", "tanh", "erf", "softplus"])
def test_two_layer_equals_analytic_formula(activation):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="two_layer", width=300, activation=activation), (40,), 1).double()
    x = torch.randn(70, 40, dtype=torch.float64)
    got = empirical_ntk(model, x, chunk=32)
    assert torch.allclose(got, _analytic_two_layer(model, x), atol=1e-8, rtol=0)
    got = empirical_ntk(model, x, chunk=32, scales={"w": 0.5, "v": 0.0})
    assert torch.allclose(got, _analytic_two_layer(model, x, 0.5, 0.0), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name,shape", [("fc_ntk", (30,)), ("cnn_ntk", (1, 8, 8)), ("mlp", (12,))])
def test_structured_ntk_equals_per_sample_autograd(name, shape):
    torch.manual_seed(1)
    model = build_model(ModelConfig(name=name, widths=(16, 8) if name == "mlp" else (300, 100)), shape, 1).double()
    x = torch.randn(23, *shape, dtype=torch.float64)
    want = naive_ntk(model, x)
    assert torch.allclose(empirical_ntk(model, x, chunk=7), want, atol=1e-10, rtol=1e-9)
    first = next(iter(dict(model.named_parameters())))
    assert torch.allclose(empirical_ntk(model, x, chunk=100, scales={first: 0.0}),
                          naive_ntk(model, x, scales={first: 0.0}), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("conv", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 2), padding=(0, 2), dilation=(1, 2)),
                                  dict(kernel_size=3, padding=1, stride=2)])
def test_conv2d_weight_grads_any_padding_dilation_stride(conv):
    """Stride 1 takes the shifted-window route, other strides im2col; both must equal autograd."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 5, **conv), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(1)).double()
    x = torch.randn(11, 2, 7, 9, dtype=torch.float64)
    model(x)  # materialize the lazy layer
    assert torch.allclose(empirical_ntk(model, x, chunk=4), naive_ntk(model, x), atol=1e-10, rtol=1e-9)


def test_unstructured_layers_fall_back_to_torch_func():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).double()
    x = torch.randn(9, 5, dtype=torch.float64)
    assert torch.allclose(empirical_ntk(model, x, chunk=4), naive_ntk(model, x), atol=1e-10, rtol=1e-9)


def test_budget_names_the_size():
    with pytest.raises(UserError, match=r"100000 x 100000 matrix of 74\.5 GiB"):
        check_budget(100_000, torch.float64, 2**30)
    check_budget(1000, torch.float64, 2**30)
