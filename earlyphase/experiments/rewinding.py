"""SPEC §2.1-2.2: iterative magnitude pruning with rewinding to k, its two controls, and the
rewinding sweep: test accuracy against density per k, and the smallest matching density per k."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import MaskConfig, RunConfig, _check
from ..data import load_dataset
from ..errors import UserError
from ..steps import parse_step, steps_per_epoch
from ..store import Store
from .base import Check, ExperimentDef, Plan

STATEMENT = ("At level 9 (13.4 % density) the best rewind point k >= 100 beats k = 0 by more than twice the "
             "pooled std over seeds and is within 1.5 points of the dense accuracy.")


@dataclass(frozen=True)
class RewindingConfig:
    run: RunConfig = field(default_factory=RunConfig)  # the dense run; IMP levels share its data order
    rewind: tuple[str, ...] = ("0it", "20it", "100it", "500it")  # rewind points k
    levels: int = 9  # IMP levels 1..levels (level L keeps 0.8^L)
    seeds: int = 3
    fraction: float = 0.2  # of the surviving weights pruned per level
    scope: str = "global"  # global | layerwise magnitude ranking
    controls: str = "largest"  # random pruning and random reinit at: none | largest (k) | all
    check_level: int = 9  # the level the check is judged at
    check_min_k: str = "100it"  # "best k >= this" in the check
    max_gap: float = 0.015  # within this of dense (1.5 points)

    def __post_init__(self) -> None:
        _check(self.levels >= 0, f"levels must be >= 0, got {self.levels}")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(0.0 < self.fraction < 1.0, f"pruning fraction must be in (0, 1), got {self.fraction}")
        _check(self.scope in ("global", "layerwise"), f"scope must be 'global' or 'layerwise', got {self.scope!r}")
        _check(self.controls in ("none", "largest", "all"), f"controls must be none, largest or all, got {self.controls!r}")
        _check(len(self.rewind) >= 1, "rewind must list at least one rewind point")
        for k in self.rewind:
            parse_step(k)


def rewind_iterations(cfg: RewindingConfig) -> tuple[dict[str, int], int]:
    """Each rewind point in iterations, and the training length; a k beyond T is an error."""
    data = load_dataset(cfg.run.data)
    batch = data.n_train if cfg.run.train.full_batch else cfg.run.train.batch_size
    spe = steps_per_epoch(data.n_train, batch)
    total = parse_step(cfg.run.train.steps).to_iterations(spe)
    ks = {k: parse_step(k).to_iterations(spe) for k in cfg.rewind}
    for k, it in ks.items():
        if it > total:
            raise UserError(f"rewind point {k} ({it} steps) is beyond the training length {total}; "
                            "drop it or lengthen run.train.steps")
    return ks, total


def imp_chains(cfg: RewindingConfig, plan: Plan, *, controls: bool = True) -> dict[tuple[int, str, int], str]:
    """Add the dense runs and IMP chains (and controls) to ``plan``; returns (seed, k, level) -> run id."""
    ks, _ = rewind_iterations(cfg)
    largest = max(ks, key=ks.get)
    ids: dict[tuple[int, str, int], str] = {}
    for s in range(cfg.seeds):
        base = cfg.run.replace(seed=s, data_seed=s)
        dense = base.replace(observe=replace(base.observe, checkpoints=tuple(sorted(
            set(base.observe.checkpoints) | set(cfg.rewind)))))
        d = plan.add(dense, kind="dense", control="dense", k="", k_steps=-1, level=0, seed=s)
        for k in cfg.rewind:
            ids[(s, k, 0)] = d
            prev = d
            for level in range(1, cfg.levels + 1):
                mask = MaskConfig(kind="magnitude", from_run=prev, fraction=cfg.fraction, scope=cfg.scope)
                rid = plan.add(base.replace(start_run=d, start_step=k, mask=mask), kind="imp", control="imp", k=k,
                               k_steps=ks[k], level=level, seed=s)
                ids[(s, k, level)] = rid
                want = cfg.controls == "all" or (cfg.controls == "largest" and k == largest)
                if controls and want:
                    plan.add(base.replace(start_run=d, start_step=k,
                                          mask=MaskConfig(kind="random", like=mask, seed=s)),
                             kind="control", control="random_pruning", k=k, k_steps=ks[k], level=level, seed=s)
                    plan.add(base.replace(seed=10_000 + s, start_step=k, mask=mask),
                             kind="control", control="random_reinit", k=k, k_steps=ks[k], level=level, seed=s)
                prev = rid
    return ids


def final_rows(plan: Plan, store: Store) -> pd.DataFrame:
    """One row per run: its labels, final test accuracy, overall density and run id."""
    rows = []
    for rid, labels in plan.labels.items():
        m = store.run(rid).metrics()
        acc = m[(m.name == "accuracy") & (m.split == "test")]
        dens = m[(m.name == "density") & (m.layer == "")]
        rows.append({**labels, "density": float(dens.value.iloc[0]) if len(dens) else 1.0,
                     "test_accuracy": float(acc.value.iloc[acc.step.values.argmax()]), "run_id": rid})
    return pd.DataFrame(rows)


def matching(results: pd.DataFrame) -> tuple[float, float]:
    """The dense mean and the matching threshold: mean minus one sample std (SPEC §0)."""
    dense = results[results.control == "dense"].test_accuracy
    std = float(dense.std(ddof=1)) if len(dense) >= 2 else float("nan")
    return float(dense.mean()), float(dense.mean()) - (std if np.isfinite(std) else 0.0)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    keys = ["control", "k", "k_steps", "level"]
    return (results.groupby(keys, dropna=False)
            .agg(density=("density", "mean"), mean=("test_accuracy", "mean"), std=("test_accuracy", "std"),
                 seeds=("seed", "nunique"))
            .reset_index().sort_values(["control", "k_steps", "level"]).reset_index(drop=True))


def smallest_matching(summary: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per k: the smallest density d such that every level with density >= d matches."""
    out = []
    for k, group in summary[summary.control == "imp"].groupby("k", sort=False):
        best = float("nan")
        for _, row in group.sort_values("level").iterrows():
            if row["mean"] >= threshold:
                best = row["density"]
            else:
                break
        out.append({"k": k, "k_steps": int(group.k_steps.iloc[0]), "smallest_matching_density": best})
    return pd.DataFrame(out).sort_values("k_steps").reset_index(drop=True)


