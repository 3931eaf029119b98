"""Model registry (README "Models"): build a network by name, name its prunable weights, initialize it.

Every model carries ``output_layer``, the name of its final layer (a module, or for two_layer the
parameter ``v``), so pruning can leave the output layer dense unless the config says otherwise.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError
from ..registry import MODEL_REGISTRY
from .cnn1d import build_cnn1d
from .conv import build_conv
from .mlp import build_mlp, build_lenet_300_100
from .ntk_nets import build_cnn_ntk, build_fc_ntk
from .resnet import build_resnet
from .two_layer import TwoLayer, activation_fn, build_two_layer
from .vgg import build_vgg8_phases, build_vgg_cifar

Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)
# name -> (builder, an input shape it takes: the contract tests build it for that)
_BUILDERS: dict[str, tuple[Builder, tuple[int, ...]]] = {
    "mlp": (build_mlp, MNIST),
    "lenet_300_100": (build_lenet_300_100, MNIST),
    "cnn1d": (build_cnn1d, (1, 40)),
    "conv2": (build_conv, CIFAR),
    "conv4": (build_conv, CIFAR),
    "conv6": (build_conv, CIFAR),
    "resnet_cifar_20": (build_resnet, CIFAR),
    "resnet_cifar_56": (build_resnet, CIFAR),
    "vgg_cifar_11": (build_vgg_cifar, CIFAR),
    "vgg_cifar_13": (build_vgg_cifar, CIFAR),
    "vgg_cifar_16": (build_vgg_cifar, CIFAR),
    "vgg8_phases": (build_vgg8_phases, CIFAR),
    "two_layer": (build_two_layer, (100,)),
    "fc_ntk": (build_fc_ntk, CIFAR),
    "cnn_ntk": (build_cnn_ntk, CIFAR),
}
NORM_FREE = ("vgg8_phases",)  # models that take model.norm = "none"

__all__ = ["TwoLayer", "activation_fn", "build_model", "init_weights", "prunable_names", "register_model"]


def register_model(name: str, build: Builder, *, example_input: tuple[int, ...] = (1, 40)) -> Builder:
    """Make ``model.name = name`` build ``build(model_cfg, input_shape, out_dim)``: an ``nn.Module``
    whose ``output_layer`` attribute names its final layer (a module, or a parameter) and whose
    conv/linear weights are the prunable ones (or listed in ``weight_params``). earlyphase seeds
    torch's RNG and then applies its initialization (``model.init_mode``) to conv, linear and BN
    layers, so the weights are a function of the seed. ``example_input``: an input shape (no batch
    dimension) the contract tests build it for (docs/plugins.md)."""
    return MODEL_REGISTRY.register(name, build, example_input=tuple(example_input))


for _name, (_build, _example) in _BUILDERS.items():
    register_model(_name, _build, example_input=_example)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> nn.Module:
    """Build and initialize ``cfg.name`` for inputs of ``input_shape`` (no batch dimension).

    All randomness comes from the global torch RNG, so seeding torch first makes the weights
    reproducible.
    """
    build = MODEL_REGISTRY.get(cfg.name, key="model.name").value
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise UserError(f"model '{cfg.name}' got input shape {shape}; it must be a non-empty tuple of positive "
                        "sizes without the batch dimension, e.g. (1, 40) or (3, 32, 32)")
    if not isinstance(out_dim, int) or out_dim < 1:
        raise UserError(f"model '{cfg.name}' got output size {out_dim!r}; it must be a positive number of classes or outputs")
    if cfg.norm != "batch" and cfg.name not in NORM_FREE:
        raise UserError(f"model.norm = {cfg.norm!r} is built by {', '.join(NORM_FREE)} only, not {cfg.name!r}; "
                        "leave model.norm at 'batch' (the model's own layers)")
    model = build(cfg, shape, out_dim)
    init_weights(model, cfg.init_mode, cfg.bn_init)
    if cfg.init_std > 0:
        _normal_weights(model, cfg.init_std)
    return model


@torch.no_grad()
def _normal_weights(model: nn.Module, std: float) -> None:
    """Conv/linear weights N(0, std²) (drawn after the Kaiming ones): an initialization scale fixed in
    a config rather than by the fan, as the prototypes experiment needs (phase 1 is flat only while
    the updates are small against the initial weights)."""
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            nn.init.normal_(module.weight, 0.0, std)


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def init_weights(model: nn.Module, mode: str = "fan_in", bn: str = "ones") -> None:
    """Conv/linear weights Kaiming normal (relu gain; variance from fan_in or fan_out) with zero
    biases, or, for ``mode = "torch_default"``, each module's own ``reset_parameters()`` (uniform
    weights and biases, PyTorch's default); BN weight 1 (``bn = "uniform"``: U[0, 1], as OpenLTH's
    ResNets) and bias 0.

    The fan matters for sparse training: with fan_in, cnn1d's first conv (fan_in 5, fan_out 160) starts
    with weights ~4x larger than the other convs', so global magnitude pruning removes fewer of them
    (the laptop preset at level 9 keeps 64 % of them, against 49-60 % with fan_out); with fan_out
    every layer starts on one scale (what torchvision's ResNets use).

    two_layer has no such modules, so it keeps its own N(0, 1) NTK initialization.
    """
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            if mode == "torch_default":
                module.reset_parameters()
                continue
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            if bn == "uniform":
                nn.init.uniform_(module.weight, 0.0, 1.0)
            else:
                nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def prunable_names(model: nn.Module, prune_output: bool) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the conv and linear weights, never biases or BN,
    without the output layer's weight unless ``prune_output``; in named_parameters order."""
    output = getattr(model, "output_layer", None)
    if not isinstance(output, str):
        raise UserError(f"{type(model).__name__} names no output_layer; build models with earlyphase.models.build_model")
    params = dict(model.named_parameters())
    output_weight = output if output in params else f"{output}.weight"
    weights = set(getattr(model, "weight_params", ()))
    for name, module in model.named_modules():
        if isinstance(module, _WEIGHTED):
            weights.add(f"{name}.weight" if name else "weight")
    return [n for n in params if n in weights and (prune_output or n != output_weight)]
