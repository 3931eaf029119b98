"""Executors run a graph of run configs into a store; they know nothing of experiments."""
from .base import ExecutionReport, Work
from .graph import RunGraph, merge_observe, parents
from .local import LocalExecutor
from .scheduler import schedule

EXECUTORS = ("local", "ray")


def make_executor(name: str, *, workers: int = 1, address: str | None = None, progress: bool = True):
    """``local`` (in process, or a pool of ``workers`` processes) or ``ray`` (``address`` joins a cluster)."""
    from ..errors import UserError

    if name == "local":
        if address:
            raise UserError("--address is for --executor ray; drop it or add --executor ray")
        return LocalExecutor(workers, progress=progress)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers, progress=progress)
    raise UserError(f"unknown executor {name!r}; use one of: {', '.join(EXECUTORS)}")


__all__ = ["RunGraph", "LocalExecutor", "ExecutionReport", "Work", "make_executor", "merge_observe", "parents",
           "schedule", "EXECUTORS"]