class Rewinding(ExperimentDef):
    name = "rewinding"
    config_cls = RewindingConfig
    description = ("IMP with rewinding (SPEC §2.1-2.2): the dense run trains once per seed; each level prunes 20 % "
                   "of the surviving weights by global magnitude, rewinds them to step k, and trains from k to T "
                   "with the dense run's learning rate and data order. Controls: random pruning (a random mask "
                   "with the IMP mask's per-layer densities, weights at k) and random reinitialization (the IMP "
                   "mask, fresh weights), both trained from k.")

    def plan(self, cfg: RewindingConfig, store: Store) -> Plan:
        plan = Plan()
        imp_chains(cfg, plan)
        return plan

    def analyze(self, cfg: RewindingConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        results = final_rows(plan, store)
        summary = summarize(results)
        _, threshold = matching(results)
        return {"results": results.sort_values(["control", "k_steps", "level", "seed"]).reset_index(drop=True),
                "summary": summary, "matching": smallest_matching(summary, threshold)}

    def figures(self, cfg: RewindingConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import band, new_figure, save_figure

        summary = tables["summary"]
        fig, ax = new_figure(width=6.4, height=4.2)
        dense = summary[summary.control == "dense"].iloc[0]
        ax.axhline(dense["mean"], color="black", lw=1, label="dense")
        if np.isfinite(dense["std"]):
            ax.axhspan(dense["mean"] - dense["std"], dense["mean"] + dense["std"], color="black", alpha=0.1)
        for k, group in summary[summary.control == "imp"].groupby("k_steps"):
            g = pd.concat([summary[summary.control == "dense"], group]).sort_values("level")
            band(ax, g.density.values, g["mean"].values, g["std"].values, label=f"IMP, rewind to k={group.k.iloc[0]}")
        for control, style in (("random_pruning", "random pruning"), ("random_reinit", "random reinit")):
            g = summary[summary.control == control].sort_values("level")
            if len(g):
                band(ax, g.density.values, g["mean"].values, g["std"].values, label=style, dashed=True, marker="x")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density (fraction of prunable weights kept)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Rewinding: accuracy against density ({int(summary.seeds.max())} seeds, band = ±1 std)")
        ax.legend(loc="lower left")
        return save_figure(fig, directory, "accuracy_vs_density")

    def check(self, cfg: RewindingConfig, tables: dict[str, pd.DataFrame]) -> Check:
        results, summary = tables["results"], tables["summary"]
        dense_mean, threshold = matching(results)
        level = min(cfg.check_level, cfg.levels)
        imp = summary[(summary.control == "imp") & (summary.level == level)]
        min_k = parse_step(cfg.check_min_k).iterations
        k0 = imp[imp.k_steps == 0]
        late = imp[imp.k_steps >= min_k]
        numbers = {"level": level, "density": float(imp.density.mean()) if len(imp) else None,
                   "dense_mean": dense_mean, "matching_threshold": threshold,
                   "smallest_matching_density": dict(zip(tables["matching"].k, tables["matching"].smallest_matching_density))}
        if k0.empty or late.empty:
            return Check(STATEMENT, False, {**numbers, "reason": "needs k = 0 and some k >= check_min_k"})
        best = late.sort_values("mean").iloc[-1]
        k0 = k0.iloc[0]
        pooled = float(np.sqrt((k0["std"] ** 2 + best["std"] ** 2) / 2))
        margin = float(best["mean"] - k0["mean"])
        gap = float(dense_mean - best["mean"])
        passed = bool(margin > 2 * pooled and gap <= cfg.max_gap)
        numbers.update({"best_k": best["k"], "best_k_mean": float(best["mean"]), "best_k_std": float(best["std"]),
                        "k0_mean": float(k0["mean"]), "k0_std": float(k0["std"]), "margin_over_k0": margin,
                        "twice_pooled_std": 2 * pooled, "gap_to_dense": gap, "max_gap": cfg.max_gap})
        return Check(STATEMENT, passed, numbers)
