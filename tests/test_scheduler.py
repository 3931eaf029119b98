"""The one scheduler and its one failure policy, the same with every backend: a failed run is reported
with its error and blocks only its dependents; a dead worker fails its run and the sweep goes on;
stored runs are found; stored failures are not retried unless asked. The work here is a stand-in
(module-level functions, so pool workers import them by reference) that trains nothing."""
from __future__ import annotations

import os
import time

import pytest

from earlyphase.config import RunConfig, run_id
from earlyphase.execute import LocalExecutor, RunGraph, Work
from earlyphase.store import Store

FAIL, DIE, FOUND, SLOW = 13, 14, 15, 16  # seeds: the stand-in raises, kills its process, is stored, is slow


def fake_train(cfg: RunConfig, store: Store) -> None:
    if cfg.seed == FAIL:
        raise RuntimeError("boom")
    if cfg.seed == DIE:
        (store.root / "died").write_text("")
        os._exit(3)  # a worker killed mid-run
    if cfg.seed == SLOW:  # still in flight when the other worker dies
        deadline = time.time() + 120
        while not (store.root / "died").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)
    (store.root / f"trained-{run_id(cfg)}").write_text(str(os.getpid()))


def fake_complete(cfg: RunConfig, store: Store) -> bool:
    return cfg.seed == FOUND


WORK = Work(train=fake_train, complete=fake_complete)


def graph_of(*chains: tuple[int, ...]) -> tuple[RunGraph, dict[int, str]]:
    """One chain per tuple of seeds: each run starts from the previous one."""
    graph, ids = RunGraph(), {}
    for chain in chains:
        parent = None
        for seed in chain:
            cfg = RunConfig(seed=seed, start_run=parent, start_step="0it" if parent is None else "10it")
            ids[seed] = parent = graph.add(cfg)
    return graph, ids


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_blocks_only_its_dependents(tmp_path, workers):
    graph, ids = graph_of((FAIL, 1, 2), (3, 4), (FOUND, 5))
    store = Store(tmp_path / "store")
    report = LocalExecutor(workers, progress=False).run(graph, store, work=WORK)
    assert report.failed == {ids[FAIL]: "RuntimeError: boom"}
    assert sorted(report.blocked) == sorted([ids[1], ids[2]])
    assert report.found == [ids[FOUND]]
    assert sorted(report.trained) == sorted([ids[3], ids[4], ids[5]])
    assert {p.name for p in store.root.glob("trained-*")} == {f"trained-{ids[s]}" for s in (3, 4, 5)}
    pids = {(store.root / f"trained-{ids[s]}").read_text() for s in (3, 4, 5)}
    assert (pids == {str(os.getpid())}) == (workers == 1)  # in this process, or in workers


def test_a_dead_worker_fails_its_run_and_the_sweep_goes_on(tmp_path):
    graph, ids = graph_of((DIE, 1), (SLOW,), (3,), (4,))
    store = Store(tmp_path / "store")
    report = LocalExecutor(2, progress=False).run(graph, store, work=WORK)
    assert ids[DIE] in report.failed and report.blocked == [ids[1]]
    # a run in flight on the pool when it broke fails with it ("died": it resumes next time); the
    # sweep goes on with a new pool, so every other run ends trained or failed, never lost
    assert all("worker process died" in e for e in report.failed.values())
    assert set(report.trained) | set(report.failed) == {ids[DIE], ids[SLOW], ids[3], ids[4]}
    assert report.trained


def test_stored_failures_are_skipped_unless_retried(tmp_path):
    graph, ids = graph_of((1, 2))
    store = Store(tmp_path / "store")
    rd = store.run(ids[1])
    rd.write_spec({"kind": "train", "run_id": ids[1]})
    rd.set_status("failed", error="earlier")
    report = LocalExecutor(1, progress=False).run(graph, store, work=WORK)
    assert report.failed == {ids[1]: "earlier"} and report.blocked == [ids[2]] and not report.trained
    report = LocalExecutor(1, progress=False).run(graph, store, retry_failed=True, work=WORK)
    assert report.ok and report.trained == [ids[1], ids[2]]


def test_graph_carries_the_imp_level():
    """A magnitude mask derived from a run in the graph gets its level and parent mask (not part of
    the id), so no one reads ancestors' spec.json to find them."""
    from earlyphase.config import MaskConfig

    graph = RunGraph()
    dense = graph.add(RunConfig())
    prev, ids = dense, []
    for _ in range(3):
        cfg = RunConfig(start_run=dense, mask=MaskConfig(kind="magnitude", from_run=prev))
        before = run_id(cfg)
        prev = graph.add(cfg)
        assert prev == before
        ids.append(prev)
    levels = [graph.nodes[r].mask.level for r in ids]
    assert levels == [1, 2, 3]
    assert graph.nodes[ids[2]].mask.parent == graph.nodes[ids[1]].mask
    control = graph.add(RunConfig(start_run=dense, mask=MaskConfig(kind="random", like=graph.nodes[ids[2]].mask)))
    assert graph.nodes[control].mask.like.level == 3
