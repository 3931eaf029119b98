"""A run's schedule (steps per epoch, start, length, checkpoint and evaluation steps, learning
rates), from its config and its dataset's size, in one place."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..bounds import check_total_steps
from ..config import RunConfig, TrainConfig
from ..data import dataset_info
from ..errors import UserError
from ..steps import parse_step, steps_per_epoch
from ..store.writer import Observations


def lr_at(cfg: TrainConfig, step: int, spe: int) -> float:
    """Learning rate for the update taken at ``step`` (0-based): linear warmup, then constant or
    multiplied by gamma at each milestone passed. A run started at k uses the same function, so its
    learning rate at t equals the dense run's at t (docs/experiments/rewinding.md)."""
    lr = cfg.lr
    warmup = cfg.warmup.to_iterations(spe)
    if cfg.schedule == "step":
        for m in cfg.milestones:
            if step >= m.to_iterations(spe):
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


@dataclass(frozen=True)
class RunSchedule:
    """The numbers a run's loop needs, derived once from its config and its dataset's size."""

    spe: int  # steps per epoch
    start: int  # the step training starts from (a run started from another run's step k starts at k)
    total: int  # the last step T
    checkpoints: list[int]
    evals: list[int]

    @classmethod
    def of(cls, cfg: RunConfig, n_train: int) -> "RunSchedule":
        spe = steps_per_epoch(n_train, n_train if cfg.train.full_batch else cfg.train.batch_size)
        total = cfg.train.steps.to_iterations(spe)
        start = 0 if cfg.restart_schedule else cfg.start_step.to_iterations(spe)
        if total < 1:
            raise UserError(f"train.steps = {str(cfg.train.steps)!r} is no training at all; ask for at least 1it")
        check_total_steps(total, str(cfg.train.steps))
        if start > total:
            raise UserError(f"start step {start} is beyond the training length {total}; "
                            "start earlier or lengthen train.steps")
        ckpts = checkpoint_steps(cfg.observe.checkpoints, cfg.observe.schedule, total, spe, start)
        return cls(spe, start, total, ckpts, _eval_steps(cfg, spe, start, total, ckpts))

    def observations(self, cfg: RunConfig) -> Observations:
        """What a run trained on this schedule records."""
        return Observations(frozenset(self.checkpoints), frozenset(self.evals), frozenset(cfg.observe.recorders),
                            cfg.observe.eval_train)

    def lrs(self, cfg: TrainConfig, start: int) -> list[float]:
        return lr_table(cfg, start, self.total, self.spe)


def _eval_steps(cfg: RunConfig, spe: int, start: int, total: int, ckpts: list[int]) -> list[int]:
    evals = set(ckpts) | {start, total}
    if cfg.observe.eval_dense_until:
        evals.update(range(start, min(total, cfg.observe.eval_dense_until.to_iterations(spe)) + 1))
    if cfg.observe.eval_every:
        every = cfg.observe.eval_every.to_iterations(spe)
        if every < 1:
            raise UserError("observe.eval_every must be at least 1it")
        evals.update(range(start - start % every + every, total, every))
    return sorted(s for s in evals if start <= s <= total)


def run_schedule(cfg: RunConfig, n_train: int | None = None) -> RunSchedule:
    """A run's schedule; without ``n_train``, the dataset's size comes from its metadata (no tensors
    are loaded)."""
    if n_train is None:
        n_train = dataset_info(cfg.data).n_train
    return RunSchedule.of(cfg, n_train)
