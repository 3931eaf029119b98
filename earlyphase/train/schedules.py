"""Learning-rate schedules and checkpoint schedules, as plain functions of the step."""
from __future__ import annotations

import math

from ..config import TrainConfig
from ..errors import UserError
from ..steps import parse_step


def lr_at(cfg: TrainConfig, step: int, spe: int) -> float:
    """Learning rate for the update taken at ``step`` (0-based): linear warmup, then constant or
    multiplied by gamma at each milestone passed. A run started at k uses the same function, so its
    learning rate at t equals the dense run's at t (SPEC §2.1)."""
    lr = cfg.lr
    warmup = parse_step(cfg.warmup).to_iterations(spe)
    if cfg.schedule == "step":
        for m in cfg.milestones:
            if step >= parse_step(m).to_iterations(spe):
                lr *= cfg.gamma
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    return lr


def lr_table(cfg: TrainConfig, start: int, end: int, spe: int) -> list[float]:
    """Learning rates for steps start..end-1, computed once so the loop reads a Python float."""
    return [lr_at(cfg, t, spe) for t in range(start, end)]


def dense_schedule(total: int) -> list[int]:
    """Every step up to 100, then 20 log-spaced points per decade (rounded, duplicates dropped)."""
    steps = set(range(0, min(total, 100) + 1))
    if total > 100:
        decades = math.log10(total / 100)
        n = int(math.ceil(decades * 20))
        for i in range(1, n + 1):
            s = int(round(100 * 10 ** (i / 20)))
            if s <= total:
                steps.add(s)
        steps.add(total)
    return sorted(steps)


def pow2_schedule(total: int) -> list[int]:
    """Step 0 and every power of two up to ``total``."""
    steps = [0]
    p = 1
    while p <= total:
        steps.append(p)
        p *= 2
    return steps


def checkpoint_steps(explicit: tuple[str, ...], schedule: str, total: int, spe: int, start: int = 0) -> list[int]:
    """The checkpoint steps of a run from ``start`` to ``total``; the end is always one."""
    steps = {parse_step(s).to_iterations(spe) for s in explicit}
    beyond = sorted(s for s in steps if s > total)
    if beyond:
        raise UserError(f"checkpoint step {beyond[0]} is beyond the training length {total}; "
                        "drop it or lengthen train.steps")
    parts = schedule.split("+")
    if "dense" in parts:
        steps.update(dense_schedule(total))
    if "pow2" in parts:
        steps.update(pow2_schedule(total))
    steps.add(total)
    return sorted(s for s in steps if s >= start)
