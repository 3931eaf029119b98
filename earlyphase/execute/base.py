"""What every executor shares: which runs are ready, which are done, and the report of a sweep."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..config import RunConfig, from_dict, to_dict
from ..errors import UserError
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


def blocked(graph: RunGraph, rid: str, report: ExecutionReport) -> bool:
    """A run whose parent failed (or is blocked) cannot start: record it as blocked."""
    if any(p in report.failed or p in report.blocked for p in graph.parents(rid)):
        report.blocked.append(rid)
        return True
    return False


def record(report: ExecutionReport, rid: str, error: str | None, *, before: str) -> None:
    """File a finished run under failed, found (it was stored) or trained."""
    if error is not None:
        report.failed[rid] = error
    elif before == "done":
        report.found.append(rid)
    else:
        report.trained.append(rid)


def stored_status(store: Store, rid: str) -> str:
    rd = store.run(rid)
    return rd.status()["status"] if rd.exists() else "pending"


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


def run_one(cfg_data: dict, store_root: str) -> tuple[str, str | None]:
    """Train one run in whatever process this is; returns (run id, error or None)."""
    from ..config import run_id
    from ..train.engine import execute

    cfg = decode(cfg_data)
    rid = run_id(cfg)
    try:
        execute(cfg, Store(store_root), progress=False)
        return rid, None
    except UserError as e:
        return rid, str(e)
    except Exception as e:  # the engine has marked the run failed; the sweep goes on
        return rid, f"{type(e).__name__}: {e}"


def check_graph(graph: RunGraph, store: Store) -> None:
    """Parents outside the graph must already be finished in the store."""
    for rid in graph:
        for p in graph.parents(rid):
            if p not in graph.nodes and stored_status(store, p) != "done":
                raise UserError(f"run {rid} needs run {p}, which is neither planned nor finished in {store.root}")
