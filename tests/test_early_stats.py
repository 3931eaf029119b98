"""The early-phase statistics recorder (SPEC §2.3): one value per step for every statistic, values
that match a recomputation from saved checkpoints, and an ``after_step`` that never reads the device."""
from __future__ import annotations

import contextlib
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

import earlyphase
from earlyphase.models import prunable_names
from earlyphase.probes.early_stats import EarlyStatsRecorder
from earlyphase.store import Store
from earlyphase.train.recorders import RecordContext

STEPS = 40
WEIGHT_STATS = ("weight_magnitude", "sign_change", "dist_init", "cos_init")


def tiny_config(steps: int = STEPS, checkpoints: tuple[str, ...] = ("0it", "7it", "40it")):
    return earlyphase.load_run_config(preset="laptop", overrides=[
        "data.n_train=400", "data.n_test=200", "train.batch_size=50", f'train.steps="{steps}it"',
        "observe.progress=false", 'observe.recorders=["early_stats"]', 'observe.eval_dense_until="10it"',
        'observe.eval_every="10it"', f"observe.checkpoints={list(checkpoints)!r}".replace("'", '"')])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 40-step cnn1d run with the recorder, checkpoints at 0, 7 and 40 (evaluations at 0..10, 20, 30, 40)."""
    home = tmp_path_factory.getbasetemp() / "home"  # the conftest's $EARLYPHASE_HOME (shared data cache)
    home.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARLYPHASE_HOME", str(home))
        r = earlyphase.train(tiny_config(), store=Store(tmp_path_factory.mktemp("store")))
        yield r, r.metrics(), prunable_names(r.model(), prune_output=False)


def series(df, name, layer):
    sel = df[(df.name == name) & (df.layer == layer) & (df.split == "train")]
    return sel.set_index("step")["value"]


def test_every_statistic_has_one_value_for_every_step(run):
    r, df, prunable = run
    every = list(range(STEPS + 1))
    for name in WEIGHT_STATS:
        for layer in [*prunable, ""]:
            assert series(df, name, layer).index.tolist() == every, (name, layer)
    params = [n for n, p in r.model().named_parameters() if p.requires_grad]
    for layer in [*params, ""]:  # no gradient exists before the first update
        assert series(df, "grad_norm", layer).index.tolist() == every[1:], layer
    traj = df[df.name == "weight_traj"]
    assert traj.layer.nunique() == 16
    assert all(g.step.tolist() == every for _, g in traj.groupby("layer"))
    assert not df.duplicated(["step", "name", "layer", "split"]).any()
    assert df[df.name.isin([*WEIGHT_STATS, "grad_norm", "weight_traj"])].value.notna().all()


def test_start_values(run):
    _, df, prunable = run
    at0 = df[df.step == 0]
    for layer in [*prunable, ""]:
        row = at0[at0.layer == layer].set_index("name")["value"]
        assert row["sign_change"] == 0.0 and row["dist_init"] == 0.0
        assert row["cos_init"] == pytest.approx(1.0, abs=1e-12)


def trajectory_sample(shapes: dict[str, torch.Size], n: int = 16) -> list[tuple[str, int]]:
    """The documented sample: flat indices into the concatenated prunable weights, generator seeded 0."""
    sizes = [math.prod(s) for s in shapes.values()]
    picks = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(0))[:n].tolist()
    out = []
    for j in picks:
        for name, size in zip(shapes, sizes):
            if j < size:
                out.append((name, j))
                break
            j -= size
    return out


@pytest.mark.parametrize("step", [7, 40])
def test_values_match_the_checkpoints(run, step):
    r, df, prunable = run
    w0 = {n: t.double() for n, t in r.state_dict(0).items() if n in prunable}
    w = {n: t.double() for n, t in r.state_dict(step).items() if n in prunable}
    at = df[df.step == step]

    def got(name, layer):
        return float(at[(at.name == name) & (at.layer == layer)].value.iloc[0])

    def close(value, expected):
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)

    for n in prunable:
        close(got("weight_magnitude", n), w[n].abs().mean().item())
        close(got("dist_init", n), (w[n] - w0[n]).norm().item())
        close(got("cos_init", n), (w[n] * w0[n]).sum().item() / (w[n].norm() * w0[n].norm()).item())
        close(got("sign_change", n), (torch.sign(w[n]) != torch.sign(w0[n])).double().mean().item())
    flat, flat0 = torch.cat([w[n].reshape(-1) for n in prunable]), torch.cat([w0[n].reshape(-1) for n in prunable])
    close(got("weight_magnitude", ""), flat.abs().mean().item())
    close(got("dist_init", ""), (flat - flat0).norm().item())
    close(got("cos_init", ""), (flat @ flat0).item() / (flat.norm() * flat0.norm()).item())
    close(got("sign_change", ""), (torch.sign(flat) != torch.sign(flat0)).double().mean().item())
    sample = trajectory_sample({n: w[n].shape for n in prunable})
    assert sorted(at[at.name == "weight_traj"].layer) == sorted(f"{n}[{j}]" for n, j in sample)
    for n, j in sample:
        close(got("weight_traj", f"{n}[{j}]"), w[n].reshape(-1)[j].item())


def test_global_grad_norm_is_the_norm_of_the_layer_norms(run):
    _, df, _ = run
    g = df[df.name == "grad_norm"]
    per_layer = g[g.layer != ""].groupby("step").value.apply(lambda v: math.sqrt((v ** 2).sum()))
    total = g[g.layer == ""].set_index("step").value
    assert len(total) == STEPS
    assert total.to_numpy() == pytest.approx(per_layer.loc[total.index].to_numpy(), rel=1e-6)
    assert (total > 0).all()


@contextlib.contextmanager
def no_host_reads():
    """Every way a tensor's value reaches Python raises while this is active."""
    def boom(*args, **kwargs):
        raise AssertionError("after_step read a tensor value on the host (a sync)")

    with pytest.MonkeyPatch.context() as mp:
        for attr in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__array__"):
            mp.setattr(torch.Tensor, attr, boom)
        yield


