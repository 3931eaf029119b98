"""Perturb the rewound weights theta_k of IMP subnetworks (sign/magnitude mixes, permutations,
noise), keep the mask, train from k. The IMP chains are the rewinding experiment's runs (same ids),
so with that experiment stored only the perturbed runs train (see docs/experiments/perturbations.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PerturbConfig, RunConfig, _check
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .perturbation_verdicts import judge
from .rewinding import RewindingConfig, final_rows, imp_chains


def perturbations(noise: tuple[float, ...]) -> dict[str, dict]:
    """Every perturbation of docs/experiments/perturbations.md by name -> PerturbConfig fields."""
    out: dict[str, dict] = {
        "signs k, magnitudes 0": {"kind": "sign_k_mag_0"},
        "signs k, magnitudes fresh": {"kind": "sign_k_mag_fresh"},
        "signs 0, magnitudes k": {"kind": "sign_0_mag_k"},
    }
    for scope in ("global", "layer", "filter"):
        out[f"permute {scope}"] = {"kind": "permute", "scope": scope}
        out[f"permute {scope}, same sign"] = {"kind": "permute", "scope": scope, "same_sign": True}
    for c in noise:
        out[f"noise {c:g}σ"] = {"kind": "noise", "scale": c}
    return out


@dataclass(frozen=True)
class PerturbationsConfig:
    run: RunConfig = field(default_factory=RunConfig)
    k: str = "500it"  # the rewind point whose weights are perturbed
    levels: tuple[int, ...] = (3, 6, 9)
    seeds: int = 3
    noise: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    fraction: float = 0.2
    scope: str = "global"

    def __post_init__(self) -> None:
        _check(len(self.levels) >= 1 and min(self.levels) >= 1, f"levels must be >= 1, got {list(self.levels)}")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(0.0 < self.fraction < 1.0, f"pruning fraction must be in (0, 1), got {self.fraction}")
        _check(all(c > 0 for c in self.noise), f"noise scales must be > 0, got {list(self.noise)}")

    def rewinding(self) -> RewindingConfig:
        """The IMP chains perturbed here: those of the rewinding experiment (k = 0 for comparison)."""
        return RewindingConfig(run=self.run, rewind=("0it", self.k), levels=max(self.levels), seeds=self.seeds,
                               fraction=self.fraction, scope=self.scope, controls="none")


class Perturbations(ExperimentDef):
    name = "perturbations"
    config_cls = PerturbationsConfig
    main_figure = "accuracy_vs_effective_std"
    description = ("Perturbations of the rewound weights: for IMP subnetworks rewound to k, the surviving weights "
                   "of theta_k are replaced by sign/magnitude mixes with theta_0 or a fresh initialization, "
                   "permuted (globally, per layer, per output filter; optionally only among values of equal "
                   "sign), or perturbed by Gaussian noise of c times the layer's initialization std; the mask is "
                   "kept and training runs from k. The effective std is std(theta_perturbed - theta_k) over the "
                   "surviving weights.")

    def plan(self, cfg: PerturbationsConfig, store: Store) -> Plan:
        plan = Plan()
        ids = imp_chains(cfg.rewinding(), plan, controls=False)
        for s in range(cfg.seeds):
            for level in cfg.levels:
                imp = plan.graph.nodes[ids[(s, cfg.k, level)]]
                for name, fields in perturbations(cfg.noise).items():
                    p = PerturbConfig(seed=s, **fields)
                    plan.add(imp.replace(perturb=p), kind="perturbed", control=name, k=cfg.k, level=level, seed=s)
        return plan

    def analyze(self, cfg: PerturbationsConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        results = final_rows(plan, store)
        results["effective_std"] = [_effective_std(store, rid) for rid in results.run_id]
        keep = (results.control == "dense") | (results.control != "imp") | results.level.isin(cfg.levels)
        results = results[keep].copy()
        imp = results.control == "imp"
        results.loc[imp, "control"] = [f"rewind to k={k}" for k in results.loc[imp, "k"]]
        results.loc[imp, "effective_std"] = 0.0  # theta_k itself: no perturbation
        return perturbation_tables(results)

    def figures(self, cfg: PerturbationsConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        return [*_effective_std_figure(cfg, tables, directory), *_density_figure(cfg, tables, directory)]

    def check(self, cfg: PerturbationsConfig, tables: dict[str, pd.DataFrame]) -> Check:
        return judge(cfg, tables)


def perturbation_tables(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-run results and their summary per perturbation and level (mean, std over seeds)."""
    summary = (results.groupby(["control", "level"]).agg(
        density=("density", "mean"), mean=("test_accuracy", "mean"), std=("test_accuracy", "std"),
        effective_std=("effective_std", "mean"), seeds=("seed", "nunique")).reset_index())
    return {"results": results.sort_values(["control", "level", "seed"]).reset_index(drop=True),
            "summary": summary.sort_values(["level", "mean"]).reset_index(drop=True)}


def _effective_std_figure(cfg: PerturbationsConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    """At the sparsest level: accuracy against effective std, noise as a curve from theta_k (0), the
    other perturbations as points, rewinding to k and to 0 as lines."""
    from ..report import band, new_figure, reference_lines, save_figure

    summary = tables["summary"]
    level = max(cfg.levels)
    at = summary[summary.level == level]
    ref = at[at.control == f"rewind to k={cfg.k}"]
    noise = pd.concat([ref, at[at.control.str.startswith("noise")]]).sort_values("effective_std")
    fig, ax = new_figure(width=6.4, height=4.6)
    band(ax, noise.effective_std, noise["mean"], noise["std"], label="Gaussian noise (c σ_init; 0 = θk)", color="C0")
    markers = {"permute": ("s", "C3"), "signs": ("^", "C2")}
    for row in at[~at.control.str.startswith(("noise", "rewind"))].itertuples():
        marker, color = markers["permute" if row.control.startswith("permute") else "signs"]
        ax.errorbar(row.effective_std, row.mean, yerr=row.std, fmt=marker, color=color, ms=4, capsize=2)
        ax.annotate(row.control, (row.effective_std, row.mean), fontsize=5, xytext=(3, 2), textcoords="offset points")
    reference_lines(ax, at, ((f"rewind to k={cfg.k}", "black"), ("rewind to k=0it", "grey")))
    ax.set_xlabel("effective std, std(θ_perturbed − θk) over surviving weights")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Level {level} ({float(at.density.mean()):.1%}): noise (curve), permutations (squares), "
                 "sign mixes (triangles)")
    ax.legend(fontsize=6, loc="lower left")
    return save_figure(fig, directory, "accuracy_vs_effective_std")


def _density_figure(cfg: PerturbationsConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    from ..report import band, new_figure, save_figure

    summary = tables["summary"]
    fig, ax = new_figure(width=6.4, height=4.6)
    for control, g in summary.groupby("control"):
        g = g.sort_values("level")
        ref = control.startswith("rewind to")
        band(ax, g.density.values, g["mean"].values, g["std"].values, label=control, dashed=not ref,
             marker="o" if ref else ".")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Perturbations of θk (k = {cfg.k}) against density")
    ax.legend(fontsize=5, ncol=2, loc="lower left")
    return save_figure(fig, directory, "perturbations_vs_density")


def _effective_std(store: Store, rid: str) -> float:
    m = store.run(rid).metrics()
    v = m[m.name == "effective_std"].value
    return float(v.iloc[0]) if len(v) else float("nan")
