"""Executors run a graph of run configs into a store; they know nothing of experiments."""
from .base import ExecOptions, ExecutionReport, Work
from .graph import RunGraph, merge_observe, parents
from .local import LocalExecutor
from .scheduler import schedule

EXECUTORS = ("local", "ray")


def make_executor(name: str, *, workers: int = 1, address: str | None = None, progress: bool = True,
                  options: "ExecOptions | None" = None):
    """``local`` (in process, or a pool of ``workers`` processes) or ``ray`` (``address`` joins a cluster);
    ``options``: device, deterministic kernels, batched runs (ExecOptions)."""
    options = options or ExecOptions()
    from ..errors import UserError

    if name == "local":
        if address:
            raise UserError("--address is for --executor ray; drop it or add --executor ray")
        return LocalExecutor(workers, progress=progress, options=options)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers, progress=progress, options=options)
    raise UserError(f"unknown executor {name!r}; use one of: {', '.join(EXECUTORS)}")


__all__ = ["RunGraph", "LocalExecutor", "ExecOptions", "ExecutionReport", "Work", "make_executor", "merge_observe", "parents",
           "schedule", "EXECUTORS"]
