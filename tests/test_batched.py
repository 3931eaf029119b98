"""Batched runs (``--batch-runs``): a run trained in a group agrees with the same run trained alone,
groups are planned deterministically, a killed group resumes, runs a group cannot take train alone
and say why."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from earlyphase.config import MaskConfig, load_run_config, run_id
from earlyphase.execute import ExecOptions, LocalExecutor, RunGraph
from earlyphase.execute.scheduler import plan_units
from earlyphase.store import Store
from earlyphase.train import batched
from earlyphase.train.work import WORK

SMALL = ['data.n_train=400', 'data.n_test=200', 'train.steps="20it"', 'train.milestones=["10it"]',
         'observe.checkpoints=["0it", "5it", "20it"]', 'observe.eval_every="10it"', "observe.progress=false"]


def cfg_of(*extra: str, seed: int = 0):
    return load_run_config(preset="laptop", overrides=[*SMALL, *extra]).replace(seed=seed, data_seed=seed)


def run(graph: RunGraph, store: Store, batch_runs: int, **kw):
    report = LocalExecutor(1, progress=False, options=ExecOptions(batch_runs=batch_runs)).run(graph, store, work=WORK,
                                                                                             **kw)
    return report


def weights(store: Store, rid: str, step: int) -> dict[str, torch.Tensor]:
    return store.run(rid).load(step)[0]


def assert_close_runs(a: Store, b: Store, rids: list[str], step: int, tol: float = 1e-4) -> None:
    for rid in rids:
        wa, wb = weights(a, rid, step), weights(b, rid, step)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k], wb[k], rtol=tol, atol=tol), (rid, k, (wa[k] - wb[k]).abs().max())
        ma = a.run(rid).metrics().sort_values(["step", "name", "layer", "split"]).value.to_numpy()
        mb = b.run(rid).metrics().sort_values(["step", "name", "layer", "split"]).value.to_numpy()
        assert np.allclose(ma, mb, rtol=1e-3, atol=1e-3)


def test_batched_runs_agree_with_runs_alone_over_20_steps(tmp_path):
    graph = RunGraph()
    rids = [graph.add(cfg_of(seed=s)) for s in range(3)]
    alone, together = Store(tmp_path / "alone"), Store(tmp_path / "together")
    assert run(graph, alone, 1).ok and run(graph, together, 3).ok
    assert_close_runs(alone, together, rids, 20)
    first = next(k for k in weights(together, rids[0], 0) if k.endswith("weight"))
    assert not torch.equal(weights(together, rids[0], 20)[first], weights(together, rids[0], 0)[first])  # it trained
    prov = [together.run(r).provenance()["execution"] for r in rids]
    assert [p["mode"] for p in prov] == ["batched"] * 3 and prov[0]["group"] == rids
    assert [p["group_index"] for p in prov] == [0, 1, 2]
    assert alone.run(rids[0]).provenance()["execution"]["mode"] == "single"


def test_masked_runs_from_stored_weights_batched(tmp_path):
    """IMP level 1 of two rewound runs (masks from a dense run's final weights, start at step 5)."""
    graph = RunGraph()
    dense = graph.add(cfg_of())
    kids = [graph.add(cfg_of(seed=s).replace(start_run=dense, start_step="5it",
                                              mask=MaskConfig(kind="magnitude", from_run=dense, fraction=0.5)))
            for s in (1, 2)]
    alone, together = Store(tmp_path / "alone"), Store(tmp_path / "together")
    assert run(graph, alone, 1).ok and run(graph, together, 4).ok
    assert together.run(dense).provenance()["execution"]["group"] == [dense]  # a group of one: the same mode
    assert together.run(kids[0]).provenance()["execution"]["group"] == kids
    assert_close_runs(alone, together, kids, 20)
    w = weights(together, kids[0], 20)
    pruned = [k for k in w if k.endswith("weight") and (w[k] == 0).float().mean() > 0.3]
    assert pruned  # the masks held


def test_groups_are_planned_from_the_plan(tmp_path):
    graph = RunGraph()
    fresh = [graph.add(cfg_of(seed=s)) for s in range(5)]
    adam = graph.add(cfg_of('train.optimizer="adam"'))
    units = plan_units(graph, WORK, 2)
    assert units == plan_units(graph, WORK, 2)  # the same plan, the same groups
    assert sorted(map(len, units)) == [1, 1, 2, 2] and [adam] in units
    assert sorted(sum(units, [])) == sorted([*fresh, adam])
    assert plan_units(graph, WORK, 1) == [[r] for r in graph.topological()]
    assert batched.refusal(graph.nodes[adam]) == "optimizer adam (batched runs use SGD)"


def test_a_killed_group_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    graph = RunGraph()
    steps = ['train.steps="60it"', 'train.milestones=["40it"]', 'observe.checkpoints=["60it"]']
    rids = [graph.add(cfg_of(*steps, seed=s)) for s in range(2)]
    clean, killed = Store(tmp_path / "clean"), Store(tmp_path / "killed")
    assert run(graph, clean, 2).ok
    real = batched._Loop.save_resume

    def save_then_die(self, step):
        real(self, step)
        raise KeyboardInterrupt

    monkeypatch.setattr(batched._Loop, "save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(graph, killed, 2)
    assert all(killed.run(r).resume_path.is_file() for r in rids)
    monkeypatch.setattr(batched._Loop, "save_resume", real)
    assert run(graph, killed, 2, retry_failed=True).ok
    for rid in rids:
        assert killed.run(rid).provenance()["resumed_from"] == [20]
        for k, v in weights(clean, rid, 60).items():
            assert torch.equal(v, weights(killed, rid, 60)[k]), k


def test_refused_runs_train_alone_and_say_why(tmp_path):
    graph = RunGraph()
    rids = [graph.add(cfg_of('train.optimizer="adam"', "train.lr=0.001", seed=s)) for s in range(2)]
    store = Store(tmp_path)
    batched.train_group([graph.nodes[r] for r in rids], store)
    for rid in rids:
        ex = store.run(rid).provenance()["execution"]
        assert ex["mode"] == "single" and ex["batch_refused"] == "optimizer adam (batched runs use SGD)"


def test_a_refused_run_that_fails_fails_alone(tmp_path):
    """Runs a group cannot take train one after another; one that fails does not fail the others."""
    graph = RunGraph()
    good = graph.add(cfg_of('train.optimizer="adam"', "train.lr=0.001"))
    bad = graph.add(cfg_of('train.optimizer="adam"', "train.lr=0.001", seed=1).replace(start_run=good, start_step="7it"))
    store = Store(tmp_path)
    errors = batched.train_group([graph.nodes[good], graph.nodes[bad]], store)
    assert errors[good] is None and "no checkpoint at step 7" in errors[bad]
    assert store.run(good).status()["status"] == "done"


def test_a_diverging_group_fails_at_its_step_and_stores_nothing_as_done(tmp_path):
    """Runs of a batched group whose loss becomes NaN or infinite are marked failed with the step of
    the first such evaluation, never stored as done (runs of one group share the learning rate)."""
    store = Store(tmp_path)
    graph = RunGraph()
    rids = [graph.add(cfg_of("train.lr=1e30", seed=s)) for s in range(2)]
    errors = batched.train_group([graph.nodes[r] for r in rids], store)
    for rid in rids:
        status = store.run(rid).status()
        assert status["status"] == "failed" and "NaN or infinite" in status["error"] and status["step"] == 5  # the first evaluation (a checkpoint) after it
        assert "NaN or infinite" in errors[rid]
