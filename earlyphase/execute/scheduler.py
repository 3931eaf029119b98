"""The one scheduler: a ready-queue loop over the run graph, whatever runs the runs (this process, a
process pool, Ray), with one failure policy:

* a run found complete in the store is not trained again;
* a run stored as failed is reported, not retried, unless ``retry_failed``;
* a run that fails (its error, or its worker dying) is reported with the error, and every run that
  depends on it is blocked; independent runs go on (a dead worker's run resumes next time);
* an interrupt cancels the runs in flight (each resumes from its last checkpoint) and propagates.

The unit of work is a job: one run, or with ``batch_runs`` > 1 a group of runs trained as one batched
model. Groups are formed from the plan alone (runs of one batch key at one depth of the graph, in
topological order, chunks of ``batch_runs``), so the same plan always gives the same groups.

A backend runs one job at a time per slot: ``submit(rids, cfg_datas)`` starts it, ``wait()`` returns
(run id, error or None) for every run of at least one finished job."""
from __future__ import annotations

from typing import Protocol

from ..errors import UserError
from ..store import Store
from .base import ExecOptions, ExecutionReport, Work, check_graph, encode, stored_status, with_threads
from .graph import RunGraph
from .progress import SweepProgress


class Backend(Protocol):
    slots: int  # jobs at once (0: no limit)
    threads: int | None  # torch threads per job (None: the run's own setting)

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, rids: list[str], cfg_datas: list[dict]) -> None: ...

    def wait(self) -> list[tuple[str, str | None]]: ...


def plan_units(graph: RunGraph, work: Work, batch_runs: int) -> list[list[str]]:
    """The jobs of a plan, deterministically: single runs, or groups of up to ``batch_runs`` runs of
    one batch key and one depth (a run's depth is one more than its deepest parent's)."""
    order = graph.topological()
    if batch_runs <= 1 or work.batch_key is None or work.train_group is None:
        return [[rid] for rid in order]
    depth: dict[str, int] = {}
    buckets: dict[tuple, list[str]] = {}
    for rid in order:
        depth[rid] = 1 + max((depth[p] for p in graph.parents(rid) if p in depth), default=-1)
        key = work.batch_key(graph.nodes[rid])
        buckets.setdefault((depth[rid], key) if key is not None else ("alone", rid), []).append(rid)
    position = {rid: i for i, rid in enumerate(order)}
    units = [rids[i:i + batch_runs] for rids in buckets.values() for i in range(0, len(rids), batch_runs)]
    return sorted(units, key=lambda u: position[u[0]])


def schedule(graph: RunGraph, store: Store, backend: Backend, work: Work, *, retry_failed: bool = False,
             progress: bool = True, options: ExecOptions = ExecOptions()) -> ExecutionReport:
    """Run ``graph`` into ``store`` in dependency order; jobs start as soon as their runs' parents finish."""
    check_graph(graph, store)
    report = ExecutionReport()
    waiting: list[list[str]] = []
    for unit in plan_units(graph, work, options.batch_runs_for(graph)):
        for rid in [r for r in unit if stored_status(store, r) == "failed" and not retry_failed]:
            report.failed[rid] = store.run(rid).status().get("error", "failed earlier")
            unit.remove(rid)
        if unit:
            waiting.append(unit)
    done = {p for rid in graph for p in graph.parents(rid) if p not in graph.nodes}
    running: dict[str, int] = {}  # run id -> its job
    with SweepProgress(len(graph), enabled=progress) as bar, backend:
        bar.advance(len(graph) - sum(map(len, waiting)))
        while waiting or running:
            before, blocked = sum(map(len, waiting)), len(report.blocked)
            for unit in _ready(graph, waiting, running, done, report, backend.slots):
                bar.advance(_start(unit, graph, store, backend, work, report, running, done, options))
            bar.advance(len(report.blocked) - blocked)
            if not running:
                if sum(map(len, waiting)) == before:  # nothing could start and nothing runs: never spin
                    raise RuntimeError(f"runs wait on parents that never finish: {waiting[:3]}")
                continue
            for rid, error in backend.wait():
                running.pop(rid, None)
                if error is None:
                    report.trained.append(rid)
                    done.add(rid)
                else:
                    report.failed[rid] = error
                bar.advance(1)
    return report


def _ready(graph: RunGraph, waiting: list[list[str]], running: dict[str, int], done: set[str],
           report: ExecutionReport, slots: int) -> list[list[str]]:
    """Jobs that can start now, taken off ``waiting``; runs whose parents failed go to blocked."""
    out: list[list[str]] = []
    jobs = len(set(running.values()))
    for unit in list(waiting):
        for rid in [r for r in unit if any(p in report.failed or p in report.blocked for p in graph.parents(r))]:
            unit.remove(rid)
            report.blocked.append(rid)
        if not unit:
            waiting.remove(unit)
        elif all(graph.parents(r) <= done for r in unit) and not (slots and jobs + len(out) >= slots):
            waiting.remove(unit)
            out.append(unit)
    return out


def _start(unit: list[str], graph: RunGraph, store: Store, backend: Backend, work: Work, report: ExecutionReport,
           running: dict[str, int], done: set[str], options: ExecOptions) -> int:
    """Find the job's runs in the store, hand the others to the backend; returns how many are settled."""
    todo: list[tuple[str, dict]] = []
    for rid in unit:
        cfg = options.apply(with_threads(graph.nodes[rid], backend.threads))
        try:
            complete = work.complete(cfg, store)
        except UserError as e:
            report.failed[rid] = str(e)
            continue
        if complete:
            report.found.append(rid)
            done.add(rid)
        else:
            todo.append((rid, encode(cfg)))
    if todo:
        backend.submit([rid for rid, _ in todo], [data for _, data in todo])
        job = 1 + max(running.values(), default=0)
        running.update({rid: job for rid, _ in todo})
    return len(unit) - len(todo)
