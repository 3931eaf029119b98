"""The early-phase timeline: every lens's "the early phase ends here" on one network and data set, over
seeds, on one shared step axis (see docs/experiments/timeline.md).

The timeline trains nothing of its own but the linearization lens's side-by-side run (computed at
analysis, cached beside the dense run): it plans the instability, gradient-subspace, early-statistics
and critical-period experiments' runs from its own config (same run ids, so a store that holds those
experiments trains nothing), analyzes them with those experiments' own code, probes the dense runs'
checkpoints at 0 and 2^i with the learning-phases probes, and reads one step per lens off each curve
(timeline_lenses.py). The verdict and tables are in timeline_verdict.py, the figure in
timeline_figure.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import RunConfig, _check
from ..steps import parse_step
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .common import iterations
from .critical_period import CriticalPeriod, CriticalPeriodConfig
from .early_stats import EarlyStatsConfig, stats_run
from .gradient_subspace import GradientSubspace, GradientSubspaceConfig, dense_run
from .instability import Instability, InstabilityConfig
from .timeline_verdict import agreement, judge, lens_tables

LENSES = ("linearization", "lottery", "stability", "gradient_subspace", "early_stats", "reconstruction",
          "critical_period")
FINE_K = ("0it", "20it", "50it", "100it", "200it", "300it", "500it", "1000it")
STARTS = ("0it", "250it", "500it", "1000it", "2000it")


@dataclass(frozen=True)
class TimelineConfig:
    run: RunConfig = field(default_factory=RunConfig)  # the lottery preset's dense run (the others' run ids)
    seeds: int = 3
    lenses: tuple[str, ...] = LENSES  # which lenses to measure (and which runs to plan)
    level: int = 9  # the chosen IMP level: lottery k* and sparse stability
    imp_levels: int = 9  # the rewinding experiment's number of levels
    rewind: tuple[str, ...] = ("0it", "20it", "100it", "500it")  # the rewinding experiment's rewind points
    fine_k: tuple[str, ...] = FINE_K  # the instability experiment's fine grid (dense k; new chains at the level)
    barrier: float = 0.02  # stable when the error barrier is below this (2 points)
    points: int = 11  # points on the interpolation path
    bn: str = "interpolate"  # BatchNorm statistics on the path: interpolate | reestimate
    gap: float = 0.15  # linearization: relative test-output gap whose first crossing is reported
    overlap: float = 0.5  # gradient subspace: settled once the overlap with the first drop's stays above this
    subset: int = 2000  # gradient subspace: training samples of the Hessian ...
    chunk: int = 2000  # ... and samples per forward pass of a Hessian-vector product
    flip_window: str = "100it"  # sign-flip rate per this many steps
    delta: float = 0.02  # reconstruction phases: tolerance of the flat start and the drop
    rho: float = 0.10  # ... and of the rise
    blur: int = 4  # critical period: the deficit's blur factor
    lengths: tuple[str, ...] = ("0it", "250it", "500it", "1000it", "2000it")  # its dose sweep (shared runs)
    window: str = "500it"  # its sliding window ...
    starts: tuple[str, ...] = STARTS  # ... and the window's starts
    agree: float = 2.0  # lenses agree when their steps are within this factor
    drop_tolerance: float = 0.05  # a step within this fraction of a learning-rate drop lands on it

    def __post_init__(self) -> None:
        unknown = [n for n in self.lenses if n not in LENSES]
        _check(not unknown, f"unknown lens {unknown[0] if unknown else ''!r} in lenses; choose from "
                            f"{', '.join(LENSES)}")
        _check(len(self.lenses) >= 1, f"lenses must name at least one of {', '.join(LENSES)}")
        _check(1 <= self.level <= self.imp_levels,
               f"level {self.level} is not a level of the rewinding experiment (levels 1-{self.imp_levels}); "
               "choose a level within 1..imp_levels")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.agree > 1, f"agree must be a factor > 1, got {self.agree}")
        _check(0 <= self.drop_tolerance < 1, f"drop_tolerance must be in [0, 1), got {self.drop_tolerance}")
        for name in ("gap", "barrier"):
            _check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _check(0 < self.overlap < 1, f"overlap must be in (0, 1), got {self.overlap}")
        for s in (*self.rewind, *self.fine_k, self.flip_window):
            parse_step(s)

    def instability(self) -> InstabilityConfig:
        """The instability experiment's runs at the chosen level on the fine grid (same run ids)."""
        extra = tuple(k for k in self.fine_k if k not in self.rewind)
        return InstabilityConfig(run=self.run, dense_k=self.fine_k, rewind=self.rewind, extra_k=extra,
                                 levels=(self.level,), imp_levels=self.imp_levels, seeds=self.seeds,
                                 points=self.points, threshold=self.barrier, bn=self.bn)

    def subspace(self) -> GradientSubspaceConfig:
        return GradientSubspaceConfig(run=self.run, seeds=self.seeds, subset=self.subset, chunk=self.chunk)

    def critical(self) -> CriticalPeriodConfig:
        return CriticalPeriodConfig(run=self.run, seeds=self.seeds, blur=self.blur, lengths=self.lengths,
                                    window=self.window, starts=self.starts)

    def early_stats(self, seed: int) -> EarlyStatsConfig:
        return EarlyStatsConfig(run=self.run, seed=seed, flip_window=self.flip_window, kstar_level=self.level)


