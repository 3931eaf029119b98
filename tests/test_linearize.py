"""The Taylor model of a network in its parameters (earlyphase.probes.linearize): exact at theta0 to
first order, trained side by side with the network on the engine loop's batches, batch norm's running
statistics untouched, the gap and its crossing."""
import copy
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import jvp

from earlyphase.config import ModelConfig, TrainConfig
from earlyphase.data.base import Dataset
from earlyphase.errors import UserError
from earlyphase.models import build_model
from earlyphase.probes.linearize import (SideBySide, comparison_rows, crossing_step, taylor_forward, taylor_model,
                                         train_side_by_side)
from earlyphase.train.data_order import DataOrder
from earlyphase.train.loop import LoopHooks, LoopPlan, make_optimizer, train_loop
from earlyphase.train.schedules import lr_table

SGD = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=16, schedule="step", milestones=("6it",),
                  gamma=0.1)


def dataset(shape=(1, 40), n_train=96, n_test=64, classes=3, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset("synthetic", torch.randn(n_train, *shape, generator=g), torch.randint(0, classes, (n_train,), generator=g),
                   torch.randn(n_test, *shape, generator=g), torch.randint(0, classes, (n_test,), generator=g), classes)


def order_for(data: Dataset, cfg: TrainConfig = SGD, seed: int = 0) -> DataOrder:
    return DataOrder(data.n_train, cfg.batch_size, seed, augment=False, shuffle=True, device=torch.device("cpu"))


def cnn1d(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="cnn1d", init_mode="fan_out"), (1, 40), out)


class BNNet(nn.Module):
    """Conv-BN-ReLU-Linear: small enough for tests, with running statistics to protect."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv1d(1, 4, 5, 2), nn.BatchNorm1d(4), nn.Linear(4 * 18, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BNNet()


def params_of(model: nn.Module, tm) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    return [named[n].detach() for n in tm.names]


def plain_training(model: nn.Module, data: Dataset, cfg: TrainConfig, order: DataOrder, steps: int,
                   mask: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The engine's own loop on a copy of ``model``: the reference both sides are compared with."""
    model = copy.deepcopy(model).train()
    pmask = {dict(model.named_parameters())[n]: m for n, m in (mask or {}).items()}
    with torch.no_grad():
        for p, m in pmask.items():
            p.mul_(m)
    plan = LoopPlan(start=0, end=steps, checkpoints=set(), evals=set(), resume_every=10**9,
                    lrs=lr_table(cfg, 0, steps, order.steps_per_epoch))
    hooks = LoopHooks(checkpoint=lambda s: None, resume=lambda s, r: None)
    train_loop(model, make_optimizer(cfg, model), data, order, cfg, plan, hooks, [], pmask or None, [], False, 1000)
    return model


@pytest.mark.parametrize("make", [cnn1d, bn_net])
def test_taylor_model_equals_the_network_at_theta0_and_so_does_its_first_derivative(make):
    model, x = make(), torch.randn(32, 1, 40)
    tm = taylor_model(model)
    theta0 = params_of(model, tm)
    reference = copy.deepcopy(model).train()  # train mode: batch statistics for BN
    torch.testing.assert_close(taylor_forward(tm, theta0, x), reference(x), rtol=0, atol=1e-6)

    g = torch.Generator().manual_seed(1)
    v = [torch.randn(t.shape, generator=g) for t in theta0]

    def net(*p):
        return torch.func.functional_call(tm.shell, dict(zip(tm.names, p)), (x,))

    def lin(*p):
        return taylor_forward(tm, list(p), x)

    _, d_net = jvp(net, tuple(theta0), tuple(v))
    _, d_lin = jvp(lin, tuple(theta0), tuple(v))
    torch.testing.assert_close(d_lin, d_net, rtol=1e-5, atol=1e-6)
    # the Taylor model's derivative is J at theta0 wherever it is taken
    far = [t + 0.3 * w for t, w in zip(theta0, v)]
    torch.testing.assert_close(jvp(lin, tuple(far), tuple(v))[1], d_net, rtol=1e-5, atol=1e-6)


