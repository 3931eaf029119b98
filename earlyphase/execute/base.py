"""What every executor shares: the report of a sweep, how a run crosses a process boundary, and
the function a worker runs."""
from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import RunConfig, from_dict, run_id, to_dict
from ..devices import resolve_device
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
    says, cheaply, whether the store already holds it with everything it asks for. For batched runs
    (``--batch-runs``): ``batch_key(cfg)`` names the runs that can train as one batched model (None:
    none can), and ``train_group(cfgs, store)`` trains such a group (or says why it trained them singly)."""

    train: Callable[[RunConfig, Store], Any]
    complete: Callable[[RunConfig, Store], bool]
    batch_key: Callable[[RunConfig], str | None] | None = None
    train_group: Callable[[list[RunConfig], Store], dict[str, str | None] | None] | None = None


CUDA_BATCH_RUNS = 8  # the rule's group size on a GPU (to be confirmed by benchmarks/gpu_throughput.py)


@dataclass(frozen=True)
class ExecOptions:
    """How every run of a sweep is executed, without changing any run's id: the device (None: each
    run's own ``observe.device``), deterministic kernels, and up to ``batch_runs`` runs trained as
    one batched model (1: each alone, the default)."""

    device: str | None = None
    deterministic: bool = False
    batch_runs: int | None = 1  # None: the default rule (batch_runs_for)

    def __post_init__(self) -> None:
        if self.batch_runs is not None and self.batch_runs < 1:
            raise UserError(f"--batch-runs must be >= 1 (1 = each run alone), got {self.batch_runs}")
        if self.device is not None:
            resolve_device(self.device)  # a bad or unavailable device is one line, before anything runs

    def apply(self, cfg: RunConfig) -> RunConfig:
        changes = {**({"device": self.device} if self.device else {}),
                   **({"deterministic": True} if self.deterministic else {})}
        return cfg.replace(observe=dataclasses.replace(cfg.observe, **changes)) if changes else cfg

    @property
    def cuda(self) -> bool:
        return bool(self.device) and self.device.startswith("cuda")

    def batch_runs_for(self, graph: RunGraph) -> int:
        """``batch_runs``, or by the default rule: single runs on a CPU (measured slower batched there,
        benchmarks/batched_runs.py), groups of CUDA_BATCH_RUNS on a GPU."""
        if self.batch_runs is not None:
            return self.batch_runs
        names = [self.device] if self.device else [cfg.observe.device for cfg in graph.nodes.values()]
        on_gpu = bool(names) and all(resolve_device(n).type == "cuda" for n in names)
        return CUDA_BATCH_RUNS if on_gpu else 1


def default_work() -> Work:
    """The package's training engine (named, not imported: executors know nothing of models)."""
    return importlib.import_module("earlyphase.train.work").WORK


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
    return run_job(train, None, [cfg_data], store_root, entries)[0]


def run_job(train: Callable[[RunConfig, Store], Any], train_group: Callable | None, cfg_datas: list[dict],
            store_root: str, entries: list | tuple = ()) -> list[tuple[str, str | None]]:
    """Train one run, or a group of runs with ``train_group`` (which returns each run's error or None);
    (run id, error or None) for each. An exception fails every run of the job (the engine has marked
    each of them failed)."""
    install_entries(list(entries))
    load_plugins()
    cfgs = [decode(d) for d in cfg_datas]
    rids = [run_id(cfg) for cfg in cfgs]
    try:
        if train_group is None:
            train(cfgs[0], Store(store_root))
            return [(rids[0], None)]
        errors = train_group(cfgs, Store(store_root)) or {}
        return [(rid, errors.get(rid)) for rid in rids]
    except UserError as e:
        return [(rid, str(e)) for rid in rids]
    except Exception as e:  # the engine has marked the run failed; the sweep goes on
        return [(rid, f"{type(e).__name__}: {e}") for rid in rids]


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
