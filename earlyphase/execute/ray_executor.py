"""The Ray executor: the local executor's semantics, with each run a Ray task.

Runs start as soon as their parents finish (independent IMP chains overlap), at most ``workers`` at a
time; finished runs are found, failed runs are skipped (with their dependents) unless ``retry_failed``.
Without an address it starts a private local Ray instance for the sweep and shuts it down after; with
one it joins a running cluster, whose every node must see the store directory (a shared file system)
and import the same earlyphase. The address is checked (a TCP connect with a timeout) and joined when
the executor is made, so a wrong address fails before anything is planned or written."""
from __future__ import annotations

import contextlib
import os
import socket

from ..errors import UserError
from ..store import Store
from .base import ExecutionReport, blocked, check_graph, encode, record, run_one, stored_status, with_threads
from .graph import RunGraph
from .progress import SweepProgress

INSTALL_HINT = "the ray executor needs ray: pip install 'earlyphase[ray]'"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto`` with no ``$RAY_ADDRESS``
    (Ray then finds a cluster started on this machine by itself)."""
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "")
        return host_port(env) if env and env not in ("auto", "local") else None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float) -> None:
    """A UserError unless something accepts a TCP connection at ``address`` within ``timeout`` seconds."""
    hp = host_port(address)
    if hp is None:
        return
    label = address if address != "auto" else f"auto ({hp[0]}:{hp[1]} from $RAY_ADDRESS)"
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError:
        raise UserError(f"Ray address {label} does not answer within {timeout:g} s; "
                        "start the cluster (ray start --head) or drop --address") from None


def _one_line(e: BaseException) -> str:
    """An exception (and the one that caused it: Ray's ConnectionError hides the reason there) on one line."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    if e.__cause__ is not None:
        text += f" ({type(e.__cause__).__name__}: {' '.join(str(e.__cause__).split())})"
    return text[:400]


class RayExecutor:
    """``address`` joins a cluster ("host:port", "ray://host:port" or "auto"); without one, a local
    instance with ``workers`` CPUs (0: all cores) runs the sweep. ``workers`` (> 0) also caps the runs in
    flight at once on a cluster. Each run is a 1-CPU task training on 1 thread."""

    def __init__(self, address: str | None = None, workers: int = 1, progress: bool = True,
                 connect_timeout: float = 5.0) -> None:
        self.ray = _import_ray()
        self.address = address or None
        self.workers = max(0, workers or 0)
        self.progress = progress
        self.connect_timeout = connect_timeout
        self._owned = False  # this executor called ray.init, so it shuts down (or disconnects) after
        if self.address:
            check_address(self.address, connect_timeout)
            self._connect()

    def _connect(self) -> None:
        """Join the cluster, or start the local instance; Ray already initialised by the caller is used as is."""
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            if self.address:
                home = os.environ.get("EARLYPHASE_HOME")  # the data cache (and default store) on every node
                ray.init(address=self.address, log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"EARLYPHASE_HOME": home}} if home else None)
            else:  # workers inherit this process's environment and sys.path
                ray.init(address="local", num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                         ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
        except Exception as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise UserError(f"could not start or join {where}: {_one_line(e)}") from None
        self._owned = True

    def close(self) -> None:
        """Shut down the local instance this executor started (or drop its connection to a cluster; the
        cluster keeps running). Ray that the caller initialised is left alone."""
        if self._owned:
            self._owned = False
            self.ray.shutdown()

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, graph: RunGraph, store: Store, *, retry_failed: bool = False) -> ExecutionReport:
        check_graph(graph, store)
        report = ExecutionReport()
        pending: dict[str, str] = {}  # run id -> stored status before this sweep, in dependency order
        for rid in graph.topological():
            status = stored_status(store, rid)
            if status == "failed" and not retry_failed:
                report.failed[rid] = store.run(rid).status().get("error", "failed earlier")
            elif any(p in report.failed or p in report.blocked for p in graph.parents(rid)):
                report.blocked.append(rid)
            else:
                pending[rid] = status
        try:
            with SweepProgress(len(graph), enabled=self.progress) as bar:
                bar.advance(len(graph) - len(pending))
                if all(s == "done" for s in pending.values()):
                    # nothing to train, so no Ray start: the engine's cheap path finds each run here
                    for rid, before in pending.items():
                        _, error = run_one(encode(with_threads(graph.nodes[rid], None)), str(store.root))
                        record(report, rid, error, before=before)
                        bar.advance(1)
                else:
                    self._connect()
                    self._schedule(graph, store, pending, report, bar)
        finally:
            self.close()
        return report

    def _schedule(self, graph: RunGraph, store: Store, pending: dict[str, str], report: ExecutionReport,
                  bar: SweepProgress) -> None:
        ray = self.ray
        task = ray.remote(num_cpus=1)(run_one)
        done: set[str] = {p for rid in graph for p in graph.parents(rid) if p not in graph.nodes}
        waiting = list(pending)
        running: dict[object, str] = {}  # object ref -> run id
        try:
            while waiting or running:
                for rid in list(waiting):
                    if self.workers and len(running) >= self.workers:
                        break
                    if blocked(graph, rid, report):
                        waiting.remove(rid)
                        bar.advance(1)
                    elif graph.parents(rid) <= done:
                        waiting.remove(rid)
                        running[task.remote(encode(with_threads(graph.nodes[rid], 1)), str(store.root))] = rid
                if not running:
                    if waiting:  # cannot happen for a graph in dependency order; never spin
                        raise RuntimeError(f"runs wait on parents that never finish: {waiting[:3]}")
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    rid = running.pop(ref)
                    try:
                        _, error = ray.get(ref)
                    except Exception as e:  # the worker died (killed, out of memory): the run resumes next time
                        error = _one_line(e)
                    record(report, rid, error, before=pending[rid])
                    bar.advance(1)
                    if error is None:
                        done.add(rid)
        finally:
            for ref in running:  # interrupted: stop the runs in flight; each resumes from its last checkpoint
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
