"""PyTorch's own layer init (model.init_mode = "torch_default") and OpenLTH's BatchNorm init
(model.bn_init = "uniform"); the defaults draw exactly what they drew before."""
import math

import torch
from torch import nn

from earlyphase.config import ModelConfig
from earlyphase.models import build_model


def build(name: str, shape=(1, 40), **fields) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **fields), shape, 10)


def test_torch_default_is_each_modules_reset_parameters():
    model = build("cnn1d", init_mode="torch_default")
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
            assert m.bias.abs().max() <= bound and (m.bias != 0).all()  # uniform biases, not zeros
    again = build("cnn1d", init_mode="torch_default")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    kaiming = build("cnn1d", init_mode="fan_in")
    assert (kaiming.fc.bias == 0).all() and not torch.equal(kaiming.fc.weight, model.fc.weight)


def test_uniform_batchnorm_weights_follow_openlth():
    model = build("resnet_cifar_20", shape=(3, 32, 32), bn_init="uniform")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bns])
    assert (weights >= 0).all() and (weights <= 1).all() and weights.std() > 0.2  # U[0, 1]: std 0.29
    assert all((m.bias == 0).all() for m in bns)
    default = build("resnet_cifar_20", shape=(3, 32, 32))
    assert all((m.weight == 1).all() for m in default.modules() if isinstance(m, nn.BatchNorm2d))
    # convs are drawn before the BN weights in module order, so the conv weights are the default's
    convs = [(a.weight, b.weight) for a, b in zip(model.modules(), default.modules()) if isinstance(a, nn.Conv2d)]
    assert torch.equal(*convs[0])


def test_the_paper_preset_uses_openlth_init():
    from earlyphase.config import load_run_config

    cfg = load_run_config(preset="paper")
    assert (cfg.model.init_mode, cfg.model.bn_init, cfg.model.prune_output) == ("fan_in", "uniform", True)
    assert load_run_config(preset="laptop").model.bn_init == "ones"
