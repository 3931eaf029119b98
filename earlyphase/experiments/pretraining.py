"""SPEC §2.5: pre-train the dense network from theta_0 on another task (random labels, blurred
inputs, rotation prediction, blur + rotation) or sparse (under an IMP mask or a random mask of the
same per-layer densities), use the result as the rewind point, and compare with rewinding to 0 and
to k. Laptop: trained under the rewinding experiment's masks (``masks = "rewinding"``); paper: a
new IMP from each pre-trained state (``masks = "imp"``)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import MaskConfig, RunConfig, _check
from ..steps import parse_step
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .rewinding import RewindingConfig, final_rows, imp_chains

STATEMENT = ("Finding (no pass/fail): for each pre-training task and duration, whether training from the "
             "pre-trained weights under the IMP mask matches rewinding to 0, to k, or neither.")
DENSE_TASKS = ("random_labels", "blur", "rotation", "blur_rotation")
SPARSE_TASKS = ("sparse_imp", "sparse_random")


@dataclass(frozen=True)
class PretrainingConfig:
    run: RunConfig = field(default_factory=RunConfig)
    k: str = "500it"  # the rewinding reference
    levels: tuple[int, ...] = (3, 6, 9)
    seeds: int = 2
    durations: tuple[str, ...] = ("100it", "500it", "2000it")
    tasks: tuple[str, ...] = DENSE_TASKS + SPARSE_TASKS
    blur: int = 4  # blur factor of the blur tasks
    masks: str = "rewinding"  # rewinding: the rewinding experiment's IMP masks | imp: a new IMP per pre-training
    start_at_pretraining_end: bool = False  # the real task starts at step D instead of running its full schedule
    fraction: float = 0.2
    scope: str = "global"

    def __post_init__(self) -> None:
        _check(len(self.levels) >= 1 and min(self.levels) >= 1, f"levels must be >= 1, got {list(self.levels)}")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        known = DENSE_TASKS + SPARSE_TASKS
        bad = [t for t in self.tasks if t not in known]
        _check(not bad, f"unknown pre-training task {bad[0] if bad else ''!r}; known: {', '.join(known)}")
        _check(self.masks in ("rewinding", "imp"), f"masks must be 'rewinding' or 'imp', got {self.masks!r}")
        _check(self.blur >= 1, f"blur must be >= 1, got {self.blur}")
        for d in self.durations:
            _check(parse_step(d).to_iterations(1) > 0 or parse_step(d).epochs > 0, "durations must be positive")

    def rewinding(self) -> RewindingConfig:
        return RewindingConfig(run=self.run, rewind=("0it", self.k), levels=max(self.levels), seeds=self.seeds,
                               fraction=self.fraction, scope=self.scope, controls="none")


def pretrain_config(base: RunConfig, task: str, duration: str, blur: int) -> RunConfig:
    """The pre-training run's data and schedule: a constant learning rate for ``duration`` steps."""
    data = base.data
    if task in ("random_labels",):
        data = replace(data, label_noise=1.0)
    if task in ("blur", "blur_rotation"):
        data = replace(data, blur=blur)
    if task in ("rotation", "blur_rotation"):
        data = replace(data, task="rotation")
    train = replace(base.train, steps=duration, schedule="constant", milestones=(), warmup="0it")
    return base.replace(data=data, train=train)


