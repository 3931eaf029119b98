"""The Ray executor: a small rewinding sweep through a local Ray instance gives bit for bit what the local
executor gives; a cluster address that does not answer fails at once, before anything is planned.

One Ray sweep per module (Ray's start-up costs several seconds); everything else needs no Ray."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402

from earlyphase.cli import main  # noqa: E402
from earlyphase.errors import UserError  # noqa: E402
from earlyphase.execute import ExecutionReport, LocalExecutor, RunGraph, make_executor  # noqa: E402
from earlyphase.execute.ray_executor import RayExecutor  # noqa: E402
from earlyphase.experiments.runner import get_experiment, load_experiment_config  # noqa: E402
from earlyphase.store import Store  # noqa: E402

SWEEP = ['levels=2', 'seeds=1', 'rewind=["0it", "50it"]', 'run.train.steps="120it"', 'run.train.milestones=[]',
         'run.data.n_train=400', 'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']


@dataclass
class Sweep:
    graph: RunGraph
    local: Store
    ray: Store
    local_report: ExecutionReport
    ray_report: ExecutionReport
    home: Path
    ray_wrote_cache: bool
    ray_left_running: bool


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    """The same 9-run plan (dense, two IMP chains of 2 levels, controls) run by RayExecutor(workers=2)
    into one store and by LocalExecutor(1) into another."""
    base = tmp_path_factory.mktemp("ray")
    home = base / "home"  # a fresh $EARLYPHASE_HOME: the workers must see it for the data cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARLYPHASE_HOME", str(home))
        exp = get_experiment("rewinding")
        cfg = load_experiment_config(exp, preset="laptop", overrides=SWEEP)
        a, b = Store(base / "local"), Store(base / "ray")
        graph = exp.plan(cfg, b).graph
        for f in (home / "cache").glob("mnist1d-*.npz"):  # planning cached the data here; drop it so the
            f.unlink()  # Ray workers (which load it afresh) show whether they write to $EARLYPHASE_HOME
        ray_report = RayExecutor(workers=2, progress=False).run(graph, b)
        ray_wrote_cache = any((home / "cache").glob("mnist1d-*.npz"))
        ray_left_running = ray.is_initialized()
        local_report = LocalExecutor(1, progress=False).run(graph, a)
    return Sweep(graph, a, b, local_report, ray_report, home, ray_wrote_cache, ray_left_running)


def test_ray_sweep_trains_every_run_in_dependency_order(sweep):
    assert len(sweep.graph) == 9
    for report in (sweep.ray_report, sweep.local_report):
        assert report.ok, report
        assert sorted(report.trained) == sorted(sweep.graph)
    for store in (sweep.ray, sweep.local):
        assert all(store.run(rid).status()["status"] == "done" for rid in sweep.graph)
    assert not sweep.ray_left_running, "the executor must shut down the local Ray instance it started"


def test_ray_workers_see_earlyphase_home(sweep):
    assert sweep.ray_wrote_cache


def test_ray_and_local_runs_are_bit_identical(sweep):
    for rid in sweep.graph:
        ra, rb = sweep.local.run(rid), sweep.ray.run(rid)
        assert ra.checkpoint_steps() == rb.checkpoint_steps(), rid
        final = max(ra.checkpoint_steps())
        ta, tb = ra.load(final)[0], rb.load(final)[0]
        assert ta.keys() == tb.keys(), rid
        for name in ta:
            assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), (rid, name)
        ma, mb = ra.metrics(), rb.metrics()
        assert len(ma) > 0
        assert ma.equals(mb), rid
        assert rb.provenance()["threads"] == 1


def test_finished_sweep_is_found_without_starting_ray(sweep):
    t0 = time.perf_counter()
    report = RayExecutor(workers=2, progress=False).run(sweep.graph, sweep.ray)
    assert sorted(report.found) == sorted(sweep.graph) and report.ok and not report.trained
    assert not ray.is_initialized()
    assert time.perf_counter() - t0 < 5


def test_failed_runs_are_skipped_and_their_dependents_blocked(sweep, tmp_path):
    """A stored failure is reported, not retried, and blocks its descendants; no Ray task is needed."""
    store = Store(tmp_path / "store")
    root = next(rid for rid in sweep.graph if not sweep.graph.parents(rid))
    rd = store.run(root)
    rd.write_spec({"kind": "train", "run_id": root})
    rd.set_status("failed", error="boom")
    report = RayExecutor(workers=2, progress=False).run(sweep.graph, store)
    assert report.failed == {root: "boom"}
    assert sorted(report.blocked) == sorted(set(sweep.graph) - {root})
    assert not ray.is_initialized()


def test_unanswered_address_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"127\.0\.0\.1:1 does not answer within 1 s"):
        RayExecutor(address="127.0.0.1:1", connect_timeout=1)
    assert time.perf_counter() - t0 < 2.5
    with pytest.raises(UserError, match="ray://127.0.0.1:1"):
        make_executor("ray", address="ray://127.0.0.1:1")


def test_auto_address_checks_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(UserError, match=r"Ray address auto \(127\.0\.0\.1:1 from \$RAY_ADDRESS\) does not answer"):
        RayExecutor(address="auto", connect_timeout=1)


def test_malformed_address_is_a_user_error():
    with pytest.raises(UserError, match="not host:port"):
        RayExecutor(address="somewhere")


def test_cli_unanswered_address_exits_2_before_planning(tmp_path, capsys):
    store = tmp_path / "store"
    t0 = time.perf_counter()
    code = main(["run", "rewinding", "--executor", "ray", "--address", "127.0.0.1:1", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2
    assert time.perf_counter() - t0 < 10
    assert len(err.strip().splitlines()) == 1 and "127.0.0.1:1" in err, err
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())
    assert not (store / "experiments").exists()


def test_cli_unknown_executor_exits_2(tmp_path, capsys):
    code = main(["run", "rewinding", "--executor", "nope", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "nope" in err, err
