"""Linear mode connectivity (Frankle, Dziugaite, Roy & Carbin 2020): is training from theta_k stable
to SGD noise? Two copies of the network from theta_k train to T on different data orders (data_seed
s and s + offset), both with fresh optimizer state as IMP's rewinding; the test error along the
straight line between their end points gives the error barrier. Dense, and IMP subnetworks under
their masks, where one copy IS the rewinding experiment's stored IMP run (same run id). See
docs/experiments/instability.md."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import RunConfig, _check
from ..data import load_dataset
from ..devices import analysis_device
from ..probes import interpolation as I
from ..store import Store
from ..threads import pinned_threads
from .base import Check, ExperimentDef, Plan
from .common import (cache_key, cached_table, final_accuracy, final_density, iterations, model_at, pooled,
                     steps_text, verdict)
from .rewinding import RewindingConfig, imp_chains


@dataclass(frozen=True)
class InstabilityConfig:
    run: RunConfig = field(default_factory=RunConfig)
    dense_k: tuple[str, ...] = ("0it", "20it", "50it", "100it", "200it", "300it", "500it", "1000it")
    rewind: tuple[str, ...] = ("0it", "20it", "100it", "500it")  # the rewinding experiment's rewind points
    extra_k: tuple[str, ...] = ("50it", "200it", "300it", "1000it")  # new IMP chains, sparsest level only
    levels: tuple[int, ...] = (3, 6, 9)  # IMP levels whose subnetworks are tested
    imp_levels: int = 9  # the rewinding experiment's number of levels
    seeds: int = 3
    data_seed_offset: int = 10_000  # the second copy's data order: data_seed s + offset
    points: int = 11  # evenly spaced points on the path, ends included
    threshold: float = 0.02  # stable when the error barrier is below this (2 points)
    bn: str = "interpolate"  # BatchNorm statistics on the path: interpolate | reestimate (on training data)
    fraction: float = 0.2  # IMP: of the surviving weights pruned per level (the rewinding experiment's)
    scope: str = "global"

    def __post_init__(self) -> None:
        bad = [lv for lv in self.levels if not 1 <= lv <= self.imp_levels]
        _check(not bad, f"level {bad[0] if bad else ''} is not a level of the rewinding experiment (levels 1-"
                        f"{self.imp_levels}); choose levels within 1..imp_levels")
        _check(len(self.levels) >= 1 and len(self.dense_k) >= 2, "levels needs one level and dense_k two rewind points")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.points >= 3, f"points must be >= 3 (ends included; the paper uses 30), got {self.points}")
        _check(self.threshold > 0, f"threshold must be > 0 (an error fraction), got {self.threshold}")
        _check(self.bn in ("interpolate", "reestimate"), f"bn must be 'interpolate' or 'reestimate', got {self.bn!r}")
        _check(self.data_seed_offset != 0, "data_seed_offset must be non-zero (the copies differ in data order)")

    def rewinding(self, ks: tuple[str, ...]) -> RewindingConfig:
        """The IMP chains at ``ks``: the rewinding experiment's runs (same ids), up to the sparsest level."""
        return RewindingConfig(run=self.run, rewind=ks, levels=max(self.levels), seeds=self.seeds,
                               fraction=self.fraction, scope=self.scope, controls="none")


@dataclass
class InstabilityPlan(Plan):
    pairs: list[dict] = field(default_factory=list)  # seed, level, k, k_steps, run_a, run_b


def _statement(cfg: InstabilityConfig, ks: dict[str, int]) -> str:
    dense = sorted(ks[k] for k in cfg.dense_k)
    return (f"(a) The dense network's error barrier at k = {dense[0]} exceeds its barrier at k = {dense[-1]} by "
            f"more than twice the pooled std over {cfg.seeds} seeds; (b) at level {max(cfg.levels)} the "
            f"subnetwork is matching exactly where it is stable: the rewind points k where it matches and "
            f"where its barrier is below {cfg.threshold * 100:g} points differ in at most one point.")


