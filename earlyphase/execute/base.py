"""What every executor shares: the report of a sweep, how a run crosses a process boundary, and
the function a worker runs."""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import RunConfig, from_dict, run_id, to_dict
from ..errors import UserError
from ..registry import install_entries, load_plugins, portable_entries
from ..store import Store
from .graph import RunGraph


@dataclass
class ExecutionReport:
    trained: list[str] = field(default_factory=list)  # runs this call trained (or added observations to)
    found: list[str] = field(default_factory=list)  # runs already complete in the store
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    blocked: list[str] = field(default_factory=list)  # runs whose parents failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


@dataclass(frozen=True)
class Work:
    """What the scheduler does with a run, as module-level functions (they travel by reference to
    pool and Ray workers): ``train(cfg, store)`` trains it (raising on failure); ``complete(cfg, store)``
    says, cheaply, whether the store already holds it with everything it asks for."""

    train: Callable[[RunConfig, Store], Any]
    complete: Callable[[RunConfig, Store], bool]


def default_work() -> Work:
    """The package's training engine (named, not imported: executors know nothing of models)."""
    return importlib.import_module("earlyphase.train.engine").WORK


def stored_status(store: Store, rid: str) -> str:
    """The run's status; "damaged" for a run whose status cannot be read (the engine retrains it)."""
    rd = store.run(rid)
    try:
        return rd.status()["status"] if rd.exists() else "pending"
    except UserError:
        return "damaged"


def with_threads(cfg: RunConfig, threads: int | None) -> RunConfig:
    """A sweep's run: no per-run progress bar, and the worker's share of the cores if given."""
    changes = {"progress": False, **({"threads": threads} if threads is not None else {})}
    return cfg.replace(observe=dataclasses.replace(cfg.observe, **changes))


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def encode(cfg: RunConfig) -> dict:
    """A config as plain data, to cross a process or a Ray boundary."""
    return to_dict(cfg)


def decode(data: dict) -> RunConfig:
    return from_dict(RunConfig, data)


def run_one(train: Callable[[RunConfig, Store], Any], cfg_data: dict, store_root: str,
            entries: list | tuple = ()) -> tuple[str, str | None]:
    """Train one run in whatever process this is; returns (run id, error or None). ``entries``: the
    parent's run-time registrations (unpickling them imported their modules); plug-ins load here."""
    install_entries(list(entries))
    load_plugins()
    cfg = decode(cfg_data)
    rid = run_id(cfg)
    try:
        train(cfg, Store(store_root))
        return rid, None
    except UserError as e:
        return rid, str(e)
    except Exception as e:  # the engine has marked the run failed; the sweep goes on
        return rid, f"{type(e).__name__}: {e}"


def used_names(graph: RunGraph) -> set[tuple[str, str]]:
    """(registry kind, name) of every model, dataset and recorder the graph's runs name."""
    out: set[tuple[str, str]] = set()
    for cfg in graph.nodes.values():
        out |= {("model", cfg.model.name), ("dataset", cfg.data.name)}
        out |= {("recorder", r) for r in cfg.observe.recorders}
    return out


def worker_entries(graph: RunGraph) -> list:
    """The run-time registrations workers need; one the runs use that cannot travel is a UserError."""
    return portable_entries(used_names(graph))


def check_graph(graph: RunGraph, store: Store) -> None:
    """Parents outside the graph must already be finished in the store."""
    for rid in graph:
        for p in graph.parents(rid):
            if p not in graph.nodes and stored_status(store, p) != "done":
                raise UserError(f"run {rid} needs run {p}, which is neither planned nor finished in {store.root}")
