"""The timeline's curves, one per lens and seed, from the sub-experiments' own analyses (instability,
gradient subspace, critical period), the early-statistics recorder's metrics, the learning-phases
probes on the dense runs' checkpoints at 0 and 2^i, and the linearization lens's side-by-side
training (cached beside the dense run). See docs/experiments/timeline.md."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import torch

from ..config import RunConfig
from ..data import load_dataset
from ..probes.linearize import train_side_by_side
from ..steps import parse_step
from ..store import Store
from ..threads import pinned_threads
from ..train.data_order import DataOrder
from ..train.schedules import dense_schedule
from ..train.start import initial_model
from . import timeline_lenses as L
from .common import cache_key, cached_table
from .early_verdicts import flip_rates, series
from .instability import matching_threshold
from .learning_phases import LearningPhasesConfig, probe_run

CURVE = ["seed", "step", "value"]


def _frame(rows: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(rows, ignore_index=True)[CURVE] if rows else pd.DataFrame(columns=CURVE)


# ----------------------------------------------------------------------------------------------
# linearization


def side_by_side(cfg: Any, rcfg: RunConfig, store: Store, rid: str, total: int) -> pd.DataFrame:
    """The network and its first-order Taylor model around theta0, trained side by side on the run's
    batches with its optimizer and schedule; rows at the dense evaluation schedule, cached beside
    the run (``linearization-<key>.csv``)."""
    evals = dense_schedule(total)
    key = cache_key({"run": rid, "steps": total, "evals": evals, "gap": cfg.gap, "v": 1})

    def compute() -> pd.DataFrame:
        data = load_dataset(rcfg.data)
        model = initial_model(rcfg, data, store)
        batch = data.n_train if rcfg.train.full_batch else rcfg.train.batch_size
        order = DataOrder(data.n_train, batch, rcfg.data_seed, augment=data.augment,
                          shuffle=not rcfg.train.full_batch, device=torch.device("cpu"))
        return train_side_by_side(model, data, rcfg.train, order, total, evals, eval_batch=rcfg.observe.eval_batch,
                                  threshold=cfg.gap)

    with pinned_threads(rcfg.observe.threads):
        return cached_table(store.run(rid).path / f"linearization-{key}.csv", compute)


def _linearization(cfg: Any, plan: Any, store: Store) -> list[L.Lens]:
    rows = []
    for seed, rid in plan.dense.items():
        f = side_by_side(cfg, plan.graph.nodes[rid], store, rid, plan.total)
        rows.append(f[f.name == "lin_gap_rel"].assign(seed=seed))
    return [L.Lens("linearization", "linearization", "linearization", _frame(rows), L.first_above(cfg.gap),
                   f"first step where RMS(f_net - f_lin) / RMS(f_lin) on the test set exceeds {cfg.gap:g}, f_lin "
                   "the first-order Taylor model in the parameters around theta0 trained side by side")]


# ----------------------------------------------------------------------------------------------
# lottery and stability (the instability experiment's tables)


def _lottery_stability(cfg: Any, tables: dict[str, pd.DataFrame]) -> list[L.Lens]:
    res = tables["results"]
    mean, std, thr = matching_threshold(res)
    at, dense = res[res.level == cfg.level], res[res.level == 0]

    def curve(df: pd.DataFrame, column: str) -> pd.DataFrame:
        return df.assign(step=df.k_steps, value=df[column])[CURVE].reset_index(drop=True)

    out = []
    if "lottery" in cfg.lenses:
        out.append(L.Lens("lottery", f"lottery k* (level {cfg.level})", "lottery", curve(at, "accuracy_a"),
                          L.smallest_at_least(thr),
                          f"smallest rewind point k whose level-{cfg.level} subnetwork's test accuracy is at least "
                          f"the dense mean minus one dense std ({thr:.4f} = {mean:.4f} - {std:.4f})"))
    if "stability" in cfg.lenses:
        words = f"error barrier between two copies trained from theta_k on different data orders below {cfg.barrier:g}"
        out.append(L.Lens("stability_dense", "stability (dense)", "stability", curve(dense, "barrier"),
                          L.smallest_below(cfg.barrier), f"smallest k whose dense {words}"))
        out.append(L.Lens("stability_level", f"stability (level {cfg.level})", "stability", curve(at, "barrier"),
                          L.smallest_below(cfg.barrier), f"smallest k whose level-{cfg.level} {words}"))
    return out


def rewind_grid(cfg: Any, parts: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """The instability summary at level 0 and the chosen level: barrier and accuracy per rewind point."""
    cols = ["level", "k", "k_steps", "barrier_mean", "barrier_std", "accuracy_mean", "accuracy_std", "seeds"]
    if "instability" not in parts:
        return pd.DataFrame(columns=cols)
    s = parts["instability"]["summary"]
    return s[s.level.isin([0, cfg.level])][cols].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# gradient subspace, early statistics, reconstruction, critical period


def _subspace(cfg: Any, plan: Any, tables: dict[str, pd.DataFrame]) -> list[L.Lens]:
    res = tables["results"]
    drop = int(res.first_drop.iloc[0]) if int(res.first_drop.iloc[0]) >= 0 else plan.total
    curve = res.assign(value=res.overlap)[CURVE]
    return [L.Lens("subspace", "gradient subspace settles", "gradient_subspace", curve, L.settled(cfg.overlap, drop),
                   f"first checkpoint (0, 2^i) from which the top-K Hessian subspace's overlap with the one at the "
                   f"first learning-rate drop (step {drop}) stays above {cfg.overlap:g} up to that drop")]


def _early_stats(cfg: Any, plan: Any, store: Store) -> list[L.Lens]:
    window = parse_step(cfg.flip_window).iterations
    grads, flips = [], []
    for seed, rid in plan.dense.items():
        m = store.run(rid).metrics()
        g = series(m, "grad_norm")
        grads.append(pd.DataFrame({"seed": seed, "step": g.index, "value": g.values}))
        r = flip_rates(series(m, "sign_change"), window)
        flips.append(pd.DataFrame({"seed": seed, "step": r.index, "value": r.values}))
    return [L.Lens("grad_peak", "gradient-norm peak", "early_stats", _frame(grads), L.peak,
                   "step of the largest global gradient L2 norm (one minibatch per step)"),
            L.Lens("sign_flip", "sign-flip half-rate", "early_stats", _frame(flips), L.halved,
                   f"first step t where the fraction of weights whose sign flipped changes over [t, t + "
                   f"{int(window)}] by at most half its change over [0, {int(window)}]")]


def _reconstruction(cfg: Any, plan: Any, store: Store) -> list[L.Lens]:
    rows = []
    for seed, rid in plan.dense.items():
        rcfg = plan.graph.nodes[rid]
        probed = rcfg.replace(observe=replace(rcfg.observe, schedule="pow2", checkpoints=()))
        lp = LearningPhasesConfig(run=probed, seeds=cfg.seeds, layers=(_penultimate(probed),), delta=cfg.delta,
                                  rho=cfg.rho, bn_free_control=False)
        df = probe_run(lp, store, rid, probed)
        pen = df[df.penultimate.astype(bool)]
        rows.append(pd.DataFrame({"seed": seed, "step": pen.step.values, "value": pen.reconstruction_mse.values}))
    curve = _frame(rows)
    words = "of the penultimate layer's ridge reconstruction loss of the input, checkpoints at 0 and 2^i"
    return [L.Lens("phase1", "reconstruction: end of phase 1", "reconstruction", curve,
                   L.phase_end(1, cfg.delta, cfg.rho),
                   f"first checkpoint more than {cfg.delta:g} (relative) below step 0 {words}"),
            L.Lens("phase2", "reconstruction: end of phase 2", "reconstruction", curve,
                   L.phase_end(2, cfg.delta, cfg.rho), f"the minimum (when at least {cfg.delta:g} below step 0) {words}")]


def _penultimate(run: RunConfig) -> str:
    from ..models import build_model

    data = load_dataset(run.data)
    return getattr(build_model(run.model, data.input_shape, data.out_dim), "penultimate", "")


def _critical(cfg: Any, tables: dict[str, pd.DataFrame]) -> list[L.Lens]:
    summary, res = tables["summary"], tables["results"]
    none = float(summary[summary.sweep == "none"]["mean"].iloc[0])
    damage = tables["critical_period"]
    spread = {int(r.start): float(r.twice_pooled_std) for r in damage[damage.sweep == "sliding"].itertuples()}
    slide = res[res.sweep == "sliding"]
    curve = pd.DataFrame({"seed": slide.seed.values, "step": slide.start.values,
                          "value": none - slide.test_accuracy.values})
    return [L.Lens("critical", "end of the critical period", "critical_period", curve, L.within(spread),
                   f"earliest start of a {cfg.window} window of {cfg.blur}x blur whose damage (no-deficit mean minus "
                   "final accuracy) is within twice the pooled std over seeds of no deficit")]


def build_lenses(cfg: Any, plan: Any, parts: dict[str, dict[str, pd.DataFrame]], store: Store) -> list[L.Lens]:
    """Every asked-for lens in the timeline's order."""
    want, out = set(cfg.lenses), []
    if "linearization" in want:
        out += _linearization(cfg, plan, store)
    if want & {"lottery", "stability"}:
        out += _lottery_stability(cfg, parts["instability"])
    if "gradient_subspace" in want:
        out += _subspace(cfg, plan, parts["gradient_subspace"])
    if "early_stats" in want:
        out += _early_stats(cfg, plan, store)
    if "reconstruction" in want:
        out += _reconstruction(cfg, plan, store)
    if "critical_period" in want:
        out += _critical(cfg, parts["critical_period"])
    return out


__all__ = ["build_lenses", "rewind_grid", "side_by_side"]
