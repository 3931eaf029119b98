"""When does rewinding help? The rewinding comparison (k = 0 against a late k at one level) under
one-factor-at-a-time changes of the preset: initialization, whether the output layer is pruned,
pruning scope. A finding, not a pass/fail claim (see docs/experiments/rewinding_robustness.md).

The preset's own row is the rewinding experiment's runs (the same run ids: the chains come from
``imp_chains``), so with that experiment stored only the changed settings train."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import RunConfig, _check
from ..errors import UserError
from ..steps import parse_step
from ..store import Store
from .base import Check, ExperimentDef, Plan
from .rewinding import RewindingConfig, final_rows, imp_chains, pooled_std

# setting key -> (config field it changes, allowed values)
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "init_mode": ("model.init_mode", ("fan_in", "fan_out", "torch_default")),
    "bn_init": ("model.bn_init", ("ones", "uniform")),
    "prune_output": ("model.prune_output", ("true", "false")),
    "scope": ("scope", ("global", "layerwise")),
}


def parse_setting(text: str) -> tuple[str, str] | None:
    """``"preset"`` -> None; ``"key=value"`` -> (key, value), or a one-line UserError naming the fix."""
    if text == "preset":
        return None
    key, _, value = text.partition("=")
    if key not in KEYS or value not in KEYS[key][1]:
        known = ", ".join(f"{k}={'|'.join(v)}" for k, (_, v) in KEYS.items())
        raise UserError(f"unknown setting {text!r} in settings; use 'preset' or one of {known}")
    return key, value


@dataclass(frozen=True)
class RobustnessConfig:
    run: RunConfig = field(default_factory=RunConfig)  # the preset: the rewinding experiment's run
    k: str = "500it"  # the late rewind point compared with k = 0
    levels: int = 9  # IMP levels 1..levels
    level: int = 9  # the level the table reports
    seeds: int = 2  # seeds per changed setting
    preset_seeds: int = 3  # seeds of the preset's own row (the rewinding experiment's)
    settings: tuple[str, ...] = ("preset", "init_mode=fan_in", "init_mode=torch_default", "prune_output=true",
                                 "scope=layerwise")
    fraction: float = 0.2
    scope: str = "global"

    def __post_init__(self) -> None:
        _check(self.levels >= 1, f"levels must be >= 1, got {self.levels}")
        _check(parse_step(self.k) != parse_step("0it"), "k must be a rewind point after step 0, e.g. '500it'")
        _check(1 <= self.level <= self.levels, f"level must be in 1..levels ({self.levels}), got {self.level}")
        _check(self.seeds >= 2 and self.preset_seeds >= 2,
               f"seeds and preset_seeds must be >= 2 (a pooled std needs two seeds), got {self.seeds}, "
               f"{self.preset_seeds}")
        _check(len(self.settings) >= 1 and len(set(self.settings)) == len(self.settings),
               f"settings must list distinct settings, got {list(self.settings)}")
        for s in self.settings:
            parse_setting(s)

    def rewinding(self, setting: str) -> RewindingConfig:
        """The rewinding sweep (k = 0 and k, no controls) of one setting."""
        run, scope, seeds = self.run, self.scope, self.seeds
        parsed = parse_setting(setting)
        if parsed is None:
            seeds = self.preset_seeds
        elif parsed[0] == "scope":
            scope = parsed[1]
        else:
            value: object = parsed[1] == "true" if parsed[0] == "prune_output" else parsed[1]
            run = run.replace(model=replace(run.model, **{parsed[0]: value}))
        return RewindingConfig(run=run, rewind=("0it", self.k), levels=self.levels, seeds=seeds,
                               fraction=self.fraction, scope=scope, controls="none")


def setting_plans(cfg: RobustnessConfig) -> dict[str, Plan]:
    """One plan per setting (labels kept apart even where two settings share runs)."""
    plans = {}
    for setting in cfg.settings:
        plans[setting] = Plan()
        imp_chains(cfg.rewinding(setting), plans[setting], controls=False)
    return plans


def setting_row(setting: str, rows: pd.DataFrame, level: int, k: str) -> dict:
    """k = 0 against k at ``level`` for one setting's per-run rows: means, stds, margin, 2 pooled std."""
    at = rows[(rows.control == "imp") & (rows.level == level)]
    late, zero = at[at.k == k].test_accuracy, at[at.k == "0it"].test_accuracy
    dense = rows[rows.control == "dense"].test_accuracy
    pooled = pooled_std(float(zero.std(ddof=1)), float(late.std(ddof=1)))
    margin = float(late.mean() - zero.mean())
    return {"setting": setting, "seeds": int(at.seed.nunique()), "level": level,
            "density": float(at.density.mean()), "dense_mean": float(dense.mean()),
            "k0_mean": float(zero.mean()), "k0_std": float(zero.std(ddof=1)), "k": k,
            "k_mean": float(late.mean()), "k_std": float(late.std(ddof=1)), "margin": margin,
            "twice_pooled_std": 2 * pooled, "holds": bool(margin > 2 * pooled)}


