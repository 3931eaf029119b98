"""SPEC §2.3: fine-grained statistics of one dense run's early phase, per layer and global, and
after the run, distance and cosine similarity of the saved checkpoints to the final weights."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import RunConfig, _check
from ..models import build_model, prunable_names
from ..steps import parse_step
from ..store import Store
from ..store.checkpoints import split_prefix
from .base import Check, ExperimentDef, Plan

STATEMENT = ("(ours) Every per-step statistic is recorded at every step of the dense run; the gradient norm "
             "peaks within the first 10 % of training; the checkpoints approach the final weights (cosine to "
             "theta_T rises to 1) while the distance to theta_0 grows.")
PER_STEP = ("grad_norm", "weight_magnitude", "sign_change", "dist_init", "cos_init")


@dataclass(frozen=True)
class EarlyStatsConfig:
    run: RunConfig = field(default_factory=RunConfig)
    seed: int = 0  # the replicate observed (its dense run is the rewinding experiment's dense run)
    dense_until: str = "100it"  # evaluate at every step up to here ...
    every: str = "10it"  # ... then every this many steps
    seeds: int = 1  # kept for the common --seeds option: the statistics of one run

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        parse_step(self.dense_until)
        parse_step(self.every)


def stats_run(cfg: EarlyStatsConfig) -> RunConfig:
    base = cfg.run.replace(seed=cfg.seed, data_seed=cfg.seed)
    obs = replace(base.observe, recorders=tuple(sorted(set(base.observe.recorders) | {"early_stats"})),
                  eval_dense_until=cfg.dense_until, eval_every=cfg.every, eval_train=True,
                  schedule="+".join(sorted({*base.observe.schedule.split("+"), "dense"} - {"none"})))
    return base.replace(observe=obs)


def distance_to_final(cfg: RunConfig, store: Store, rid: str) -> pd.DataFrame:
    """L2 distance and cosine similarity of every checkpoint's prunable weights to theta_T."""
    rd = store.run(rid)
    steps = rd.checkpoint_steps()
    from ..data import load_dataset

    data = load_dataset(cfg.data)
    names = prunable_names(build_model(cfg.model, data.input_shape, data.out_dim), cfg.model.prune_output)
    final = split_prefix(rd.load(steps[-1])[0], "model.")
    rows = []
    for step in steps:
        w = split_prefix(rd.load(step)[0], "model.")
        dots = {n: float((w[n].double() * final[n].double()).sum()) for n in names}
        sq = {n: float(w[n].double().pow(2).sum()) for n in names}
        fsq = {n: float(final[n].double().pow(2).sum()) for n in names}
        dist = {n: float((w[n].double() - final[n].double()).pow(2).sum()) for n in names}
        for layer, ns in [("", names), *[(n, [n]) for n in names]]:
            d = sum(dots[n] for n in ns)
            norm = np.sqrt(sum(sq[n] for n in ns) * sum(fsq[n] for n in ns))
            rows.append({"step": step, "layer": layer, "dist_final": np.sqrt(sum(dist[n] for n in ns)),
                         "cos_final": d / norm if norm > 0 else float("nan")})
    return pd.DataFrame(rows)


