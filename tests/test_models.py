"""Models: parameter counts, output shapes, shape errors, prunable names, initialization, two_layer."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from earlyphase.config import ModelConfig
from earlyphase.errors import UserError
from earlyphase.registry import BUILTIN, MODEL_REGISTRY
from earlyphase.models import activation_fn, build_model, init_weights, prunable_names

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)
SHAPES = {"mlp": (784,), "lenet_300_100": (784,), "cnn1d": (1, 40), "two_layer": (100,)}

# Exact counts with out_dim 10 (mlp at its default widths 300, 100; two_layer at width 2000, d = 100).
COUNTS = {
    "mlp": 266_610,
    "lenet_300_100": 266_610,
    "cnn1d": 8_010,  # 192 + 3104 + 3104 + 1610
    "conv2": 4_301_642,  # lottery-ticket paper: 4.3M
    "conv4": 2_425_930,  # 2.4M
    "conv6": 2_262_602,  # 2.3M
    "resnet_cifar_20": 272_474,  # 0.27M
    "resnet_cifar_56": 855_770,  # 0.85M
    "vgg_cifar_11": 9_228_362,
    "vgg_cifar_13": 9_413_066,
    "vgg_cifar_16": 14_724_042,  # 14.7M
    "vgg8_phases": 1_574_698,
    "two_layer": 220_000,
    "fc_ntk": 2_102_272,  # 3072*512 + 2*512*512 + 512*10, no biases
    "cnn_ntk": 76_096,  # 3*64*9 + 2*64*64*9 + 64*10, no biases
}
NO_FORWARD = {"vgg_cifar_11", "vgg_cifar_13", "vgg_cifar_16"}  # big: count only


def build(name: str, shape: tuple[int, ...] | None = None, out_dim: int = 10, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, **kw), shape or SHAPES.get(name, CIFAR), out_dim)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [e.name for e in MODEL_REGISTRY.entries() if e.origin == BUILTIN])
def test_count_output_shape_and_output_layer(name: str) -> None:
    model = build(name)
    assert count(model) == COUNTS[name]
    assert isinstance(model.output_layer, str)
    names = dict(model.named_parameters())
    assert model.output_layer in names or f"{model.output_layer}.weight" in names
    if name not in NO_FORWARD:
        shape = SHAPES.get(name, CIFAR)
        assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_approximate_counts() -> None:
    assert 0.26e6 < COUNTS["resnet_cifar_20"] < 0.28e6
    assert abs(COUNTS["resnet_cifar_56"] - 0.85e6) < 0.01e6
    assert abs(COUNTS["vgg_cifar_16"] - 14.7e6) < 0.1e6
    assert [round(COUNTS[n] / 1e5) for n in ("conv2", "conv4", "conv6")] == [43, 24, 23]


@pytest.mark.parametrize("name", ["mlp", "two_layer", "conv2", "conv4", "conv6", "resnet_cifar_20", "vgg8_phases"])
def test_small_images(name: str) -> None:
    model = build(name, DIGITS, out_dim=3)
    assert model(torch.randn(2, *DIGITS)).shape == (2, 3)


def test_sequence_length_sets_flatten_size() -> None:
    model = build("cnn1d", (2, 64))
    assert model.fc.in_features == 32 * 8
    assert model(torch.randn(2, 2, 64)).shape == (2, 10)


@pytest.mark.parametrize("name, shape", [
    ("cnn1d", CIFAR), ("cnn1d", (40,)), ("conv4", (784,)), ("conv2", (1, 40)), ("resnet_cifar_20", (1, 40)),
    ("vgg8_phases", (100,)), ("vgg_cifar_11", DIGITS), ("conv6", (1, 4, 4)), ("conv2", (1, 1, 8)),
])
def test_wrong_input_shape(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(UserError, match=name) as err:
        build(name, shape)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("shape, out_dim", [((), 10), ((0, 4), 10), ((784,), 0)])
def test_bad_shape_or_out_dim(shape: tuple[int, ...], out_dim: int) -> None:
    with pytest.raises(UserError):
        build_model(ModelConfig(name="mlp"), shape, out_dim)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UserError, match="resnet_cifar_20") as err:
        build("resnet_18")
    assert "resnet_18" in str(err.value) and "\n" not in str(err.value)


def test_mlp_widths_and_activation() -> None:
    model = build("mlp", (3, 4), widths=(7,), activation="tanh")
    assert [m.__class__ for m in model.body] == [nn.Flatten, nn.Linear, nn.Tanh]
    assert model(torch.randn(2, 3, 4)).shape == (2, 10)
    assert count(build("lenet_300_100", widths=(7,))) == COUNTS["lenet_300_100"]
    with pytest.raises(UserError, match="relu, tanh"):
        build("mlp", activation="gelu")


def test_prunable_names() -> None:
    model = build("resnet_cifar_20")
    names = prunable_names(model, prune_output=False)
    assert "fc.weight" not in names and "stem.0.weight" in names
    assert "stages.1.0.shortcut.0.weight" in names  # projection shortcut
    assert all(n.endswith(".weight") and "bn" not in n for n in names)
    params = dict(model.named_parameters())
    assert all(params[n].dim() == 4 for n in names)  # convs only: no BN, no biases
    assert len(names) == 1 + 18 + 2
    assert prunable_names(model, prune_output=True) == names + ["fc.weight"]

    cnn = build("cnn1d")
    assert prunable_names(cnn, False) == ["body.0.weight", "body.2.weight", "body.4.weight"]
    assert prunable_names(cnn, True)[-1] == "fc.weight"
    assert prunable_names(build("conv2"), False) == ["features.0.weight", "features.2.weight",
                                                     "hidden.0.weight", "hidden.2.weight"]
    two = build("two_layer", width=10)
    assert prunable_names(two, False) == ["w"]
    assert prunable_names(two, True) == ["w", "v"]


def test_init_weights() -> None:
    model = build("vgg8_phases")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.fc.bias == 0)
    conv = build("conv2")
    assert torch.all(conv.features[0].bias == 0)
    w = conv.hidden[0].weight  # fan_in 16384: Kaiming std sqrt(2 / fan_in)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 16384), rel=0.02)
    out_fan = build("conv2", init_mode="fan_out").hidden[0].weight  # 16384 -> 256: std sqrt(2 / fan_out)
    assert out_fan.std().item() == pytest.approx(math.sqrt(2 / out_fan.shape[0]), rel=0.02)
    cnn = build("cnn1d", init_mode="fan_out")  # every conv on one scale: the first one no longer ~6x the rest
    stds = [m.weight.std().item() for m in cnn.modules() if isinstance(m, nn.Conv1d)]
    assert max(stds) / min(stds) < 1.5
    with pytest.raises(UserError, match="model.init_mode must be 'fan_in' or 'fan_out'"):
        build("cnn1d", init_mode="xavier")
    two = build("two_layer", width=10)
    before = {k: v.clone() for k, v in two.state_dict().items()}
    init_weights(two)  # keeps its own NTK initialization
    assert all(torch.equal(before[k], v) for k, v in two.state_dict().items())


@pytest.mark.parametrize("name", ["cnn1d", "resnet_cifar_20", "two_layer"])
def test_same_seed_same_weights(name: str) -> None:
    a, b, c = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def hand_formula(model: nn.Module, x: torch.Tensor, phi) -> torch.Tensor:
    w, v = model.w.detach().double(), model.v.detach().double()
    m, d = w.shape
    out = torch.zeros(x.shape[0], v.shape[0], dtype=torch.float64)
    for r in range(m):
        out += v[:, r] * phi(x.double() @ w[r] / math.sqrt(d))[:, None] / math.sqrt(m)
    return out


@pytest.mark.parametrize("activation", ["relu", "tanh", "erf", "softplus"])
def test_two_layer_symmetric_is_zero_and_matches_formula(activation: str) -> None:
    model = build("two_layer", (7,), out_dim=2, width=50, activation=activation)
    half = 25
    assert torch.equal(model.w[:half], model.w[half:]) and torch.equal(model.v[:, half:], -model.v[:, :half])
    x = torch.randn(9, 7)
    assert torch.equal(model(x), torch.zeros(9, 2))  # f0 = 0 exactly, float32
    model.double()
    assert torch.equal(model(x.double()), torch.zeros(9, 2, dtype=torch.float64))
    with torch.no_grad():  # away from the symmetric point the split forward is still the formula
        model.v.add_(torch.randn_like(model.v))
        model.w.add_(torch.randn_like(model.w))
    torch.testing.assert_close(model(x.double()), hand_formula(model, x, activation_fn(activation)),
                               rtol=1e-12, atol=1e-12)


def test_two_layer_default_width_is_zero_and_draws_standard_normals() -> None:
    model = build("two_layer", out_dim=1)  # m = 2000, d = 100
    assert torch.equal(model(torch.randn(16, 100)), torch.zeros(16, 1))
    assert model.w.shape == (2000, 100) and model.v.shape == (1, 2000)
    assert model.w.std().item() == pytest.approx(1.0, rel=0.02)


def test_two_layer_not_symmetric() -> None:
    model = build("two_layer", (3, 2), out_dim=1, width=9, symmetric=False, activation="tanh")
    x = torch.randn(5, 3, 2)
    assert model(x).abs().sum() > 0
    torch.testing.assert_close(model.double()(x.double()), hand_formula(model, x.flatten(1), torch.tanh),
                               rtol=1e-12, atol=1e-12)


def test_two_layer_errors() -> None:
    with pytest.raises(UserError, match="even"):
        build("two_layer", width=9)
    with pytest.raises(UserError, match="relu, tanh, erf, softplus"):
        build("two_layer", width=10, activation="gelu")
    with pytest.raises(UserError):
        activation_fn("sigmoid")
