"""Fine-grained statistics of one dense run's early phase, per layer and global, and after the run,
distance and cosine similarity of the saved checkpoints to the final weights. The laptop preset
reports findings; the paper preset judges the paper's sentences on its own run (see
docs/experiments/early_stats.md)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import RunConfig, _check
from ..models import build_model, prunable_names
from ..steps import parse_step
from ..store import Store
from ..store.checkpoints import split_prefix
from .base import Check, ExperimentDef, Plan
from .early_verdicts import judge, link_rewinding

PER_STEP = ("grad_norm", "weight_magnitude", "sign_change", "dist_init", "cos_init")


@dataclass(frozen=True)
class EarlyStatsConfig:
    run: RunConfig = field(default_factory=RunConfig)
    seed: int = 0  # the replicate observed (its dense run is the rewinding experiment's dense run)
    dense_until: str = "100it"  # evaluate at every step up to here ...
    every: str = "10it"  # ... then every this many steps
    seeds: int = 1  # kept for the common --seeds option: the statistics of one run
    claim: str = "findings"  # findings (no pass/fail) | paper (the paper's sentences, tolerances below)
    flip_window: str = "100it"  # the sign-flip rate is the change of the flipped fraction per this window
    kstar_level: int = 9  # k*: the smallest rewind point matching at this level (a stored rewinding experiment)
    # claim = "paper": test accuracy at each of acc_steps within [acc_low, acc_high], and at the last step
    # within [final_low, final_high]; the gradient norm's largest value at a step <= grad_peak_max; its
    # minimum over steps 1..grad_min_within (a centred rolling mean over grad_smooth steps, since each
    # value is one minibatch's) at a step within grad_min_range
    acc_steps: tuple[str, ...] = ("400it", "2000it")
    acc_low: tuple[float, ...] = (0.45, 0.70)
    acc_high: tuple[float, ...] = (0.65, 0.90)
    final_low: float = 0.895
    final_high: float = 0.935
    grad_peak_max: str = "10it"
    grad_min_range: tuple[str, str] = ("100it", "400it")
    grad_min_within: str = "2000it"
    grad_smooth: int = 21

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.claim in ("findings", "paper"), f"claim must be 'findings' or 'paper', got {self.claim!r}")
        _check(self.kstar_level >= 1, f"kstar_level must be >= 1, got {self.kstar_level}")
        _check(len(self.acc_steps) == len(self.acc_low) == len(self.acc_high),
               "acc_steps, acc_low and acc_high must have the same length")
        _check(all(0 <= lo <= hi <= 1 for lo, hi in zip(self.acc_low, self.acc_high))
               and 0 <= self.final_low <= self.final_high <= 1,
               "accuracy windows must satisfy 0 <= low <= high <= 1")
        _check(self.grad_smooth >= 1, f"grad_smooth must be >= 1, got {self.grad_smooth}")
        steps = (self.dense_until, self.every, self.flip_window, *self.acc_steps, self.grad_peak_max,
                 *self.grad_min_range, self.grad_min_within)
        _check(all(parse_step(s).epochs == 0 for s in steps),
               "early_stats step options must be in iterations, e.g. '400it'")
        _check(parse_step(self.flip_window).iterations >= 1, "flip_window must be at least 1it")


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
    main_figure = "early_phase_statistics"
    description = ("Early-phase statistics (docs/experiments/early_stats.md) of one dense run, recorded on the device at every step: "
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
                "to_final": final, "rewinding": link_rewinding(store, rid, cfg.seed, cfg.kstar_level)}

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
        return judge(cfg, tables)
