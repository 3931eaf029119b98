"""Verdicts of the early-phase statistics experiment: findings on the laptop preset, the paper's
sentences on the paper preset (see docs/experiments/early_stats.md). Every function reads result
tables only, so each verdict can be tested on constructed tables."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ..steps import parse_step
from ..store import Store
from .base import Check
from .rewinding import matching, summarize

LINK_COLUMNS = ["experiment", "k", "k_steps", "level", "density", "mean", "std", "seeds", "threshold", "matches"]


def link_rewinding(store: Store, rid: str, seed: int, level: int) -> pd.DataFrame:
    """Per rewind point at ``level``: the stored rewinding experiment whose seed-``seed`` dense run is
    ``rid`` (so the same run config), its mean and std over seeds, and whether it matches the dense
    network. The experiment with the most seeds (then rewind points) wins; empty when there is none."""
    best: tuple[tuple[int, int], str, pd.DataFrame] | None = None
    for d in sorted((store.root / "experiments").glob("rewinding-*")):
        meta, path = d / "config.json", d / "results.csv"
        if not (meta.is_file() and path.is_file()) or json.loads(meta.read_text()).get("experiment") != "rewinding":
            continue
        r = pd.read_csv(path)
        if rid not in set(r[(r.control == "dense") & (r.seed == seed)].run_id):
            continue
        at = r[(r.control == "imp") & (r.level == level)]
        score = (int(r.seed.nunique()), int(at.k.nunique()))
        if len(at) and (best is None or score > best[0]):
            best = (score, d.name, r)
    if best is None:
        return pd.DataFrame(columns=LINK_COLUMNS)
    _, name, r = best
    _, threshold = matching(r)
    s = summarize(r)
    s = s[(s.control == "imp") & (s.level == level)].copy()
    s["experiment"], s["threshold"] = name, threshold
    s["matches"] = s["mean"] >= threshold
    return s[LINK_COLUMNS].sort_values("k_steps").reset_index(drop=True)


def series(stats: pd.DataFrame, name: str) -> pd.Series:
    """A global statistic by step."""
    g = stats[(stats.layer == "") & (stats.name == name)].sort_values("step")
    return pd.Series(g.value.values, index=g.step.values.astype(int), dtype=float)


def flip_rates(sign_change: pd.Series, window: int) -> pd.Series:
    """Change of the fraction of flipped signs over [t, t + window], for every step t."""
    steps = np.arange(int(sign_change.index.min()), int(sign_change.index.max()) + 1)
    full = np.interp(steps, sign_change.index.values, sign_change.values)
    if len(steps) <= window:
        return pd.Series(dtype=float)
    return pd.Series(full[window:] - full[:-window], index=steps[:-window])


def accuracy_at(results: pd.DataFrame, step: int) -> float:
    """Test accuracy at ``step`` (linear interpolation between evaluated steps; NaN outside them)."""
    r = results.dropna(subset=["accuracy_test"]).sort_values("step")
    if r.empty or step < r.step.min() or step > r.step.max():
        return float("nan")
    return float(np.interp(step, r.step.values, r.accuracy_test.values))


def judge(cfg: Any, tables: dict[str, pd.DataFrame]) -> Check:
    return _paper(cfg, tables) if cfg.claim == "paper" else _findings(cfg, tables)


def _common(cfg: Any, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Gradient-norm peak and sign-flip halving: numbers both verdicts report."""
    stats = tables["statistics"]
    grad = series(stats, "grad_norm")
    window = parse_step(cfg.flip_window).iterations
    rates = flip_rates(series(stats, "sign_change"), window)
    first = float(rates.iloc[0]) if len(rates) else float("nan")
    below = rates[rates <= first / 2] if first > 0 else rates.iloc[:0]
    counts = {n: int(stats[(stats.layer == "") & (stats.name == n)].step.nunique()) for n in sorted(set(stats.name))}
    return {"grad_norm_peak_step": int(grad.idxmax()) if len(grad) else None,
            "grad_norm_peak": float(grad.max()) if len(grad) else None,
            "flip_window": window, "sign_flip_first_rate": first,
            "sign_flip_half_step": int(below.index[0]) if len(below) else None, "values_per_statistic": counts}


