"""The one scheduler: a ready-queue loop over the run graph, whatever runs the runs (this process, a
process pool, Ray), with one failure policy:

* a run found complete in the store is not trained again;
* a run stored as failed is reported, not retried, unless ``retry_failed``;
* a run that fails (its error, or its worker dying) is reported with the error, and every run that
  depends on it is blocked; independent runs go on (a dead worker's run resumes next time);
* an interrupt cancels the runs in flight (each resumes from its last checkpoint) and propagates.

A backend runs one run at a time per slot: ``submit(rid, cfg_data)`` starts it, ``wait()`` returns
at least one finished (run id, error or None)."""
from __future__ import annotations

from typing import Protocol

from ..errors import UserError
from ..store import Store
from .base import ExecutionReport, Work, check_graph, encode, stored_status, with_threads
from .graph import RunGraph
from .progress import SweepProgress


class Backend(Protocol):
    slots: int  # runs at once (0: no limit)
    threads: int | None  # torch threads per run (None: the run's own setting)

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, rid: str, cfg_data: dict) -> None: ...

    def wait(self) -> list[tuple[str, str | None]]: ...


def schedule(graph: RunGraph, store: Store, backend: Backend, work: Work, *, retry_failed: bool = False,
             progress: bool = True) -> ExecutionReport:
    """Run ``graph`` into ``store`` in dependency order; runs start as soon as their parents finish."""
    check_graph(graph, store)
    report = ExecutionReport()
    waiting: list[str] = []
    for rid in graph.topological():
        if stored_status(store, rid) == "failed" and not retry_failed:
            report.failed[rid] = store.run(rid).status().get("error", "failed earlier")
        else:
            waiting.append(rid)
    done = {p for rid in graph for p in graph.parents(rid) if p not in graph.nodes}
    running: set[str] = set()
    with SweepProgress(len(graph), enabled=progress) as bar, backend:
        bar.advance(len(graph) - len(waiting))
        while waiting or running:
            before, blocked = len(waiting), len(report.blocked)
            for rid in _ready(graph, waiting, running, done, report, backend.slots):
                bar.advance(_start(rid, graph, store, backend, work, report, running, done))
            bar.advance(len(report.blocked) - blocked)
            if not running:
                if len(waiting) == before:  # nothing could start and nothing runs: never spin
                    raise RuntimeError(f"runs wait on parents that never finish: {waiting[:3]}")
                continue
            for rid, error in backend.wait():
                running.discard(rid)
                if error is None:
                    report.trained.append(rid)
                    done.add(rid)
                else:
                    report.failed[rid] = error
                bar.advance(1)
    return report


def _ready(graph: RunGraph, waiting: list[str], running: set[str], done: set[str], report: ExecutionReport,
           slots: int) -> list[str]:
    """Runs that can start now, taken off ``waiting``; runs whose parents failed go to blocked."""
    out = []
    for rid in list(waiting):
        parents = graph.parents(rid)
        if any(p in report.failed or p in report.blocked for p in parents):
            waiting.remove(rid)
            report.blocked.append(rid)
        elif parents <= done and not (slots and len(running) + len(out) >= slots):
            waiting.remove(rid)
            out.append(rid)
    return out


def _start(rid: str, graph: RunGraph, store: Store, backend: Backend, work: Work, report: ExecutionReport,
           running: set[str], done: set[str]) -> int:
    """Find the run in the store or hand it to the backend; returns how many runs are settled (0 or 1)."""
    cfg = with_threads(graph.nodes[rid], backend.threads)
    try:
        complete = work.complete(cfg, store)
    except UserError as e:
        report.failed[rid] = str(e)
        return 1
    if complete:
        report.found.append(rid)
        done.add(rid)
        return 1
    backend.submit(rid, encode(cfg))
    running.add(rid)
    return 0
