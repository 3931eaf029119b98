"""The training engine: determinism, resume after a kill, observations added later, masks, schedules."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import earlyphase
from earlyphase.config import MaskConfig, load_run_config, run_id
from earlyphase.errors import UserError
from earlyphase.models import build_model, prunable_names
from earlyphase.store import Store
from earlyphase.train.schedules import checkpoint_steps, dense_schedule, lr_at, pow2_schedule

TINY = ["data.n_train=400", "data.n_test=200", "train.batch_size=50", "train.steps=60it",
        'train.milestones=["30it", "45it"]', "observe.progress=false", 'observe.eval_every="20it"', "observe.threads=1"]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EARLYPHASE_HOME", str(tmp_path / "home"))


def tiny(*extra):
    return load_run_config(preset="laptop", overrides=[*TINY, *extra])


def test_same_config_twice_gives_identical_metrics_and_weights(tmp_path):
    a = earlyphase.train(tiny(), store=tmp_path / "a")
    b = earlyphase.train(tiny(), store=tmp_path / "b")
    assert a.id == b.id
    ma, mb = a.metrics(), b.metrics()
    assert len(ma) > 0 and ma.equals(mb)
    for k, v in a.state_dict(60).items():
        assert torch.equal(v, b.state_dict(60)[k]), k
    assert set(ma.name) >= {"loss", "accuracy"} and set(ma.split) == {"train", "test"}
    assert sorted(ma[ma.name == "accuracy"].step.unique()) == [0, 20, 40, 60]


def test_a_stored_run_is_not_trained_again(tmp_path):
    run = earlyphase.train(tiny(), store=tmp_path)
    ckpt = run.path / "checkpoints" / "60.safetensors"
    before = (ckpt.stat().st_mtime_ns, (run.path / "status.json").read_bytes())
    again = earlyphase.train(tiny(), store=tmp_path)
    assert again.id == run.id
    assert (ckpt.stat().st_mtime_ns, (run.path / "status.json").read_bytes()) == before


def test_more_observations_rerun_deterministically_and_add_only_what_is_missing(tmp_path):
    run = earlyphase.train(tiny(), store=tmp_path / "s")
    status_before = (run.path / "status.json").read_bytes()
    final_mtime = (run.path / "checkpoints" / "60.safetensors").stat().st_mtime_ns
    more = earlyphase.train(tiny('observe.checkpoints=["7it", "33it"]', 'observe.recorders=["grad_norm"]'),
                            store=tmp_path / "s")
    assert more.id == run.id
    assert more.checkpoint_steps() == [7, 33, 60]
    assert (run.path / "status.json").read_bytes() == status_before
    assert (run.path / "checkpoints" / "60.safetensors").stat().st_mtime_ns == final_mtime
    assert "grad_norm" in set(more.metrics().name)
    # the added checkpoint is what a run that asked for it from the start holds
    direct = earlyphase.train(tiny('observe.checkpoints=["7it"]'), store=tmp_path / "t")
    for k, v in direct.state_dict(7).items():
        assert torch.equal(v, more.state_dict(7)[k])
    # metrics hold each observation once
    m = more.metrics()
    assert not m.duplicated(["step", "name", "layer", "split"]).any()


def _train_cmd(store, extra=()):
    return [sys.executable, "-m", "earlyphase.cli", "train", "--preset", "laptop", "--store", str(store), "--quiet",
            *[a for o in [*TINY, "train.steps=1200it", *extra] for a in ("--set", o)]]


def test_a_killed_run_resumes_to_the_same_final_weights(tmp_path):
    env = {**os.environ, "EARLYPHASE_HOME": str(tmp_path / "home")}
    # uninterrupted reference
    subprocess.run(_train_cmd(tmp_path / "ref"), check=True, env=env, capture_output=True)
    # killed after its first resume checkpoint
    proc = subprocess.Popen(_train_cmd(tmp_path / "kill"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rid = run_id(tiny("train.steps=1200it"))
    resume = tmp_path / "kill" / "runs" / rid / "checkpoints" / "resume.safetensors"
    deadline = time.time() + 120
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(tmp_path / "kill")
    assert store.run(rid).status()["status"] == "running"
    assert not store.run(rid).is_locked()  # a killed process releases its lock
    out = subprocess.run(_train_cmd(tmp_path / "kill"), check=True, env=env, capture_output=True, text=True)
    assert rid in out.stdout
    resumed = earlyphase.Run(store.run(rid))
    reference = earlyphase.Run(Store(tmp_path / "ref").run(rid))
    assert resumed.status == "done"
    assert resumed.path.joinpath("provenance.json").read_text().count("resumed_from") == 1
    assert store.run(rid).provenance()["resumed_from"][0] > 0
    for k, v in reference.state_dict(1200).items():
        assert torch.equal(v, resumed.state_dict(1200)[k]), k
    ref_m, res_m = reference.metrics(), resumed.metrics()
    assert ref_m[["step", "name", "split"]].equals(res_m[["step", "name", "split"]])
    assert (ref_m.value == res_m.value).all()
    assert not resume.exists()


def test_masked_weights_stay_exactly_zero(tmp_path):
    cfg = tiny('observe.checkpoints=["1it", "10it"]')
    store = Store(tmp_path)
    from earlyphase.data import load_dataset

    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.out_dim)
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    mask = {n: torch.rand(params[n].shape, generator=g) < 0.3 for n in prunable_names(model, prune_output=False)}
    mask_id = store.save_mask(mask)
    run = earlyphase.train(cfg.replace(mask=MaskConfig(kind="stored", id=mask_id)), store=store)
    for step in run.checkpoint_steps():
        sd = run.state_dict(step)
        for name, m in mask.items():
            assert (sd[name][~m] == 0).all(), (step, name)
            assert (sd[name][m] != 0).float().mean() > 0.9
    assert run.final_accuracy > 0.2


def test_a_mask_for_another_model_is_refused(tmp_path):
    store = Store(tmp_path)
    mask_id = store.save_mask({"net.0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(UserError, match="does not fit"):
        earlyphase.train(tiny().replace(mask=MaskConfig(kind="stored", id=mask_id)), store=store)
    assert list((tmp_path / "runs").iterdir()) == []


def test_learning_rate_schedule():
    cfg = load_run_config(preset="laptop").train
    assert lr_at(cfg, 0, 80) == pytest.approx(0.1)
    assert lr_at(cfg, 1499, 80) == pytest.approx(0.1)
    assert lr_at(cfg, 1500, 80) == pytest.approx(0.01)
    assert lr_at(cfg, 2250, 80) == pytest.approx(0.001)
    warm = load_run_config(overrides=['train.warmup="10it"', "train.lr=1.0"]).train
    assert [lr_at(warm, t, 10) for t in (0, 4, 9, 10, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0])


def test_a_run_started_at_k_uses_the_dense_learning_rate(tmp_path):
    parent = earlyphase.train(tiny('observe.checkpoints=["40it"]'), store=tmp_path)
    child = earlyphase.train(tiny('observe.recorders=["lr"]', f'start_run="{parent.id}"', 'start_step="40it"'),
                             store=tmp_path)
    lr = child.curve("lr", "train")
    assert list(lr.index) == [40, 60]
    assert lr[40] == pytest.approx(0.01) and lr[60] == pytest.approx(0.001)
    assert child.checkpoint_steps() == [60]
    with pytest.raises(UserError, match="no checkpoint at step 20"):
        earlyphase.train(tiny(f'start_run="{parent.id}"', 'start_step="20it"'), store=tmp_path)
    with pytest.raises(UserError, match="beyond the training length"):
        earlyphase.train(tiny(f'start_run="{parent.id}"', 'start_step="99it"'), store=tmp_path)


def test_checkpoint_schedules():
    dense = dense_schedule(4000)
    assert dense[:101] == list(range(101)) and dense[-1] == 4000
    after = [s for s in dense if s > 100]
    assert 30 <= len(after) <= 34 and len(set(after)) == len(after)
    assert pow2_schedule(100) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert checkpoint_steps(("5it", "1ep"), "pow2", 64, 10) == [0, 1, 2, 4, 5, 8, 10, 16, 32, 64]
    with pytest.raises(UserError, match="beyond"):
        checkpoint_steps(("100it",), "none", 64, 10)


def test_full_batch_square_loss_descends_monotonically(tmp_path):
    cfg = load_run_config(overrides=[
        'data.name="gaussian"', "data.n_train=300", "data.n_test=100", "data.dim=20", 'data.targets="pm1"',
        'model.name="two_layer"', "model.width=200", "train.full_batch=true", 'train.loss="square"',
        "train.lr=1.0", "train.momentum=0.0", 'train.steps="40it"', 'observe.eval_every="1it"',
        "observe.progress=false"])
    run = earlyphase.train(cfg, store=tmp_path)
    loss = run.curve("loss", "train")
    assert loss.iloc[0] == pytest.approx(0.5, abs=1e-6)  # symmetric init: f0 = 0, targets +-1
    assert (loss.diff().dropna() < 0).all()
    assert run.final_accuracy > 0.6


def test_adam_and_augmentation_train(tmp_path):
    cfg = load_run_config(overrides=[
        'data.name="digits"', "data.augment=true", "data.normalize=true", 'model.name="conv2"',
        'train.optimizer="adam"', "train.lr=0.001", "train.batch_size=64", 'train.steps="8ep"',
        "observe.progress=false"])
    run = earlyphase.train(cfg, store=tmp_path)
    loss = run.curve("loss", "train")
    assert loss.iloc[-1] < 0.5 * loss.iloc[0]


def test_grad_norm_recorder(tmp_path):
    run = earlyphase.train(tiny('observe.recorders=["grad_norm"]'), store=tmp_path)
    g = run.curve("grad_norm", "train")
    assert list(g.index) == [20, 40, 60] and (g > 0).all()
    with pytest.raises(UserError, match="unknown recorder"):
        earlyphase.train(tiny('observe.recorders=["nope"]'), store=tmp_path)


@pytest.mark.slow
def test_laptop_preset_reaches_95_percent(tmp_path):
    run = earlyphase.train(preset="laptop", store=tmp_path, progress=False)
    assert run.final_accuracy >= 0.95


@pytest.mark.parametrize("kw", [dict(momentum=0.9, weight_decay=1e-4), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.0, weight_decay=5e-4), dict(momentum=0.5, dampening=0.1)])
def test_direct_sgd_step_is_bit_identical_to_optimizer_step(kw):
    """The loop's SGD step skips optimizer.step()'s wrappers; weights and momentum must not move by a bit."""
    from earlyphase.train.loop import step_function

    def make():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
        groups = [{"params": list(net[0].parameters()), "lr": 0.05}, {"params": list(net[2].parameters())},
                  {"params": list(net[3].parameters())}]  # net[3] is never used: its grads stay None
        return net, torch.optim.SGD(groups, lr=0.1, foreach=True, **kw)

    (a, opt_a), (b, opt_b) = make(), make()
    step_b = step_function(opt_b)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for t in range(25):
        for net, opt, step in ((a, opt_a, opt_a.step), (b, opt_b, step_b)):
            opt.param_groups[1]["lr"] = 0.1 / (1 + t)
            for p in net.parameters():
                p.grad = None
            torch.nn.functional.cross_entropy(net[2](net[1](net[0](x[:, :6] + t))), y).backward()
            step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
                                          for i in sa if sa[i].get("momentum_buffer") is not None)
    differentiable = torch.optim.SGD(a.parameters(), lr=0.1, differentiable=True)
    assert step_function(differentiable) == differentiable.step  # keeps its own step (Adam: test_fixed_cost.py)
