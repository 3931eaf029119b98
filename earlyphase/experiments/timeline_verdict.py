"""The timeline's tables and verdict: one row per lens (step on the mean curve, band over seeds,
definition, whether it lands on a learning-rate drop), the pairs of lenses that agree within a
factor, and the one check, Frankle, Dziugaite, Roy & Carbin's: at the chosen level the smallest
stable rewind point and k* are at most one grid point apart. Reads tables only, so the check is
tested on constructed tables (see docs/experiments/timeline.md)."""
from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import pandas as pd

from .base import Check
from .timeline_lenses import Lens, agree, apply, grid_distance, on_drop

RESULT_COLUMNS = ["key", "lens", "group", "step", "band_min", "band_max", "seeds_with_step", "seeds", "on_lr_drop",
                  "definition"]


def lens_tables(lenses: Sequence[Lens], drops: Sequence[int], tolerance: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, per_seed): one row per lens, and one per lens and seed."""
    rows, seeds = [], []
    for lens in lenses:
        step, per = apply(lens)
        got = [s for s in per.values() if s is not None]
        rows.append({"key": lens.name, "lens": lens.label, "group": lens.group, "step": step,
                     "band_min": min(got) if got else None, "band_max": max(got) if got else None,
                     "seeds_with_step": len(got), "seeds": len(per), "on_lr_drop": on_drop(step, drops, tolerance),
                     "definition": lens.definition})
        seeds.extend({"key": lens.name, "seed": s, "step": v} for s, v in per.items())
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS).astype({"step": "Int64", "band_min": "Int64",
                                                                 "band_max": "Int64"})
    per_seed = pd.DataFrame(seeds, columns=["key", "seed", "step"]).astype({"step": "Int64"})
    return results, per_seed


def agreement(results: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Every pair of lenses with a step, and whether their steps agree within ``factor``."""
    have = results.dropna(subset=["step"])
    rows = [{"lens_a": a.key, "lens_b": b.key, "step_a": int(a.step), "step_b": int(b.step),
             "agree": agree(int(a.step), int(b.step), factor)}
            for a, b in combinations(have.itertuples(), 2)]
    return pd.DataFrame(rows, columns=["lens_a", "lens_b", "step_a", "step_b", "agree"])


def _step(results: pd.DataFrame, key: str) -> int | None:
    row = results[results.key == key]
    return None if row.empty or pd.isna(row.step.iloc[0]) else int(row.step.iloc[0])


def statement(level: int, grid: Sequence[int], threshold: float) -> str:
    return (f"At level {level}, the smallest stable rewind point (error barrier below {threshold * 100:g} points) "
            f"and k* (the smallest rewind point whose subnetwork matches the dense network) are at most one grid "
            f"point apart on the grid k = {sorted(int(g) for g in grid)}.")


def judge(cfg: Any, tables: dict[str, pd.DataFrame]) -> Check:
    results, grid_table = tables["results"], tables["rewind_grid"]
    grid = sorted(set(int(k) for k in grid_table.k_steps)) if len(grid_table) else []
    stable, kstar = _step(results, "stability_level"), _step(results, "lottery")
    apart = None if stable is None or kstar is None else grid_distance(grid, stable, kstar)
    passed = None if apart is None else apart <= 1
    pairs = tables["agreement"]
    agreeing = [f"{r.lens_a} ({r.step_a}) ~ {r.lens_b} ({r.step_b})" for r in pairs[pairs.agree].itertuples()]
    flagged = list(results[results.on_lr_drop.astype(bool)].key)
    numbers = {"level": cfg.level, "grid": grid, "smallest_stable_k": stable, "kstar": kstar,
               "grid_points_apart": apart, "threshold": cfg.barrier, "agree_factor": cfg.agree,
               "agreeing_pairs": agreeing, "on_lr_drop": flagged,
               "steps": {r.key: (None if pd.isna(r.step) else int(r.step)) for r in results.itertuples()}}
    return Check(statement(cfg.level, grid, cfg.barrier), passed, numbers,
                 measured=_measured(numbers, results), meaning=_meaning(numbers, passed),
                 tables={"lenses": results.drop(columns=["definition"]), "rewind_grid": grid_table,
                         "agreeing": pairs[pairs.agree].reset_index(drop=True)})


def _word(step: int | None) -> str:
    return "none" if step is None else str(step)


def _measured(n: dict, results: pd.DataFrame) -> str:
    apart = "" if n["grid_points_apart"] is None else f", {n['grid_points_apart']} grid point(s) apart"
    lines = "; ".join(f"{r.key} {_word(None if pd.isna(r.step) else int(r.step))}"
                      + ("" if pd.isna(r.band_min) else f" [{int(r.band_min)}-{int(r.band_max)}]")
                      for r in results.itertuples())
    agree_text = "; ".join(n["agreeing_pairs"]) or "none"
    drop_text = ", ".join(n["on_lr_drop"]) or "none"
    return (f"At level {n['level']}: smallest stable k {_word(n['smallest_stable_k'])}, k* {_word(n['kstar'])} on "
            f"the grid {n['grid']}{apart}. Steps (mean curve, [min-max over seeds]): {lines}. Lenses agreeing within "
            f"a factor {n['agree_factor']:g}: {agree_text}. On a learning-rate drop: {drop_text}.")


def _meaning(n: dict, passed: bool | None) -> str:
    if passed is None:
        missing = [w for w, v in (("no rewind point is stable", n["smallest_stable_k"]),
                                  ("no rewind point matches", n["kstar"])) if v is None]
        return ("No verdict: " + (" and ".join(missing) or "the lottery and stability lenses were not asked for")
                + " at this level, so the claim cannot be judged. The other rows are findings.")
    if passed:
        return ("PASS: the subnetwork becomes matching where it becomes stable to SGD noise, as Frankle et al. "
                "claim. The other rows are findings: which lenses coincide is read off the table and figure.")
    return ("FAIL: stability and matching begin more than one grid point apart, against Frankle et al.'s claim. "
            "The other rows are findings.")