def test_taylor_model_error_is_second_order_in_the_step():
    """On a smooth network (tanh, float64) f - f_lin = O(eps^2): halving the step quarters the error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(32, 1, 40, dtype=torch.float64)
    tm = taylor_model(model)
    theta0 = params_of(model, tm)
    g = torch.Generator().manual_seed(2)
    v = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in theta0]

    def error(eps: float) -> float:
        p = [t + eps * w for t, w in zip(theta0, v)]
        out = torch.func.functional_call(tm.shell, dict(zip(tm.names, p)), (x,))
        return float((taylor_forward(tm, p, x) - out).norm())

    e1, e2 = error(0.01), error(0.005)
    assert e1 > 1e-4  # the network is not linear in its parameters ...
    assert 3.8 < e1 / e2 < 4.2  # ... and the Taylor model's error shrinks as the step squared


def test_a_network_linear_in_its_parameters_keeps_a_zero_gap():
    """Two layers with the first frozen: f is linear in what trains, so f_lin = f all along."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.Tanh(), nn.Linear(16, 3))
    cfg = replace(SGD, lr_scales=(0.0, 0.0, 1.0, 1.0))
    data = dataset()
    frame = train_side_by_side(model, data, cfg, order_for(data), 30, range(0, 31, 5))
    gap = frame[frame.name == "lin_gap_rel"]
    assert len(gap) == 7 and gap.value.max() < 1e-5
    wide = frame.pivot_table(index="step", columns="name", values="value")
    torch.testing.assert_close(torch.tensor(wide.lin_loss.values), torch.tensor(wide.loss.values), rtol=1e-5, atol=1e-6)
    assert wide.loss.iloc[-1] < wide.loss.iloc[0]  # it did train
    assert crossing_step(frame) is None and "lin_gap_crossing" not in set(frame.name)


@pytest.mark.parametrize("shape, augment, full_batch", [((1, 40), False, False), ((1, 8, 8), True, False),
                                                        ((1, 40), False, True)])
