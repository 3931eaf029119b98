"""Pre-train the dense network from theta_0 on another task (random labels, blurred inputs, rotation
prediction, blur + rotation), or sparsely and self-supervised (rotation, or blur + rotation) under
an IMP mask or a random mask of the same per-layer densities, use the result as the rewind point,
and compare with rewinding to 0 and to k. Sparse pre-training on the labelled task is a control.
Laptop: trained under the rewinding experiment's masks (``masks = "rewinding"``); paper: a new IMP
from each pre-trained state (``masks = "imp"``). See docs/experiments/pretraining.md."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import MaskConfig, RunConfig, _check
from ..data import load_dataset
from ..models import build_model
from ..steps import parse_step
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .rewinding import RewindingConfig, final_rows, imp_chains

DENSE_TASKS = ("random_labels", "blur", "rotation", "blur_rotation")
# sparse pre-training: self-supervised (the task named by sparse_task), and the labelled-task controls
SPARSE_TASKS = ("sparse_imp", "sparse_random", "sparse_imp_labelled", "sparse_random_labelled")
SPARSE_SSL = ("rotation", "blur_rotation")


@dataclass(frozen=True)
class PretrainingConfig:
    run: RunConfig = field(default_factory=RunConfig)
    k: str = "500it"  # the rewinding reference
    levels: tuple[int, ...] = (3, 6, 9)
    seeds: int = 2
    durations: tuple[str, ...] = ("100it", "500it", "2000it")
    tasks: tuple[str, ...] = DENSE_TASKS + ("sparse_imp", "sparse_random", "sparse_imp_labelled")
    sparse_task: str = "rotation"  # the self-supervised task of sparse_imp / sparse_random: rotation | blur_rotation
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
        _check(len(self.tasks) >= 1, "tasks must list at least one pre-training task")
        _check(self.sparse_task in SPARSE_SSL,
               f"sparse_task must be one of {', '.join(SPARSE_SSL)}, got {self.sparse_task!r}")
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


def task_label(cfg: PretrainingConfig, task: str) -> str:
    """The name a task has in the tables: self-supervised sparse tasks carry their task."""
    return f"{task}_{cfg.sparse_task}" if task in ("sparse_imp", "sparse_random") else task


def output_weight(run: RunConfig) -> str:
    """Name of the output layer's weight (what a pre-training head of another size leaves dense)."""
    data = load_dataset(run.data)
    model = build_model(run.model, data.input_shape, data.out_dim)
    params = dict(model.named_parameters())
    return model.output_layer if model.output_layer in params else f"{model.output_layer}.weight"