def _findings(cfg: Any, tables: dict[str, pd.DataFrame]) -> Check:
    n = _common(cfg, tables)
    link = tables.get("rewinding", pd.DataFrame(columns=LINK_COLUMNS))
    w = n["flip_window"]
    statement = (f"Findings (no pass/fail claim) on the dense run of seed {cfg.seed}: the step of the gradient "
                 f"norm's peak; the step t where the sign-flip rate over [t, t + {w}] falls to half its value over "
                 f"[0, {w}]; the test accuracy at k*, the smallest rewind point that matches at level "
                 f"{cfg.kstar_level} in a stored rewinding experiment of this run config.")
    if len(link):  # the dense run's accuracy at every rewind point of the grid, beside its level result
        link = link.assign(dense_accuracy_at_k=[accuracy_at(tables["results"], int(k)) for k in link.k_steps])
    matched = link[link.matches.astype(bool)] if len(link) else link
    if link.empty:
        kstar_text = (f"k*: missing (the store holds no rewinding experiment of this run config with level "
                      f"{cfg.kstar_level}; run `earlyphase run rewinding` on this store first)")
        n.update(kstar=None, kstar_accuracy=None, kstar_source=None)
    elif matched.empty:
        kstar_text = (f"k*: none (no rewind point of {link.experiment.iloc[0]} matches at level {cfg.kstar_level}: "
                      f"best mean {float(link['mean'].max()):.4f} against the threshold "
                      f"{float(link.threshold.iloc[0]):.4f}); the dense run's test accuracy at the grid's rewind "
                      "points: " + ", ".join(f"k = {r.k} {r.dense_accuracy_at_k:.4f}" for r in link.itertuples()))
        n.update(kstar=None, kstar_accuracy=None, kstar_source=str(link.experiment.iloc[0]))
    else:
        k = matched.iloc[0]
        acc = accuracy_at(tables["results"], int(k.k_steps))
        n.update(kstar=str(k.k), kstar_steps=int(k.k_steps), kstar_accuracy=acc, kstar_source=str(k.experiment))
        kstar_text = (f"k* = {k.k} (level {cfg.kstar_level} mean {float(k['mean']):.4f} against the matching "
                      f"threshold {float(k.threshold):.4f}, {k.experiment}); the dense run's test accuracy at k* "
                      f"is {acc:.4f}")
    half = n["sign_flip_half_step"]
    measured = (f"The gradient norm peaks at step {n['grad_norm_peak_step']} ({n['grad_norm_peak']:.4g}). Signs "
                f"flip at {n['sign_flip_first_rate']:.4f} of the weights per {w} steps over [0, {w}]; the rate first "
                f"falls to half of that over [{half}, {half + w if half is not None else '?'}]. {kstar_text}.")
    meaning = ("Findings that place the early phase on this run: where the gradient is largest, when the "
               "weights' signs settle, and how accurate the dense network is at the rewind point IMP needs. "
               "No claim is judged, so there is no pass or fail.")
    return Check(statement, None, n, measured=measured, meaning=meaning,
                 tables={"sign_flip_rate": _rates_table(tables, w), "rewinding": link})


def _rates_table(tables: dict[str, pd.DataFrame], w: int) -> pd.DataFrame:
    rates = flip_rates(series(tables["statistics"], "sign_change"), w)
    at = rates[rates.index % w == 0]
    return pd.DataFrame({"window_start": at.index, "window_end": at.index + w, "flipped_fraction_change": at.values})


def _paper(cfg: Any, tables: dict[str, pd.DataFrame]) -> Check:
    """The paper's sentences, each within the config's stated tolerance."""
    n = _common(cfg, tables)
    res = tables["results"]
    last = int(res.step.max())
    points = [(parse_step(s).iterations, lo, hi) for s, lo, hi in zip(cfg.acc_steps, cfg.acc_low, cfg.acc_high)]
    points.append((last, cfg.final_low, cfg.final_high))
    acc = pd.DataFrame([{"step": s, "accuracy": accuracy_at(res, s), "low": lo, "high": hi} for s, lo, hi in points])
    acc["ok"] = (acc.accuracy >= acc.low) & (acc.accuracy <= acc.high)
    grad = series(tables["statistics"], "grad_norm")
    within = grad[grad.index <= parse_step(cfg.grad_min_within).iterations]
    smooth = within.rolling(cfg.grad_smooth, center=True, min_periods=1).mean()
    lo, hi = (parse_step(s).iterations for s in cfg.grad_min_range)
    peak_max = parse_step(cfg.grad_peak_max).iterations
    min_step = int(smooth.idxmin()) if len(smooth) else None
    peak_ok = n["grad_norm_peak_step"] is not None and n["grad_norm_peak_step"] <= peak_max
    min_ok = min_step is not None and lo <= min_step <= hi
    passed = bool(acc.ok.all() and peak_ok and min_ok)
    n.update(accuracy={int(r.step): r.accuracy for r in acc.itertuples()}, grad_norm_min_step=min_step,
             grad_peak_ok=bool(peak_ok), grad_min_ok=bool(min_ok), accuracy_ok=bool(acc.ok.all()))
    windows = ", ".join(f"at step {s} within [{lo_:g}, {hi_:g}]" for s, lo_, hi_ in points[:-1])
    statement = (f"Test accuracy {windows}, and at the end within [{cfg.final_low:g}, {cfg.final_high:g}]; the "
                 f"gradient norm is largest at a step <= {peak_max}, and its minimum over steps 1-"
                 f"{parse_step(cfg.grad_min_within).iterations} (rolling mean over {cfg.grad_smooth} steps) lies "
                 f"within steps {lo}-{hi}.")
    measured = ("Test accuracy " + ", ".join(f"{r.accuracy:.4f} at step {r.step} ({'in' if r.ok else 'outside'} "
                                            f"[{r.low:g}, {r.high:g}])" for r in acc.itertuples())
                + f"; gradient norm peak at step {n['grad_norm_peak_step']}, smoothed minimum at step {min_step}.")
    bad = [w for w, b in (("accuracy", not acc.ok.all()), ("the gradient-norm peak", not peak_ok),
                          ("the gradient-norm minimum", not min_ok)) if b]
    meaning = ("The run reproduces the paper's description of the early phase within the stated tolerances."
               if passed else f"The run departs from the paper's description in {', '.join(bad)}.")
    return Check(statement, passed, n, measured=measured, meaning=meaning,
                 tables={"accuracy": acc, "sign_flip_rate": _rates_table(tables, n["flip_window"])})