def test_both_sides_train_on_the_engine_loops_batches_with_its_optimizer_and_mask(shape, augment, full_batch):
    """For a linear layer the Taylor model is the network: both must land exactly where the engine's
    loop takes the network on the same DataOrder (a different batch, augmentation, lr, momentum,
    weight decay or mask anywhere would move them)."""
    torch.manual_seed(0)
    d = math.prod(shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 3))
    data = dataset(shape)
    cfg = replace(SGD, batch_size=data.n_train) if full_batch else SGD

    def order(seed: int = 0) -> DataOrder:
        return DataOrder(data.n_train, cfg.batch_size, seed, augment=augment, shuffle=not full_batch,
                         device=torch.device("cpu"), pad=2)

    mask = {"1.weight": (torch.rand(3, d, generator=torch.Generator().manual_seed(3)) > 0.5).float()}
    steps = 20  # 3.3 epochs of batch 16 on 96 samples: reshuffled epochs, lr drop at 6
    sbs = SideBySide(model, data, cfg, order(), steps, mask=mask)
    for t in range(steps):
        sbs.step(t)
    reference = plain_training(model, data, cfg, order(), steps, mask)
    other = plain_training(model, data, replace(cfg, lr=cfg.lr * 1.01) if full_batch else cfg, order(1), steps, mask)
    for (name, ref), net, lin, moved in zip(reference.named_parameters(), sbs.net.module.parameters(),
                                            sbs.lin.module.parameters(), other.parameters()):
        assert torch.equal(net, ref), name
        torch.testing.assert_close(lin, ref, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(moved, ref, rtol=1e-5, atol=1e-6), name  # the comparison can tell them apart
    pruned = mask["1.weight"] == 0
    assert (sbs.lin.module[1].weight[pruned] == 0).all() and (sbs.net.module[1].weight[pruned] == 0).all()


def test_a_nonlinear_network_matches_its_taylor_model_after_one_step_then_departs():
    data = dataset()
    sbs = SideBySide(cnn1d(), data, SGD, order_for(data), 10)
    sbs.step(0)  # same gradient at theta0 (f_lin = f, J the same) => same first update
    for a, b in zip(sbs.net.module.parameters(), sbs.lin.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    first = {r[1]: r[4] for r in sbs.observe(1)}
    for t in range(1, 10):
        sbs.step(t)
    later = {r[1]: r[4] for r in sbs.observe(10)}
    assert 0 < first["lin_gap_rel"] < later["lin_gap_rel"]
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(sbs.net.module.parameters(), sbs.lin.module.parameters()))
    assert moved > 1e-4


def test_the_linearized_pass_leaves_batch_norm_running_statistics_alone():
    model, data = bn_net(), dataset()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tm = taylor_model(model)
    assert not list(tm.shell.buffers())  # the expansion's copy keeps no running statistics
    taylor_forward(tm, [p + 0.1 for p in params_of(model, tm)], data.x_train[:16])
    sbs = SideBySide(model, data, SGD, order_for(data), 12)
    for t in range(12):
        sbs.step(t)
        sbs.observe(t + 1)
    reference = plain_training(model, data, SGD, order_for(data), 12)
    for (name, ref), (_, got) in zip(reference.state_dict().items(), sbs.net.module.state_dict().items()):
        assert torch.equal(got, ref), name  # running stats saw exactly the network's own batches
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # the caller's model is untouched
    assert not torch.equal(reference.bn.running_mean, before["bn.running_mean"])  # stats did move


def test_bn_taylor_model_uses_batch_statistics_at_evaluation():
    """At theta0 the gap is 0 and the Taylor model's test outputs are the network's on batch statistics."""
    data = dataset()
    sbs = SideBySide(bn_net(), data, SGD, order_for(data), 1, eval_batch=32)
    net_eval, net_batch, f_lin, tangent = sbs.test_outputs()
    torch.testing.assert_close(f_lin, net_batch, rtol=0, atol=1e-6)
    assert float(tangent.abs().max()) == 0.0
    assert not torch.allclose(net_eval, net_batch)  # fresh running stats are not the batch's
    chunked = torch.cat([copy.deepcopy(sbs.net.module).train()(data.x_test[i:i + 32]) for i in (0, 32)])
    torch.testing.assert_close(net_batch, chunked, rtol=0, atol=1e-6)


def test_comparison_rows_on_constructed_outputs():
    y = torch.tensor([0, 1, 2, 1])
    f_lin = torch.ones(4, 3)
    f_lin[torch.arange(4), y] = 2.0  # f_lin predicts every label
    tangent = 0.5 * torch.ones(4, 3)
    net = f_lin + 0.3
    net[0] = torch.tensor([0.0, 5.0, 0.0])  # one prediction differs
    rows = {r[1]: r[4] for r in comparison_rows(7, y, "cross_entropy", net, net, f_lin, tangent)}
    diff = net - f_lin
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    assert rows["lin_gap_rel"] == pytest.approx(rms(diff) / rms(f_lin))
    assert rows["lin_gap_rel_delta"] == pytest.approx(rms(diff) / 0.5)
    assert rows["lin_gap_mse"] == pytest.approx(float(diff.pow(2).mean()))
    assert rows["lin_agreement"] == 0.75 and rows["lin_accuracy"] == 1.0 and rows["accuracy"] == 0.75
    assert rows["lin_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(f_lin, y)))
    zero = {r[1]: r[4] for r in comparison_rows(0, y, "cross_entropy", f_lin, f_lin, f_lin, 0 * tangent)}
    assert zero["lin_gap_rel"] == 0.0 and zero["lin_gap_rel_delta"] != zero["lin_gap_rel_delta"]  # NaN


def test_crossing_is_recorded_at_the_first_evaluation_above_the_threshold():
    data = dataset()
    cfg = replace(SGD, lr=0.5, schedule="constant", milestones=())
    frame = train_side_by_side(cnn1d(), data, cfg, order_for(data), 12, range(13), threshold=0.05)
    step = crossing_step(frame, 0.05)
    gap = frame[frame.name == "lin_gap_rel"].set_index("step").value
    assert step is not None and gap[step] > 0.05 and (gap[gap.index < step] <= 0.05).all()
    crossing = frame[frame.name == "lin_gap_crossing"]
    assert list(crossing.step) == [step] and list(crossing.layer) == ["0.05"]
    assert crossing_step(frame, 1e9) is None


def test_crossing_step_on_constructed_rows():
    def rows(values):
        return pd.DataFrame([(s, "lin_gap_rel", "", "test", v) for s, v in values],
                            columns=["step", "name", "layer", "split", "value"])

    assert crossing_step(rows([(0, 0.9), (4, 0.1), (8, 0.2), (2, 0.16)])) == 2  # step 0 never counts
    assert crossing_step(rows([(1, 0.15), (2, 0.149)])) is None  # at the threshold is not above it
    assert crossing_step(rows([(1, 0.1), (3, 0.3)]), threshold=0.25) == 3
    assert crossing_step(rows([])) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"evals": [0, 11]}, "evaluation step 11 is outside 0..10"),
    ({"mask": {"nope": torch.ones(3)}}, "mask entry 'nope'"),
    ({"threshold": 0.0}, "threshold > 0"),
    ({"eval_batch": 0}, "eval_batch must be >= 1"),
])
def test_bad_input_is_a_user_error(kwargs, message):
    data = dataset()
    args = {"steps": 10, "evals": [0, 10], **kwargs}
    with pytest.raises(UserError, match=message):
        train_side_by_side(cnn1d(), data, SGD, order_for(data), **args)


def test_a_network_with_dropout_is_refused():
    with pytest.raises(UserError, match="dropout"):
        taylor_model(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(40, 3)))
