"""SPEC §2.4: perturb the rewound weights theta_k of IMP subnetworks (sign/magnitude mixes,
permutations, noise), keep the mask, train from k. The IMP chains are the rewinding experiment's
runs (same ids), so with that experiment stored only the perturbed runs train."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import PerturbConfig, RunConfig, _check
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .rewinding import RewindingConfig, final_rows, imp_chains

STATEMENT = ("At the sparsest level, the layer-wise permutation of theta_k does worse than rewinding to k by more "
             "than twice the std over seeds, and Gaussian noise at c = 0.5 stays within one point of rewinding to k.")


def perturbations(noise: tuple[float, ...]) -> dict[str, dict]:
    """Every perturbation of SPEC §2.4 by name -> PerturbConfig fields."""
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
    max_noise_gap: float = 0.01  # noise at c = 0.5 within one point of rewinding to k

    def __post_init__(self) -> None:
        _check(len(self.levels) >= 1 and min(self.levels) >= 1, f"levels must be >= 1, got {list(self.levels)}")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(0.0 < self.fraction < 1.0, f"pruning fraction must be in (0, 1), got {self.fraction}")

    def rewinding(self) -> RewindingConfig:
        """The IMP chains perturbed here: those of the rewinding experiment (k = 0 for comparison)."""
        return RewindingConfig(run=self.run, rewind=("0it", self.k), levels=max(self.levels), seeds=self.seeds,
                               fraction=self.fraction, scope=self.scope, controls="none")


class Perturbations(ExperimentDef):
    name = "perturbations"
    config_cls = PerturbationsConfig
    description = ("Perturbations of the rewound weights (SPEC §2.4): for IMP subnetworks rewound to k, the "
                   "surviving weights of theta_k are replaced by sign/magnitude mixes with theta_0 or a fresh "
                   "initialization, permuted (globally, per layer, per output filter; optionally only among "
                   "values of equal sign), or perturbed by Gaussian noise of c times the layer's initialization "
                   "std; the mask is kept and training runs from k. The effective std is std(theta_perturbed - "
                   "theta_k) over the surviving weights.")

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
        keep = (results.control != "imp") | results.level.isin(cfg.levels)
        results = results[keep & (results.control != "dense") | (results.control == "dense")]
        results.loc[results.control == "imp", "control"] = [f"rewind to k={k}" for k in
                                                            results.loc[results.control == "imp", "k"]]
        summary = (results.groupby(["control", "level"]).agg(
            density=("density", "mean"), mean=("test_accuracy", "mean"), std=("test_accuracy", "std"),
            effective_std=("effective_std", "mean"), seeds=("seed", "nunique")).reset_index())
        return {"results": results.sort_values(["control", "level", "seed"]).reset_index(drop=True),
                "summary": summary.sort_values(["level", "mean"]).reset_index(drop=True)}

    def figures(self, cfg: PerturbationsConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import band, new_figure, save_figure

        summary = tables["summary"]
        fig, (ax, ax2) = new_figure(ncols=2, width=6.5, height=4.8)
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
        level = max(cfg.levels)
        at = summary[(summary.level == level) & summary.effective_std.notna()]
        ax2.errorbar(at.effective_std, at["mean"], yerr=at["std"], fmt="o", ms=3)
        for row in at.itertuples():
            ax2.annotate(row.control, (row.effective_std, row.mean), fontsize=5, xytext=(3, 2),
                         textcoords="offset points")
        ref = summary[(summary.level == level) & (summary.control == f"rewind to k={cfg.k}")]
        if len(ref):
            ax2.axhline(float(ref["mean"].iloc[0]), color="black", lw=1, label=f"rewind to k={cfg.k}")
        ax2.set_xlabel("effective std, std(θ_perturbed − θk)")
        ax2.set_ylabel("test accuracy")
        ax2.set_title(f"Accuracy against effective std at level {level} ({float(at.density.mean()):.1%})")
        ax2.legend()
        return save_figure(fig, directory, "perturbations")

    def check(self, cfg: PerturbationsConfig, tables: dict[str, pd.DataFrame]) -> Check:
        s = tables["summary"]
        level = max(cfg.levels)
        at = s[s.level == level].set_index("control")
        ref, perm, noise = at.loc[f"rewind to k={cfg.k}"], at.loc["permute layer"], at.loc["noise 0.5σ"]
        pooled = float(np.sqrt((ref["std"] ** 2 + perm["std"] ** 2) / 2))
        drop = float(ref["mean"] - perm["mean"])
        noise_gap = float(ref["mean"] - noise["mean"])
        passed = bool(drop > 2 * pooled and noise_gap <= cfg.max_noise_gap)
        numbers = {"level": level, "density": float(ref["density"]), "rewind_k_mean": float(ref["mean"]),
                   "rewind_k_std": float(ref["std"]), "permute_layer_mean": float(perm["mean"]),
                   "permute_layer_std": float(perm["std"]), "drop": drop, "twice_pooled_std": 2 * pooled,
                   "noise_0.5_mean": float(noise["mean"]), "noise_gap": noise_gap,
                   "max_noise_gap": cfg.max_noise_gap,
                   "rewind_0_mean": float(at.loc["rewind to k=0it"]["mean"]) if "rewind to k=0it" in at.index else None}
        return Check(STATEMENT, passed, numbers)


def _effective_std(store: Store, rid: str) -> float:
    m = store.run(rid).metrics()
    v = m[m.name == "effective_std"].value
    return float(v.iloc[0]) if len(v) else float("nan")
