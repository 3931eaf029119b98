"""The local executor: runs a graph in dependency order, in this process or a process pool.

Finished runs are found, not trained; failed runs are skipped (with their dependents) unless
``retry_failed``. Runs start as soon as their parents finish, so independent IMP chains overlap."""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from ..store import Store
from .base import ExecutionReport, blocked, check_graph, record, encode, run_one, stored_status, threads_per_worker, with_threads
from .graph import RunGraph
from .progress import SweepProgress


class LocalExecutor:
    def __init__(self, workers: int = 1, *, progress: bool = True) -> None:
        self.workers = max(1, workers)
        self.progress = progress

    def run(self, graph: RunGraph, store: Store, *, retry_failed: bool = False) -> ExecutionReport:
        check_graph(graph, store)
        report = ExecutionReport()
        pending: list[str] = []
        for rid in graph.topological():
            status = stored_status(store, rid)
            if status == "failed" and not retry_failed:
                report.failed[rid] = store.run(rid).status().get("error", "failed earlier")
            else:
                pending.append(rid)
        threads = threads_per_worker(self.workers) if self.workers > 1 else None
        done: set[str] = {p for rid in graph for p in graph.parents(rid) if p not in graph.nodes}
        with SweepProgress(len(graph), enabled=self.progress) as bar:
            bar.advance(len(graph) - len(pending))
            if self.workers == 1:
                for rid in pending:
                    if blocked(graph, rid, report):
                        bar.advance(1)
                        continue
                    before = stored_status(store, rid)
                    _, error = run_one(encode(with_threads(graph.nodes[rid], threads)), str(store.root))
                    record(report, rid, error, before=before)
                    bar.advance(1)
            else:
                self._pool(graph, store, pending, done, report, bar, threads)
        return report

    def _pool(self, graph: RunGraph, store: Store, pending: list[str], done: set[str], report: ExecutionReport,
              bar: SweepProgress, threads: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        waiting = list(pending)
        running: dict[Future, tuple[str, str]] = {}
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            while waiting or running:
                for rid in list(waiting):
                    if len(running) >= self.workers:
                        break
                    if blocked(graph, rid, report):
                        waiting.remove(rid)
                        bar.advance(1)
                        continue
                    if graph.parents(rid) <= done:
                        waiting.remove(rid)
                        fut = pool.submit(run_one, encode(with_threads(graph.nodes[rid], threads)), str(store.root))
                        running[fut] = (rid, stored_status(store, rid))
                if not running:
                    time.sleep(0.01)
                    continue
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    rid, before = running.pop(fut)
                    _, error = fut.result()
                    record(report, rid, error, before=before)
                    bar.advance(1)
                    if error is None:
                        done.add(rid)