class Pretraining(ExperimentDef):
    name = "pretraining"
    config_cls = PretrainingConfig
    description = ("Pre-training in place of the early phase (SPEC §2.5): the dense network is pre-trained from "
                   "theta_0 (constant learning rate) on random labels, blurred inputs, rotation prediction (the "
                   "head redrawn from the initializer for the real task; on 1-D data, rotation is the analogue "
                   "with four classes: identity, reversal, half-length circular shift, both) or blur + rotation; "
                   "or sparsely, on the real task under the IMP mask or a random mask of the same per-layer "
                   "densities. The pre-trained weights are the rewind point; the real task then runs its full "
                   "schedule from step 0.")

    def plan(self, cfg: PretrainingConfig, store: Store) -> Plan:
        plan = Plan()
        ids = imp_chains(cfg.rewinding(), plan, controls=False)
        if cfg.masks == "rewinding":
            plan.notes.append("masks = \"rewinding\": every pre-trained state is trained under the rewinding "
                              f"experiment's IMP masks (rewind to k = {cfg.k}) at levels "
                              f"{', '.join(map(str, cfg.levels))}, instead of a new IMP per task and duration.")
        for s in range(cfg.seeds):
            base = cfg.run.replace(seed=s, data_seed=s)
            dense = ids[(s, "0it", 0)]
            masks = {L: plan.graph.nodes[ids[(s, cfg.k, L)]].mask for L in cfg.levels}
            for duration in cfg.durations:
                for task in cfg.tasks:
                    if task in DENSE_TASKS:
                        self._dense_task(cfg, plan, base, dense, task, duration, masks, s)
                    else:
                        self._sparse_task(cfg, plan, base, dense, task, duration, masks, s)
        return plan

    def _from_pretrained(self, cfg: PretrainingConfig, base: RunConfig, pre: str, duration: str,
                         reinit_head: bool) -> RunConfig:
        return base.replace(start_run=pre, start_step=duration, restart_schedule=not cfg.start_at_pretraining_end,
                            start_reinit_head=reinit_head)

    def _dense_task(self, cfg, plan, base, dense, task, duration, masks, s) -> None:
        rotation = "rotation" in task
        pre = plan.add(pretrain_config(base, task, duration, cfg.blur).replace(
            start_run=dense, start_step="0it", restart_schedule=True, start_reinit_head=rotation),
            kind="pretrain", control=task, duration=duration, level=0, seed=s)
        real = self._from_pretrained(cfg, base, pre, duration, rotation)
        if cfg.masks == "rewinding":
            for level, mask in masks.items():
                plan.add(real.replace(mask=mask), kind="pretrained", control=task, duration=duration, level=level,
                         seed=s)
            return
        prev = plan.add(real, kind="pretrained", control=task, duration=duration, level=0, seed=s)
        for level in range(1, max(cfg.levels) + 1):
            mask = MaskConfig(kind="magnitude", from_run=prev, fraction=cfg.fraction, scope=cfg.scope)
            prev = plan.add(real.replace(mask=mask), kind="pretrained" if level in cfg.levels else "imp_step",
                            control=task, duration=duration, level=level, seed=s)

    def _sparse_task(self, cfg, plan, base, dense, task, duration, masks, s) -> None:
        for level, mask in masks.items():
            m = mask if task == "sparse_imp" else MaskConfig(kind="random", like=mask, seed=s)
            pre = plan.add(pretrain_config(base, "classify", duration, cfg.blur).replace(
                start_run=dense, start_step="0it", restart_schedule=True, mask=m),
                kind="pretrain", control=task, duration=duration, level=level, seed=s)
            plan.add(self._from_pretrained(cfg, base, pre, duration, False).replace(mask=m), kind="pretrained",
                     control=task, duration=duration, level=level, seed=s)

    def analyze(self, cfg: PretrainingConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        rows = final_rows(plan, store)
        rows["duration"] = rows.get("duration", pd.Series([""] * len(rows))).fillna("")
        refs = rows[(rows.kind == "imp") & rows.level.isin(cfg.levels)].copy()
        refs["control"] = [f"rewind to k={k}" for k in refs.k]
        ours = rows[rows.kind == "pretrained"].copy()
        results = pd.concat([refs, ours], ignore_index=True)
        results["duration_steps"] = [parse_step(d).iterations if d else -1 for d in results.duration]
        summary = (results.groupby(["control", "duration", "duration_steps", "level"]).agg(
            density=("density", "mean"), mean=("test_accuracy", "mean"), std=("test_accuracy", "std"),
            seeds=("seed", "nunique")).reset_index())
        return {"results": results.drop(columns=[c for c in ("k_steps",) if c in results])
                .sort_values(["control", "duration_steps", "level", "seed"]).reset_index(drop=True),
                "summary": summary.sort_values(["level", "control", "duration_steps"]).reset_index(drop=True),
                "findings": self._findings(cfg, summary)}

    def _findings(self, cfg: PretrainingConfig, summary: pd.DataFrame) -> pd.DataFrame:
        out = []
        for level in cfg.levels:
            at = summary[summary.level == level]
            k = at[at.control == f"rewind to k={cfg.k}"]
            z = at[at.control == "rewind to k=0it"]
            if k.empty or z.empty:
                continue
            k_mean, k_std = float(k["mean"].iloc[0]), float(np.nan_to_num(k["std"].iloc[0]))
            z_mean, z_std = float(z["mean"].iloc[0]), float(np.nan_to_num(z["std"].iloc[0]))
            for row in at[~at.control.str.startswith("rewind to")].itertuples():
                if row.mean >= k_mean - k_std:
                    verdict = f"matches rewinding to k={cfg.k}"
                elif row.mean > z_mean + z_std:
                    verdict = "between rewinding to 0 and to k"
                elif row.mean >= z_mean - z_std:
                    verdict = "matches rewinding to 0"
                else:
                    verdict = "below rewinding to 0"
                out.append({"task": row.control, "duration": row.duration, "level": level,
                            "density": row.density, "mean": row.mean, "std": row.std, "rewind_0": z_mean,
                            "rewind_k": k_mean, "verdict": verdict})
        return pd.DataFrame(out)

    def figures(self, cfg: PretrainingConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import band, new_figure, save_figure

        summary = tables["summary"]
        fig, axes = new_figure(ncols=len(cfg.levels), width=5, height=4)
        axes = np.atleast_1d(axes)
        for ax, level in zip(axes, cfg.levels):
            at = summary[summary.level == level]
            for control, g in at[~at.control.str.startswith("rewind to")].groupby("control"):
                g = g.sort_values("duration_steps")
                band(ax, g.duration_steps.values, g["mean"].values, g["std"].values, label=control,
                     dashed=control.startswith("sparse"))
            for control, color in ((f"rewind to k={cfg.k}", "black"), ("rewind to k=0it", "grey")):
                ref = at[at.control == control]
                if len(ref):
                    m, s = float(ref["mean"].iloc[0]), float(np.nan_to_num(ref["std"].iloc[0]))
                    ax.axhline(m, color=color, lw=1, label=control)
                    ax.axhspan(m - s, m + s, color=color, alpha=0.08)
            ax.set_xscale("log")
            ax.set_xlabel("pre-training steps")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"level {level} ({float(at.density.mean()):.1%} of weights)")
        axes[0].legend(fontsize=5)
        return save_figure(fig, directory, "pretraining")

    def check(self, cfg: PretrainingConfig, tables: dict[str, pd.DataFrame]) -> Check:
        f = tables["findings"]
        numbers = {f"{r.task} {r.duration} level {r.level}": f"{r.verdict} ({r.mean:.4f} vs 0: {r.rewind_0:.4f}, "
                                                              f"k: {r.rewind_k:.4f})" for r in f.itertuples()}
        return Check(STATEMENT, None, numbers)