class EarlyStats(ExperimentDef):
    name = "early_stats"
    config_cls = EarlyStatsConfig
    description = ("Early-phase statistics (SPEC §2.3) of one dense run, recorded on the device at every step: "
                   "gradient norm, mean |w|, sign changes, distance and cosine to theta_0, a sample of weight "
                   "trajectories; distance and cosine to theta_T from the saved checkpoints (dense schedule).")

    def plan(self, cfg: EarlyStatsConfig, store: Store) -> Plan:
        plan = Plan()
        plan.add(stats_run(cfg), kind="dense", seed=cfg.seed)
        return plan

    def analyze(self, cfg: EarlyStatsConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        rid = next(iter(plan.graph))
        m = store.run(rid).metrics()
        evals = m[m.name.isin(["accuracy", "loss"])].pivot_table(index="step", columns=["name", "split"],
                                                                   values="value")
        evals.columns = [f"{a}_{b}" for a, b in evals.columns]
        stats = m[m.name.isin(PER_STEP)].copy()
        final = distance_to_final(plan.graph.nodes[rid], store, rid)
        return {"results": evals.reset_index(), "statistics": stats.drop(columns=["split"]).reset_index(drop=True),
                "trajectories": m[m.name == "weight_traj"].drop(columns=["split", "name"]).reset_index(drop=True),
                "to_final": final}

    def figures(self, cfg: EarlyStatsConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import log_step_axis, new_figure, save_figure

        res, stats, traj, final = tables["results"], tables["statistics"], tables["trajectories"], tables["to_final"]
        fig, axes = new_figure(ncols=3, nrows=3, width=5, height=3.6)
        axes = np.asarray(axes).ravel()
        panels = [("accuracy", [("accuracy_test", "test"), ("accuracy_train", "train")]),
                  ("loss", [("loss_test", "test"), ("loss_train", "train")])]
        for ax, (title, cols) in zip(axes[:2], panels):
            for col, label in cols:
                if col in res:
                    ax.plot(res.step, res[col], label=label)
            ax.set_title(title)
            ax.legend()
        for ax, name, title in zip(axes[2:7], PER_STEP, ("gradient L2 norm", "mean |w| (prunable)",
                                                          "fraction of signs changed from θ0",
                                                          "L2 distance to θ0", "cosine similarity to θ0")):
            s = stats[stats.name == name]
            for layer, g in s.groupby("layer"):
                ax.plot(g.step, g.value, lw=2 if layer == "" else 0.8, label=layer or "global",
                        color="black" if layer == "" else None)
            ax.set_title(title)
            if name == "grad_norm":
                ax.set_yscale("log")
            ax.legend(fontsize=5, ncol=2)
        ax = axes[7]
        g = final[final.layer == ""]
        ax.plot(g.step, g.dist_final, label="L2 distance to θT")
        ax2 = ax.twinx()
        ax2.plot(g.step, g.cos_final, color="tab:red", label="cosine to θT")
        ax.set_title("distance (blue) and cosine (red) to θT")
        ax = axes[8]
        for layer, g in traj.groupby("layer"):
            ax.plot(g.step, g.value, lw=0.8)
        ax.set_title("trajectories of sampled weights")
        for ax in list(axes) + [ax2]:
            log_step_axis(ax)
            ax.set_xlim(left=0)
        return save_figure(fig, directory, "early_phase_statistics")

    def check(self, cfg: EarlyStatsConfig, tables: dict[str, pd.DataFrame]) -> Check:
        stats, final = tables["statistics"], tables["to_final"]
        total = int(final.step.max())
        glob = stats[stats.layer == ""]
        counts = {name: int(glob[glob.name == name].step.nunique()) for name in PER_STEP}
        # every step 0..T; the gradient norm exists from the first update on (steps 1..T)
        every_step = all(c >= total + (0 if name == "grad_norm" else 1) for name, c in counts.items())
        g = glob[glob.name == "grad_norm"].sort_values("step")
        peak_step = int(g.step.iloc[int(np.argmax(g.value.values))]) if len(g) else -1
        fin = final[final.layer == ""].sort_values("step")
        dist0 = glob[glob.name == "dist_init"].sort_values("step")
        passed = bool(every_step and 0 <= peak_step <= 0.1 * total and fin.cos_final.iloc[-1] > 0.999
                      and fin.cos_final.iloc[0] < fin.cos_final.iloc[-1]
                      and dist0.value.iloc[-1] > dist0.value.iloc[min(10, len(dist0) - 1)])
        numbers = {"steps": total, "values_per_statistic": counts, "grad_norm_peak_step": peak_step,
                   "cos_final_at_0": float(fin.cos_final.iloc[0]), "dist_init_at_T": float(dist0.value.iloc[-1])}
        return Check(STATEMENT, passed, numbers)