class Pretraining(ExperimentDef):
    name = "pretraining"
    config_cls = PretrainingConfig
    main_figure = "pretraining"
    description = ("Pre-training in place of the early phase: the dense network is pre-trained from theta_0 "
                   "(constant learning rate) on random labels, blurred inputs, rotation prediction (on 1-D data "
                   "the analogue with four classes: identity, reversal, half-length circular shift, both) or "
                   "blur + rotation; or sparsely, under the IMP mask or a random mask of the same per-layer "
                   "densities, on a self-supervised task (rotation by default, or blur + rotation: the question "
                   "is whether the early phase needs labels), with the labelled task itself as a control. After "
                   "a rotation task the output layer is redrawn from the initializer for the real task. The "
                   "pre-trained weights are the rewind point; the real task then runs its full schedule from "
                   "step 0.")

    def plan(self, cfg: PretrainingConfig, store: Store) -> Plan:
        plan = Plan()
        ids = imp_chains(cfg.rewinding(), plan, controls=False)
        if cfg.masks == "rewinding":
            plan.notes.append("masks = \"rewinding\": every pre-trained state is trained under the rewinding "
                              f"experiment's IMP masks (rewind to k = {cfg.k}) at levels "
                              f"{', '.join(map(str, cfg.levels))}, instead of a new IMP per task and duration.")
        head = output_weight(cfg.run) if cfg.run.model.prune_output else None
        for s in range(cfg.seeds):
            base = cfg.run.replace(seed=s, data_seed=s)
            dense = ids[(s, "0it", 0)]
            masks = {L: plan.graph.nodes[ids[(s, cfg.k, L)]].mask for L in cfg.levels}
            for duration in cfg.durations:
                for task in cfg.tasks:
                    if task in DENSE_TASKS:
                        self._dense_task(cfg, plan, base, dense, task, duration, masks, s)
                    else:
                        self._sparse_task(cfg, plan, base, dense, task, duration, masks, s, head)
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

    def _sparse_task(self, cfg, plan, base, dense, task, duration, masks, s, head: str | None) -> None:
        """Pre-train from theta_0 under the level's mask (IMP or random), then train the real task under it.
        A self-supervised head has its own class count: it is redrawn for the real task, and where the
        output layer is prunable it stays dense during pre-training (the mask is the real head's)."""
        ssl = task in ("sparse_imp", "sparse_random")
        label = task_label(cfg, task)
        for level, mask in masks.items():
            m = mask if task.startswith("sparse_imp") else MaskConfig(kind="random", like=mask, seed=s)
            m_pre = replace(m, dense=(head,)) if ssl and head else m
            pre = plan.add(pretrain_config(base, cfg.sparse_task if ssl else "classify", duration, cfg.blur).replace(
                start_run=dense, start_step="0it", restart_schedule=True, mask=m_pre, start_reinit_head=ssl),
                kind="pretrain", control=label, duration=duration, level=level, seed=s)
            plan.add(self._from_pretrained(cfg, base, pre, duration, ssl).replace(mask=m), kind="pretrained",
                     control=label, duration=duration, level=level, seed=s)

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
        from ..report import band, new_figure, reference_lines, save_figure

        summary = tables["summary"]
        fig, axes = new_figure(ncols=len(cfg.levels), width=5, height=4)
        axes = np.atleast_1d(axes)
        for ax, level in zip(axes, cfg.levels):
            at = summary[summary.level == level]
            for control, g in at[~at.control.str.startswith("rewind to")].groupby("control"):
                g = g.sort_values("duration_steps")
                band(ax, g.duration_steps.values, g["mean"].values, g["std"].values, label=control,
                     dashed=control.startswith("sparse"))
            reference_lines(ax, at, ((f"rewind to k={cfg.k}", "black"), ("rewind to k=0it", "grey")))
            ax.set_xscale("log")
            ax.set_xlabel("pre-training steps")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"level {level} ({float(at.density.mean()):.1%} of weights)")
        axes[0].legend(fontsize=5)
        return save_figure(fig, directory, "pretraining")

    def check(self, cfg: PretrainingConfig, tables: dict[str, pd.DataFrame]) -> Check:
        f = tables["findings"]
        labels = [task_label(cfg, t) for t in cfg.tasks]
        statement = (f"Finding (no pass/fail claim), {cfg.seeds} seeds: at levels {', '.join(map(str, cfg.levels))}, "
                     f"for each pre-training task ({', '.join(labels)}) and duration ({', '.join(cfg.durations)}), "
                     f"whether training from the pre-trained weights under the mask matches rewinding to k = {cfg.k} "
                     "(mean at least k's mean minus its std), lies between rewinding to 0 and to k, matches "
                     "rewinding to 0 (within its std) or falls below it.")
        numbers = {f"{r.task} {r.duration} level {r.level}": {"verdict": r.verdict, "mean": r.mean, "std": r.std,
                                                              "rewind_0": r.rewind_0, "rewind_k": r.rewind_k}
                   for r in f.itertuples()}
        counts = f.groupby("task").verdict.apply(lambda v: f"{(v == f'matches rewinding to k={cfg.k}').sum()}/{len(v)}")
        measured = ("Cases (duration x level) that match rewinding to k, per task: "
                    + ", ".join(f"{t} {c}" for t, c in counts.items()) + ". Full table below.")
        meaning = ("Pre-training that matches rewinding to k without labels (rotation, blur + rotation, or the "
                   "sparse self-supervised tasks) would say the early phase does not need labels; the labelled "
                   "sparse pre-training is a control (it is late rewinding plus extra steps), and random labels "
                   "test whether any training at all helps.")
        per_seed = tables["results"]
        return Check(statement, None, numbers, measured=measured, meaning=meaning,
                     tables={"verdicts": f, "per_seed": per_seed[["control", "duration", "level", "seed",
                                                                 "test_accuracy", "run_id"]]})