def test_after_step_never_syncs(monkeypatch, tmp_path):
    with no_host_reads(), pytest.raises(AssertionError, match="sync"):
        torch.ones(()).item()  # the guard works
    calls = []
    original = EarlyStatsRecorder.after_step

    def guarded(self, model, step, loss):
        calls.append(step)
        with no_host_reads():
            return original(self, model, step, loss)

    monkeypatch.setattr(EarlyStatsRecorder, "after_step", guarded)
    r = earlyphase.train(tiny_config(steps=12, checkpoints=()), store=Store(tmp_path))
    assert calls == list(range(1, 13))
    assert series(r.metrics(), "dist_init", "").index.tolist() == list(range(13))
    # the batched reductions run inside after_step too (every `batch` steps): guarded as well
    reduced = []
    reduce = EarlyStatsRecorder._reduce
    monkeypatch.setattr(EarlyStatsRecorder, "_reduce", lambda self: reduced.append(self.k) or reduce(self))
    calls.clear()
    rows, _ = drive(steps=9, evals=(0, 9), batch=2)
    assert calls == list(range(1, 10)) and len(reduced) >= 5
    assert sorted({s for s, name, layer, _, _ in rows if name == "cos_init" and layer == ""}) == list(range(10))


def drive(*, steps: int = 6, start: int = 0, evals: tuple[int, ...] = (0, 6), initial: bool = True,
          max_rows: int = 4096, n_traj: int = 16, observe_start: bool = True, batch: int = 64,
          set_to_none: bool = False):
    """Train a small MLP by hand, calling the recorder as the loop does; returns rows and what was seen."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ctx = RecordContext(model=model, start=start, end=steps, evals=list(evals), prunable=["0.weight", "2.weight"],
                        initial_state=(lambda: theta0) if initial else (lambda: None))
    rec = EarlyStatsRecorder(max_rows=max_rows, n_traj=n_traj, batch=batch)
    rec.start(ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rows, grads = [], {}
    weights = {start: {n: p.detach().clone() for n, p in model.named_parameters()}}
    if start in evals and observe_start:
        rows += rec.collect(model, start)
    for t in range(start, steps):
        loss = model(torch.randn(8, 5)).pow(2).mean()
        opt.zero_grad(set_to_none=set_to_none)  # True: new gradient tensors every step, as the engine's loop
        loss.backward()
        opt.step()
        grads[t + 1] = {n: p.grad.norm().item() for n, p in model.named_parameters()}
        weights[t + 1] = {n: p.detach().clone() for n, p in model.named_parameters()}
        rec.after_step(model, t + 1, loss.detach())
        if t + 1 in evals:
            rows += rec.collect(model, t + 1)
    drive.weights, drive.theta0 = weights, theta0
    return rows, grads


def by_key(rows):
    return {(s, name, layer): v for s, name, layer, _, v in rows}


@pytest.mark.parametrize("batch,set_to_none", [(64, False), (4, False), (64, True), (4, True)])
def test_gradient_norms_and_a_buffer_that_outgrows_its_plan(batch, set_to_none):
    rows, grads = drive(steps=9, evals=(0, 9), max_rows=2, batch=batch,  # 2 result rows to start with: must grow
                        set_to_none=set_to_none)
    got = by_key(rows)
    for step, norms in grads.items():
        for layer, value in norms.items():
            assert got[(step, "grad_norm", layer)] == pytest.approx(value, rel=1e-6)
        assert got[(step, "grad_norm", "")] == pytest.approx(math.sqrt(sum(v * v for v in norms.values())), rel=1e-6)
    assert sorted({s for s, n, _ in got if n == "dist_init"}) == list(range(10))


def test_without_theta0_the_init_relative_statistics_are_skipped():
    rows, _ = drive(initial=False, n_traj=3)
    names = {r[1] for r in rows}
    assert names == {"grad_norm", "weight_magnitude", "weight_traj"}
    assert sorted({r[0] for r in rows if r[1] == "weight_magnitude"}) == list(range(7))


def test_a_resumed_start_already_stored_is_not_emitted_again():
    rows, _ = drive(start=3, evals=(0, 3, 6), observe_start=False)  # an earlier process stored step 3
    assert sorted({r[0] for r in rows if r[1] == "dist_init"}) == [4, 5, 6]
    rows, _ = drive(start=3, evals=(0, 6))  # start step was never observed: its weights are recorded
    assert sorted({r[0] for r in rows if r[1] == "dist_init"}) == [3, 4, 5, 6]


def test_observe_recorders_finds_the_probe_without_an_import():
    code = ("from earlyphase.train.recorders import build_recorders; "
            "print(type(build_recorders(('early_stats',))[0]).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "EarlyStatsRecorder"


def test_batched_reductions_match_a_recomputation_at_every_step():
    rows, _ = drive(steps=11, evals=(0, 5, 11), batch=3)  # reductions inside after_step and at collect
    got = by_key(rows)
    w0 = drive.theta0
    for step, w in drive.weights.items():
        for n in ("0.weight", "2.weight"):
            a, b = w[n].double(), w0[n].double()
            assert got[(step, "weight_magnitude", n)] == pytest.approx(a.abs().mean().item(), rel=1e-5)
            assert got[(step, "dist_init", n)] == pytest.approx((a - b).norm().item(), rel=1e-5, abs=1e-6)
            assert got[(step, "cos_init", n)] == pytest.approx((a @ b.T).trace().item() / (a.norm() * b.norm()).item(),
                                                               rel=1e-6)
            assert got[(step, "sign_change", n)] == (torch.sign(a) != torch.sign(b)).double().mean().item()
        traj = [(layer, v) for (s, name, layer), v in got.items() if s == step and name == "weight_traj"]
        assert len(traj) == 16
        for layer, v in traj:
            n, j = layer[:-1].split("[")
            assert v == w[n].reshape(-1)[int(j)].item()