@dataclass
class TimelinePlan(Plan):
    parts: dict[str, tuple[ExperimentDef, Any, Plan]] = field(default_factory=dict)  # sub-experiment plans
    dense: dict[int, str] = field(default_factory=dict)  # seed -> the dense run (linearization, reconstruction)
    drops: list[int] = field(default_factory=list)  # learning-rate drops in iterations
    total: int = 0


def _include(plan: TimelinePlan, name: str, exp: ExperimentDef, sub_cfg: Any, store: Store) -> None:
    """Plan a sub-experiment and take its runs into the timeline's graph (shared runs are one node)."""
    sub = exp.plan(sub_cfg, store)
    plan.parts[name] = (exp, sub_cfg, sub)
    plan.graph.update(sub.graph)
    for rid, labels in sub.labels.items():
        plan.labels.setdefault(rid, {"part": name, **labels})
    plan.notes.extend(f"{name}: {note}" for note in sub.notes)


class Timeline(ExperimentDef):
    name = "timeline"
    config_cls = TimelineConfig
    main_figure = "timeline"
    description = ("The early-phase timeline: one network and data set, one step per lens where that lens says "
                   "the early phase ends (linearization, lottery k*, stability, gradient-subspace settling, "
                   "gradient-norm peak, sign-flip half-rate, reconstruction phases, end of the critical period), "
                   "each read off its curve's mean over seeds with the band of the per-seed steps. Runs are the "
                   "instability, gradient-subspace, early-statistics and critical-period experiments' own "
                   "(shared with a store that holds them); the linearization lens trains the network beside its "
                   "first-order Taylor model in the parameters at analysis time.")

    def plan(self, cfg: TimelineConfig, store: Store) -> TimelinePlan:
        drops, total = iterations(cfg.run, cfg.run.train.milestones, "run.train.milestones")
        plan = TimelinePlan(drops=sorted(drops.values()), total=total)
        want = set(cfg.lenses)
        if want & {"lottery", "stability"}:
            _include(plan, "instability", Instability(), cfg.instability(), store)
        if want & {"gradient_subspace", "reconstruction"}:
            _include(plan, "gradient_subspace", GradientSubspace(), cfg.subspace(), store)
        if "critical_period" in want:
            _include(plan, "critical_period", CriticalPeriod(), cfg.critical(), store)
        pow2 = bool(want & {"gradient_subspace", "reconstruction"})  # checkpoints at 0 and 2^i
        for s in range(cfg.seeds):
            if "early_stats" in want:
                plan.add(stats_run(cfg.early_stats(s)), part="early_stats", kind="dense", seed=s)
            dense = dense_run(cfg.subspace(), s) if pow2 else cfg.run.replace(seed=s, data_seed=s)
            plan.dense[s] = plan.add(dense, part="dense", kind="dense", seed=s)
        plan.notes.append(f"Lenses: {', '.join(cfg.lenses)}; learning-rate drops at {plan.drops}; the chosen level "
                          f"{cfg.level}.")
        if "linearization" in want:
            plan.notes.append("The linearization lens trains each seed's network beside its Taylor model at analysis "
                              "time (cached beside the dense run): about 3-4 times a dense run's training per seed, "
                              "not counted in a dry run's estimate.")
        return plan

    def analyze(self, cfg: TimelineConfig, plan: TimelinePlan, store: Store) -> dict[str, pd.DataFrame]:
        from .timeline_curves import build_lenses, rewind_grid

        parts = {name: exp.analyze(sub_cfg, sub, store) for name, (exp, sub_cfg, sub) in plan.parts.items()}
        lenses = build_lenses(cfg, plan, parts, store)
        results, per_seed = lens_tables(lenses, plan.drops, cfg.drop_tolerance)
        curves = pd.concat([lens.curve.assign(key=lens.name) for lens in lenses], ignore_index=True)
        return {"results": results, "per_seed": per_seed, "agreement": agreement(results, cfg.agree),
                "rewind_grid": rewind_grid(cfg, parts), "curves": curves[["key", "seed", "step", "value"]],
                "lr_drops": pd.DataFrame({"step": plan.drops}, dtype="int64")}

    def figures(self, cfg: TimelineConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from .timeline_figure import draw

        return draw(cfg, tables, directory)

    def check(self, cfg: TimelineConfig, tables: dict[str, pd.DataFrame]) -> Check:
        return judge(cfg, tables)


__all__ = ["Timeline", "TimelineConfig", "LENSES"]