class Instability(ExperimentDef):
    name = "instability"
    config_cls = InstabilityConfig
    main_figure = "barrier_vs_k"
    description = ("Linear mode connectivity (Frankle, Dziugaite, Roy & Carbin 2020): two copies from theta_k "
                   "train to T on data orders s and s + offset with fresh optimizer state; test error at evenly "
                   "spaced points on the straight line between their end points; error barrier = path maximum "
                   "minus the mean of the two ends. Dense and IMP subnetworks (one copy is the rewinding "
                   "experiment's IMP run). At k = 0 the dense copy on data order s is the dense run itself; at "
                   "k > 0 it is a new run from theta_k with fresh momentum.")

    def plan(self, cfg: InstabilityConfig, store: Store) -> InstabilityPlan:
        all_k = tuple(dict.fromkeys((*cfg.dense_k, *cfg.rewind, *cfg.extra_k)))
        ks, _ = iterations(cfg.run, all_k, "dense_k / rewind / extra_k")
        plan = InstabilityPlan()
        imp = imp_chains(cfg.rewinding(cfg.rewind), plan, controls=False)
        extra = tuple(k for k in cfg.extra_k if k not in cfg.rewind)
        if extra:
            imp.update(imp_chains(cfg.rewinding(extra), plan, controls=False))
        for s in range(cfg.seeds):
            base = cfg.run.replace(seed=s, data_seed=s)
            dense = base.replace(observe=replace(base.observe, checkpoints=tuple(sorted(
                set(base.observe.checkpoints) | set(all_k)))))
            d = plan.add(dense, kind="dense", level=0, k="", seed=s)
            for k in cfg.dense_k:
                a = d if ks[k] == 0 else plan.add(base.replace(start_run=d, start_step=k), kind="copy_a", level=0,
                                                  k=k, seed=s)
                _pair(plan, cfg, s, 0, k, ks[k], a)
            for level in cfg.levels:
                for k in cfg.rewind if level != max(cfg.levels) else (*cfg.rewind, *extra):
                    _pair(plan, cfg, s, level, k, ks[k], imp[(s, k, level)])
        how = ("re-estimated on the training data at every point" if cfg.bn == "reestimate" else
               "interpolated with the weights")
        plan.notes.append(f"BatchNorm statistics on the path: {cfg.bn} ({how}).")
        return plan

    def analyze(self, cfg: InstabilityConfig, plan: InstabilityPlan, store: Store) -> dict[str, pd.DataFrame]:
        results, paths = path_tables(cfg, plan, store)
        summary = summarize(results)
        return {"results": results, "summary": summary, "stability": stability_table(cfg, results, summary),
                "paths": paths}

    def figures(self, cfg: InstabilityConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        return draw(cfg, tables, directory)

    def check(self, cfg: InstabilityConfig, tables: dict[str, pd.DataFrame]) -> Check:
        return judge(cfg, tables)


def _pair(plan: InstabilityPlan, cfg: InstabilityConfig, seed: int, level: int, k: str, k_steps: int, a: str) -> None:
    """Add the copy of run ``a`` that differs only in its data order, and record the pair."""
    other = plan.graph.nodes[a]
    b = plan.add(other.replace(data_seed=other.data_seed + cfg.data_seed_offset, observe=cfg.run.observe),
                 kind="copy_b", level=level, k=k, seed=seed)
    plan.pairs.append({"seed": seed, "level": level, "k": k, "k_steps": k_steps, "run_a": a, "run_b": b})


# ----------------------------------------------------------------------------------------------
# analysis


def path_tables(cfg: InstabilityConfig, plan: InstabilityPlan, store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per pair: both copies' accuracies, density, the error along the path and its barrier."""
    device = analysis_device(cfg.run.observe.device)
    data = load_dataset(cfg.run.data).to(device)
    weights = I.alphas(cfg.points)
    rows, paths = [], []
    with pinned_threads(cfg.run.observe.threads):
        first = plan.pairs[0]["run_a"]
        last_step = store.run(first).checkpoint_steps()[-1]
        model = model_at(store, first, plan.graph.nodes[first], last_step, data).to(device)
        for pair in plan.pairs:
            path = store.run(pair["run_b"]).path / f"interpolation-{_path_key(cfg, pair)}.csv"
            errs = cached_table(path, lambda p=pair: _path(cfg, p, store, model, data, weights, device)).error.values
            rows.append({**pair, "density": final_density(store, pair["run_a"]),
                         "accuracy_a": final_accuracy(store, pair["run_a"]),
                         "accuracy_b": final_accuracy(store, pair["run_b"]),
                         "error_a": errs[0], "error_b": errs[-1], "barrier": I.barrier(errs)})
            paths.extend({**{k: pair[k] for k in ("seed", "level", "k", "k_steps")}, "alpha": w, "error": e}
                         for w, e in zip(weights, errs))
    order = ["level", "k_steps", "seed"]
    return (pd.DataFrame(rows).sort_values(order).reset_index(drop=True),
            pd.DataFrame(paths).sort_values([*order, "alpha"]).reset_index(drop=True))


def _path_key(cfg: InstabilityConfig, pair: dict) -> str:
    return cache_key({"a": pair["run_a"], "b": pair["run_b"], "points": cfg.points, "bn": cfg.bn, "split": "test",
                      "v": 1})


def _path(cfg: InstabilityConfig, pair: dict, store: Store, model: torch.nn.Module, data, weights: np.ndarray,
          device: torch.device) -> pd.DataFrame:
    from ..store.checkpoints import split_prefix

    a, b = (split_prefix(store.run(pair[r]).load(store.run(pair[r]).checkpoint_steps()[-1])[0], "model.")
            for r in ("run_a", "run_b"))
    a, b = ({k: v.to(device) for k, v in s.items()} for s in (a, b))
    errs = I.path_errors(model, a, b, weights, data.x_test, data.y_test,
                         reestimate=data.x_train if cfg.bn == "reestimate" else None,
                         batch=cfg.run.observe.eval_batch)
    return pd.DataFrame({"alpha": weights, "error": errs})


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    return (results.groupby(["level", "k", "k_steps"]).agg(
        density=("density", "mean"), barrier_mean=("barrier", "mean"), barrier_std=("barrier", "std"),
        accuracy_mean=("accuracy_a", "mean"), accuracy_std=("accuracy_a", "std"), seeds=("seed", "nunique"))
        .reset_index().sort_values(["level", "k_steps"]).reset_index(drop=True))


def matching_threshold(results: pd.DataFrame) -> tuple[float, float, float]:
    """Dense mean and std over seeds (the dense runs: level 0, k = 0, copy a), and mean - std."""
    dense = results[(results.level == 0) & (results.k_steps == 0)].accuracy_a
    std = float(dense.std(ddof=1)) if len(dense) >= 2 else 0.0
    return float(dense.mean()), std, float(dense.mean()) - std


def stability_table(cfg: InstabilityConfig, results: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per level: the rewind points where it is stable, where it matches, and the smallest of each."""
    _, _, thr = matching_threshold(results)
    out = []
    for level, g in summary.groupby("level"):
        stable = [int(k) for k in g[g.barrier_mean < cfg.threshold].k_steps]
        match = [int(k) for k in g[g.accuracy_mean >= thr].k_steps]
        out.append({"level": level, "density": float(g.density.mean()), "k_grid": steps_text(g.k_steps),
                    "stable_k": steps_text(stable), "matching_k": steps_text(match),
                    "smallest_stable_k": min(stable) if stable else None,
                    "smallest_matching_k": min(match) if match else None})
    table = pd.DataFrame(out)
    return table.astype({"smallest_stable_k": "Int64", "smallest_matching_k": "Int64"})


def judge(cfg: InstabilityConfig, tables: dict[str, pd.DataFrame]) -> Check:
    results, summary = tables["results"], tables["summary"]
    ks = dict(zip(summary.k, summary.k_steps))
    statement = _statement(cfg, {k: ks.get(k, -1) for k in cfg.dense_k})
    dense = summary[summary.level == 0].sort_values("k_steps")
    first, last = dense.iloc[0], dense.iloc[-1]
    spread = 2 * pooled(first.barrier_std, last.barrier_std)
    one_seed = not (np.isfinite(first.barrier_std) and np.isfinite(last.barrier_std))
    a_ok = None if one_seed else bool(first.barrier_mean - last.barrier_mean > spread)
    level = max(cfg.levels)
    at = summary[summary.level == level]
    mean, std, thr = matching_threshold(results)
    stable = set(int(k) for k in at[at.barrier_mean < cfg.threshold].k_steps)
    match = set(int(k) for k in at[at.accuracy_mean >= thr].k_steps)
    b_ok = None if not stable or not match else len(stable ^ match) <= 1
    passed = verdict(a_ok, b_ok)
    numbers = {"dense_barrier_first_k": float(first.barrier_mean),
               "dense_barrier_first_k_std": float(first.barrier_std),
               "first_k": int(first.k_steps), "last_k": int(last.k_steps),
               "dense_barrier_last_k": float(last.barrier_mean), "dense_barrier_last_k_std": float(last.barrier_std),
               "twice_pooled_std": spread, "a_pass": a_ok, "level": level, "density": float(at.density.mean()),
               "dense_mean": mean, "dense_std": std, "matching_threshold": thr, "threshold": cfg.threshold,
               "stable_k": sorted(stable), "matching_k": sorted(match), "b_pass": b_ok, "bn": cfg.bn}
    return Check(statement, passed, numbers, measured=_measured(numbers, at), meaning=_meaning(numbers, passed),
                 tables={"dense_barriers": results[results.level == 0][["seed", "k", "k_steps", "barrier"]],
                         "sparsest_level": results[results.level == level][
                             ["seed", "k", "k_steps", "barrier", "accuracy_a", "accuracy_b"]]})


def _measured(n: dict, at: pd.DataFrame) -> str:
    per_k = "; ".join(f"k={int(r.k_steps)}: barrier {100 * r.barrier_mean:.1f} pts, acc {100 * r.accuracy_mean:.1f} %"
                      for r in at.itertuples())
    return (f"Dense barrier {100 * n['dense_barrier_first_k']:.1f} ± {100 * n['dense_barrier_first_k_std']:.1f} "
            f"points at k={n['first_k']} against {100 * n['dense_barrier_last_k']:.1f} ± "
            f"{100 * n['dense_barrier_last_k_std']:.1f} at k={n['last_k']} (twice the pooled std "
            f"{100 * n['twice_pooled_std']:.1f}). At level {n['level']} ({100 * n['density']:.1f} % density): {per_k}; "
            f"matching means accuracy >= {100 * n['matching_threshold']:.2f} % (dense {100 * n['dense_mean']:.2f} − "
            f"{100 * n['dense_std']:.2f}); stable k {n['stable_k']}, matching k {n['matching_k']}. "
            f"BatchNorm statistics on the path: {n['bn']}.")


def _meaning(n: dict, passed: bool | None) -> str:
    a = ("the dense network becomes stable to SGD noise during training" if n["a_pass"] else
         "the dense network's barrier does not fall clearly between the first and the last rewind point"
         if n["a_pass"] is False else "the dense barriers' fall cannot be judged against seed noise (one seed)")
    if n["b_pass"] is None:
        b = "whether matching coincides with stability cannot be judged (no stable or no matching rewind point)"
    elif n["b_pass"]:
        b = "the sparse subnetwork matches where (and only where) it is stable, as Frankle et al. claim"
    else:
        b = "matching and stability disagree at more than one rewind point, against Frankle et al.'s claim"
    word = {True: "PASS", False: "FAIL", None: "no verdict"}[passed]
    return f"{word}: {a}; {b}."


# ----------------------------------------------------------------------------------------------
# figures


def draw(cfg: InstabilityConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    from ..report import band, log_step_axis, new_figure, save_figure

    summary, paths = tables["summary"], tables["paths"]
    stab = tables["stability"].set_index("level")
    fig, (ax, ax2) = new_figure(ncols=2, width=5.2, height=4.0)
    for level, g in summary.groupby("level"):
        name = "dense" if level == 0 else f"level {level} ({100 * g.density.mean():.1f} %)"
        line = band(ax, g.k_steps.values, 100 * g.barrier_mean.values, 100 * g.barrier_std.values, label=name)
        match = g[g.k_steps.astype(int).isin(_parse_set(stab.loc[level, "matching_k"]))]
        ax.scatter(match.k_steps, 100 * match.barrier_mean, s=40, facecolors="none", edgecolors=line.get_color())
    ax.axhline(100 * cfg.threshold, color="black", lw=0.8, ls=":", label=f"stable below {100 * cfg.threshold:g} pts")
    log_step_axis(ax)
    ax.set_xlim(left=0)
    ax.set_xlabel("rewind point k (steps)")
    ax.set_ylabel("error barrier (percentage points)")
    ax.set_title(f"Instability: barrier against k (band ±1 std, {cfg.seeds} seeds; rings: matching)")
    ax.legend()
    level = max(cfg.levels)
    mean = paths[paths.level == level].groupby(["k_steps", "alpha"]).error.mean().reset_index()
    for k, g in mean.groupby("k_steps"):
        ax2.plot(g.alpha, 100 * g.error, marker=".", label=f"k={k}")
    ax2.set_xlabel("interpolation weight α (0: data order s, 1: s + offset)")
    ax2.set_ylabel("test error (%)")
    ax2.set_title(f"Test error along the path at level {level} (mean over seeds; BN: {cfg.bn})")
    ax2.legend(fontsize=6, ncol=2)
    return save_figure(fig, directory, "barrier_vs_k")


def _parse_set(text: str) -> list[int]:
    inner = str(text).strip("{}").strip()
    return [int(v) for v in inner.split(",")] if inner else []


__all__ = ["Instability", "InstabilityConfig", "judge"]
