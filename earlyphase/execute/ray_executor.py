"""The Ray executor: the scheduler (execute/scheduler.py) with each run a Ray task.

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
from .base import ExecOptions, ExecutionReport, Work, check_graph, default_work, run_job, worker_entries
from .graph import RunGraph
from .scheduler import schedule

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
                 connect_timeout: float = 5.0, options: ExecOptions = ExecOptions()) -> None:
        self.options = options
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

    def check(self, graph: RunGraph, store: Store) -> list:
        """Bad input before anything runs (see LocalExecutor.check); Ray workers always need the entries."""
        check_graph(graph, store)
        return worker_entries(graph)

    def run(self, graph: RunGraph, store: Store, *, retry_failed: bool = False,
            work: Work | None = None) -> ExecutionReport:
        work = work or default_work()
        try:
            group = work.train_group if self.options.batch_runs_for(graph) > 1 else None
            backend = RayBackend(self, work.train, str(store.root), self.check(graph, store), group)
            return schedule(graph, store, backend, work, retry_failed=retry_failed, progress=self.progress,
                            options=self.options)
        finally:
            self.close()


class RayBackend:
    """Each job (a run, or a batched group) a 1-CPU Ray task on 1 thread, asking for one GPU when the
    runs go to ``cuda``; at most ``workers`` in flight (0: as many as Ray schedules). Ray starts (or
    the cluster is joined) on the first job that needs training, so a finished sweep never starts it."""

    threads = 1

    def __init__(self, executor: RayExecutor, train, root: str, entries: list, train_group=None) -> None:
        self.executor, self.train, self.root, self.entries = executor, train, root, entries
        self.train_group = train_group
        self.slots = executor.workers
        self._task = None
        self._running: dict[object, list[str]] = {}  # object ref -> its runs

    def __enter__(self) -> "RayBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        for ref in self._running:  # interrupted: stop the runs in flight; each resumes from its last checkpoint
            with contextlib.suppress(Exception):
                self.executor.ray.cancel(ref, force=True)

    def submit(self, rids: list[str], cfg_datas: list[dict]) -> None:
        if self._task is None:
            self.executor._connect()
            self._task = self.executor.ray.remote(num_cpus=1, num_gpus=1 if self.executor.options.cuda else 0)(run_job)
        self._running[self._task.remote(self.train, self.train_group, cfg_datas, self.root, self.entries)] = rids

    def wait(self) -> list[tuple[str, str | None]]:
        ray = self.executor.ray
        ready, _ = ray.wait(list(self._running), num_returns=1)
        out = []
        for ref in ready:
            rids = self._running.pop(ref)
            try:
                out.extend(ray.get(ref))
            except Exception as e:  # the worker died (killed, out of memory): the runs resume next time
                out.extend((rid, _one_line(e)) for rid in rids)
        return out