class RewindingRobustness(ExperimentDef):
    name = "rewinding_robustness"
    config_cls = RobustnessConfig
    main_figure = "robustness"
    description = ("When does rewinding help? The rewinding comparison (IMP rewound to k = 0 against a late k) "
                   "under one-factor-at-a-time changes of the preset: Kaiming fan-in, fan-out or PyTorch's own "
                   "layer init, the output layer pruned or not, global or layer-wise magnitude ranking. The "
                   "preset's own row is the rewinding experiment's runs (same run ids). For each setting: k = 0 "
                   "and k at one level over seeds, and whether k beats 0 by more than twice the pooled std.")

    def plan(self, cfg: RobustnessConfig, store: Store) -> Plan:
        plan = Plan()
        for setting, sub in setting_plans(cfg).items():
            for rid, labels in sub.labels.items():
                plan.add(sub.graph.nodes[rid], setting=setting, **labels)
        plan.notes.append(f"The 'preset' row reuses the rewinding experiment's runs of this run config "
                          f"(k = 0 and k = {cfg.k}, seeds 0-{cfg.preset_seeds - 1}); they train here only when "
                          "the store lacks them.")
        return plan

    def analyze(self, cfg: RobustnessConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        parts = []
        for setting, sub in setting_plans(cfg).items():
            rows = final_rows(sub, store)
            rows.insert(0, "setting", setting)
            parts.append(rows)
        results = pd.concat(parts, ignore_index=True)
        return {"results": results, "summary": summarize(cfg, results)}

    def figures(self, cfg: RobustnessConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import band, new_figure, save_figure

        summary, results = tables["summary"], tables["results"]
        fig, (ax, ax2) = new_figure(ncols=2, width=5.2, height=4.2)
        y = np.arange(len(summary))
        ax.errorbar(summary.k0_mean, y + 0.1, xerr=summary.k0_std, fmt="o", color="tab:grey", label="k = 0")
        ax.errorbar(summary.k_mean, y - 0.1, xerr=summary.k_std, fmt="s", color="tab:blue", label=f"k = {cfg.k}")
        ax.scatter(summary.dense_mean, y, marker="|", s=120, color="black", label="dense")
        ax.set_yticks(y, [f"{s} ({'holds' if h else 'no effect'})" for s, h in zip(summary.setting, summary.holds)])
        ax.invert_yaxis()
        ax.set_xlabel(f"test accuracy at level {cfg.level} (mean ± std over seeds)")
        ax.set_title("Rewinding effect per setting")
        ax.legend(loc="lower left")
        for i, setting in enumerate(summary.setting):
            imp = results[(results.setting == setting) & (results.control == "imp")]
            for k, g in imp.groupby("k"):
                s = g.groupby("level").agg(d=("density", "mean"), m=("test_accuracy", "mean")).reset_index()
                band(ax2, s.d, s.m, None, label=f"{setting}, k={k}", color=f"C{i}", dashed=k == "0it", marker=None)
        ax2.set_xscale("log")
        ax2.invert_xaxis()
        ax2.set_xlabel("density")
        ax2.set_ylabel("test accuracy")
        ax2.set_title("IMP curves, mean over seeds (solid: late k, dashed: k = 0)")
        ax2.legend(fontsize=5)
        return save_figure(fig, directory, "robustness")

    def check(self, cfg: RobustnessConfig, tables: dict[str, pd.DataFrame]) -> Check:
        summary = tables["summary"]
        density = (1 - cfg.fraction) ** cfg.level
        statement = (f"Finding: in which settings ({', '.join(cfg.settings)}) rewinding to k = {cfg.k} beats "
                     f"rewinding to k = 0 at level {cfg.level} (~{density:.1%} density) by more than twice the "
                     f"pooled std over seeds ({cfg.seeds} seeds per changed setting, {cfg.preset_seeds} for the "
                     "preset's own row).")
        holds = summary[summary.holds].setting.tolist()
        fails = summary[~summary.holds].setting.tolist()
        numbers = {r.setting: {"k0_mean": r.k0_mean, "k0_std": r.k0_std, "k_mean": r.k_mean, "k_std": r.k_std,
                               "margin": r.margin, "twice_pooled_std": r.twice_pooled_std, "holds": r.holds}
                   for r in summary.itertuples()}
        lines = [f"{r.setting}: k = 0 {r.k0_mean:.4f} ± {r.k0_std:.4f}, k = {cfg.k} {r.k_mean:.4f} ± {r.k_std:.4f}, "
                 f"margin {r.margin:+.4f} against 2 pooled std {r.twice_pooled_std:.4f}" for r in summary.itertuples()]
        measured = "; ".join(lines) + "."
        meaning = (f"The rewinding effect holds in: {', '.join(holds) or 'no setting'}; it does not in: "
                   f"{', '.join(fails) or 'no setting'}. Where it does not, rewinding to step 0 does as well as "
                   "rewinding to k within the seeds' spread, so the effect the rewinding experiment reports "
                   "depends on that setting.")
        per_seed = tables["results"]
        per_seed = per_seed[(per_seed.control == "imp") & (per_seed.level == cfg.level)]
        return Check(statement, None, numbers, measured=measured, meaning=meaning,
                     tables={"per_setting": summary, "per_seed": per_seed[["setting", "k", "seed", "density",
                                                                           "test_accuracy", "run_id"]]})


def summarize(cfg: RobustnessConfig, results: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, in the config's order."""
    return pd.DataFrame([setting_row(s, results[results.setting == s], cfg.level, cfg.k) for s in cfg.settings])
