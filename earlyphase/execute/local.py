"""The local executor: the scheduler with this process, or a pool of spawned processes, as backend.

Finished runs are found, not trained; failed runs are skipped (with their dependents) unless
``retry_failed``. Runs start as soon as their parents finish, so independent IMP chains overlap."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from ..store import Store
from .base import ExecutionReport, Work, check_graph, default_work, run_one, threads_per_worker, worker_entries
from .graph import RunGraph
from .orphan import init_worker
from .scheduler import schedule

DIED = "its worker process died ({}); run again to resume it from its last checkpoint"


class InProcess:
    """Runs each run in this process, one at a time, on its own thread setting."""

    slots, threads = 1, None

    def __init__(self, train: Callable, root: str) -> None:
        self.train, self.root = train, root
        self._finished: list[tuple[str, str | None]] = []

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, rid: str, cfg_data: dict) -> None:
        self._finished.append((rid, run_one(self.train, cfg_data, self.root)[1]))

    def wait(self) -> list[tuple[str, str | None]]:
        out, self._finished = self._finished, []
        return out


class ProcessPool:
    """Runs ``workers`` runs at once in spawned processes, each with its share of the cores. The pool
    starts on the first run it is given; a worker that dies fails its run, and a new pool serves the rest."""

    def __init__(self, train: Callable, root: str, workers: int, entries: list[Any]) -> None:
        self.train, self.root, self.entries = train, root, entries
        self.slots, self.threads = workers, threads_per_worker(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Future, tuple[str, ProcessPoolExecutor]] = {}

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._pool is not None:  # interrupted: drop what has not started; the runs in flight resume later
            self._pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def submit(self, rid: str, cfg_data: dict) -> None:
        if self._pool is not None:
            try:
                self._running[self._pool.submit(run_one, self.train, cfg_data, self.root)] = rid, self._pool
                return
            except BrokenProcessPool:  # a worker died since the last wait: the runs in flight fail there
                self._pool.shutdown(wait=False)
        ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        self._pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=ctx, initializer=init_worker,
                                         initargs=(os.getpid(), self.entries))
        self._running[self._pool.submit(run_one, self.train, cfg_data, self.root)] = rid, self._pool

    def wait(self) -> list[tuple[str, str | None]]:
        finished, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        out = []
        for fut in finished:
            rid, pool = self._running.pop(fut)
            try:
                out.append((rid, fut.result()[1]))
            except BrokenProcessPool as e:  # every run in flight on that pool fails with it
                out.append((rid, DIED.format(e)))
                if self._pool is pool:
                    pool.shutdown(wait=False)
                    self._pool = None
        return out


class LocalExecutor:
    def __init__(self, workers: int = 1, *, progress: bool = True) -> None:
        self.workers = max(1, workers)
        self.progress = progress

    def check(self, graph: RunGraph, store: Store) -> list[Any]:
        """Bad input before anything runs: parents missing from the store, or run-time registrations
        that worker processes cannot import. Returns what the workers need to import."""
        check_graph(graph, store)
        return worker_entries(graph) if self.workers > 1 else []

    def run(self, graph: RunGraph, store: Store, *, retry_failed: bool = False,
            work: Work | None = None) -> ExecutionReport:
        work = work or default_work()
        entries = self.check(graph, store)
        root = str(store.root)
        backend = InProcess(work.train, root) if self.workers == 1 else ProcessPool(work.train, root, self.workers,
                                                                                    entries)
        return schedule(graph, store, backend, work, retry_failed=retry_failed, progress=self.progress)
