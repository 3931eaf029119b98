"""The local executor: the scheduler with this process, or a pool of spawned processes, as backend.

Finished runs are found, not trained; failed runs are skipped (with their dependents) unless
``retry_failed``. Runs start as soon as their parents finish, so independent IMP chains overlap."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from ..registry import install_entries
from ..store import Store
from .base import (ExecOptions, ExecutionReport, Work, check_graph, default_work, run_job, threads_per_worker,
                   worker_entries)
from .graph import RunGraph
from .orphan import die_with_parent
from .scheduler import schedule

DIED = "its worker process died ({}); run again to resume it from its last checkpoint"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (its own list if it has one)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def init_worker(parent_pid: int, entries: list[Any], gpus: list[str], counter: Any) -> None:
    """A pool worker's start: its life tied to its parent's (a killed sweep leaves no worker behind),
    the run-time registrations, and with several GPUs its own one, round robin by start order (set
    before CUDA starts in this process, so ``cuda`` means that GPU)."""
    die_with_parent(parent_pid)
    if gpus:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    install_entries(entries)


class InProcess:
    """Runs each job in this process, one at a time, on its own thread setting."""

    slots, threads = 1, None

    def __init__(self, train: Callable, root: str, train_group: Callable | None = None) -> None:
        self.train, self.root, self.train_group = train, root, train_group
        self._finished: list[tuple[str, str | None]] = []

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def submit(self, rids: list[str], cfg_datas: list[dict]) -> None:
        self._finished.extend(run_job(self.train, self.train_group, cfg_datas, self.root))

    def wait(self) -> list[tuple[str, str | None]]:
        out, self._finished = self._finished, []
        return out


class ProcessPool:
    """Runs ``workers`` jobs at once in spawned processes, each with its share of the cores (and, for
    runs on ``cuda`` with several GPUs visible, its own GPU). The pool starts on the first job it is
    given; a worker that dies fails its job's runs, and a new pool serves the rest."""

    def __init__(self, train: Callable, root: str, workers: int, entries: list[Any], train_group: Callable | None = None,
                 gpus: list[str] | None = None) -> None:
        self.train, self.root, self.entries, self.train_group = train, root, entries, train_group
        self.slots, self.threads = workers, threads_per_worker(workers)
        self.gpus = gpus or []
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Future, tuple[list[str], ProcessPoolExecutor]] = {}

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._pool is not None:  # interrupted: drop what has not started; the runs in flight resume later
            self._pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def submit(self, rids: list[str], cfg_datas: list[dict]) -> None:
        job = (run_job, self.train, self.train_group, cfg_datas, self.root)
        if self._pool is not None:
            try:
                self._running[self._pool.submit(*job)] = rids, self._pool
                return
            except BrokenProcessPool:  # a worker died since the last wait: the runs in flight fail there
                self._pool.shutdown(wait=False)
        ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        self._pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=ctx, initializer=init_worker,
                                         initargs=(os.getpid(), self.entries, self.gpus, ctx.Value("i", 0)))
        self._running[self._pool.submit(*job)] = rids, self._pool

    def wait(self) -> list[tuple[str, str | None]]:
        finished, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        out = []
        for fut in finished:
            rids, pool = self._running.pop(fut)
            try:
                out.extend(fut.result())
            except BrokenProcessPool as e:  # every run in flight on that pool fails with it
                out.extend((rid, DIED.format(e)) for rid in rids)
                if self._pool is pool:
                    pool.shutdown(wait=False)
                    self._pool = None
        return out


class LocalExecutor:
    def __init__(self, workers: int = 1, *, progress: bool = True, options: ExecOptions = ExecOptions()) -> None:
        self.workers = max(1, workers)
        self.progress = progress
        self.options = options

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
        group = work.train_group if self.options.batch_runs_for(graph) > 1 else None
        gpus = visible_gpus() if self.options.cuda and self.options.device == "cuda" else []
        backend = (InProcess(work.train, root, group) if self.workers == 1 else
                   ProcessPool(work.train, root, self.workers, entries, group, gpus if len(gpus) > 1 else []))
        return schedule(graph, store, backend, work, retry_failed=retry_failed, progress=self.progress,
                        options=self.options)
