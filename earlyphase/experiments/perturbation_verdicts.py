"""The perturbations verdict at the sparsest level: (a) a layer-wise permutation of theta_k falls
below rewinding to k, to the k = 0 level; (b) theta_k's signs with fresh magnitudes fall below
rewinding to k; pass = (a) and (b). (c), a finding: noise against permutations at equal effective
std (see docs/experiments/perturbations.md). Reads result tables only."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .base import Check
from .rewinding import pooled_std

PERMUTATIONS = tuple(f"permute {s}{t}" for s in ("global", "layer", "filter") for t in ("", ", same sign"))


def _row(at: pd.DataFrame, control: str) -> pd.Series:
    if control not in at.index:
        raise KeyError(f"the perturbations table has no row {control!r} at this level")
    return at.loc[control]


def part_a(at: pd.DataFrame, ref: str) -> dict[str, Any]:
    """Layer-wise permutation: below rewinding to k by > 2 pooled std, and below k = 0 + 2 pooled std."""
    k, perm, zero = _row(at, ref), _row(at, "permute layer"), _row(at, "rewind to k=0it")
    pk, pz = pooled_std(k["std"], perm["std"]), pooled_std(zero["std"], perm["std"])
    drop = float(k["mean"] - perm["mean"])
    below_k, at_k0 = drop > 2 * pk, float(perm["mean"]) < float(zero["mean"]) + 2 * pz
    return {"pass": bool(below_k and at_k0), "permute_layer_mean": float(perm["mean"]),
            "permute_layer_std": float(perm["std"]), "rewind_k_mean": float(k["mean"]),
            "rewind_k_std": float(k["std"]), "rewind_0_mean": float(zero["mean"]), "rewind_0_std": float(zero["std"]),
            "drop_below_k": drop, "twice_pooled_std_k": 2 * pk, "below_k": bool(below_k),
            "k0_plus_twice_pooled_std": float(zero["mean"]) + 2 * pz, "at_k0_level": bool(at_k0)}


def part_b(at: pd.DataFrame, ref: str) -> dict[str, Any]:
    """Signs of theta_k with fresh magnitudes: below rewinding to k by > 2 pooled std."""
    k, mix = _row(at, ref), _row(at, "signs k, magnitudes fresh")
    pk = pooled_std(k["std"], mix["std"])
    drop = float(k["mean"] - mix["mean"])
    return {"pass": bool(drop > 2 * pk), "signs_k_fresh_mean": float(mix["mean"]),
            "signs_k_fresh_std": float(mix["std"]), "drop_below_k": drop, "twice_pooled_std_k": 2 * pk}


def part_c(results: pd.DataFrame, level: int, ref: str) -> pd.DataFrame:
    """Per permutation: each seed's noise curve (theta_k at effective std 0, then the noise levels)
    interpolated at that seed's permutation effective std; the difference noise - permutation, its
    mean and std over seeds. A permutation beyond a seed's noise grid is out of range."""
    at = results[results.level == level]
    rows = []
    for perm in PERMUTATIONS:
        diffs, effs, ends, out = [], [], [], False
        for seed, g in at.groupby("seed"):
            curve = g[(g.control == ref) | g.control.str.startswith("noise")].sort_values("effective_std")
            p = g[g.control == perm]
            if p.empty or len(curve) < 2:
                continue
            eff = float(p.effective_std.iloc[0])
            effs.append(eff)
            ends.append(float(curve.effective_std.max()))
            if eff > ends[-1]:
                out = True
                continue
            diffs.append(float(np.interp(eff, curve.effective_std, curve.test_accuracy)) - float(p.test_accuracy.iloc[0]))
        if effs:
            d = np.array(diffs) if not out else np.array([np.nan])
            rows.append({"permutation": perm, "effective_std": float(np.mean(effs)),
                         "noise_grid_max_effective_std": float(np.mean(ends)), "out_of_range": out,
                         "noise_minus_permutation": float(d.mean()),
                         "std": float(d.std(ddof=1)) if len(d) >= 2 else float("nan")})
    return pd.DataFrame(rows, columns=["permutation", "effective_std", "noise_grid_max_effective_std", "out_of_range",
                                       "noise_minus_permutation", "std"])


def statement(cfg: Any) -> str:
    level = max(cfg.levels)
    return (f"At level {level} (~{(1 - cfg.fraction) ** level:.1%} density), over {cfg.seeds} seeds: (a) permuting "
            f"the surviving values of theta_k (k = {cfg.k}) within each layer falls below rewinding to k by more "
            "than twice the pooled std, to the level of rewinding to k = 0 or below (its mean below k = 0's plus "
            "twice the pooled std); (b) theta_k's signs with fresh magnitudes fall below rewinding to k by more "
            "than twice the pooled std. Verdict: (a) and (b). (c), a finding: at equal effective std, Gaussian "
            f"noise (c in {', '.join(f'{c:g}' for c in cfg.noise)} times the layer's init std) against each "
            "permutation.")


def judge(cfg: Any, tables: dict[str, pd.DataFrame]) -> Check:
    level = max(cfg.levels)
    ref = f"rewind to k={cfg.k}"
    at = tables["summary"][tables["summary"].level == level].set_index("control")
    a, b = part_a(at, ref), part_b(at, ref)
    c = part_c(tables["results"], level, ref)
    passed = bool(a["pass"] and b["pass"])
    numbers = {"level": level, "density": float(at.density.mean()), "a": a, "b": b,
               "c": {r.permutation: {"effective_std": r.effective_std, "out_of_range": bool(r.out_of_range),
                                     "noise_minus_permutation": r.noise_minus_permutation, "std": r.std}
                     for r in c.itertuples()}}
    per_seed = tables["results"]
    per_seed = per_seed[(per_seed.level == level) & (per_seed.control != "dense")]
    return Check(statement(cfg), passed, numbers, measured=_measured(a, b, c, cfg.k), meaning=_meaning(a, b, c),
                 tables={"per_seed": per_seed[["control", "seed", "effective_std", "test_accuracy", "run_id"]]
                         .reset_index(drop=True), "equal_effective_std": c})


def _measured(a: dict, b: dict, c: pd.DataFrame, k: str) -> str:
    text = (f"(a) layer-wise permutation {a['permute_layer_mean']:.4f} ± {a['permute_layer_std']:.4f} against "
            f"rewinding to k = {k} {a['rewind_k_mean']:.4f} ± {a['rewind_k_std']:.4f} (drop {a['drop_below_k']:.4f}, "
            f"2 pooled std {a['twice_pooled_std_k']:.4f}) and k = 0 {a['rewind_0_mean']:.4f} (bound "
            f"{a['k0_plus_twice_pooled_std']:.4f}): {'PASS' if a['pass'] else 'FAIL'}. (b) signs of θk with fresh "
            f"magnitudes {b['signs_k_fresh_mean']:.4f} ± {b['signs_k_fresh_std']:.4f} (drop {b['drop_below_k']:.4f}, "
            f"2 pooled std {b['twice_pooled_std_k']:.4f}): {'PASS' if b['pass'] else 'FAIL'}. (c) noise minus "
            "permutation at equal effective std: ")
    parts = [f"{r.permutation} (eff. std {r.effective_std:.3f}) out of the noise grid's range (its largest "
             f"effective std is {r.noise_grid_max_effective_std:.3f})" if r.out_of_range
             else f"{r.permutation} (eff. std {r.effective_std:.3f}) {r.noise_minus_permutation:+.4f} ± {r.std:.4f}"
             for r in c.itertuples()]
    return text + ("; ".join(parts) or "no permutation measured") + "."


def _meaning(a: dict, b: dict, c: pd.DataFrame) -> str:
    ok = c[~c.out_of_range]
    worse = ok[ok.noise_minus_permutation - 2 * ok["std"].fillna(0) > 0].permutation.tolist()
    claims = (f"{'Both' if a['pass'] and b['pass'] else 'Not both'} of the paper's claims hold: the values of θk "
              f"{'matter' if a['pass'] else 'were not shown to matter'} beyond their layer's distribution (a), and "
              f"its signs alone {'do not suffice' if b['pass'] else 'were not shown to be insufficient'} (b). ")
    beyond = c[c.out_of_range].permutation.tolist()
    text = (f"At equal effective std, noise hurts less than {', '.join(worse)} by more than twice the std of the "
            "difference." if worse else "At equal effective std, noise does not hurt clearly less than any "
            "permutation in the noise grid's range.")
    if beyond:
        text += f" Beyond the grid (no comparison at equal effective std): {', '.join(beyond)}."
    if b["signs_k_fresh_mean"] < 0.5 * a["rewind_0_mean"]:
        text += (f" Note on (b): its runs end at {b['signs_k_fresh_mean']:.4f} ± {b['signs_k_fresh_std']:.4f}, less "
                 "than half of rewinding to 0: the perturbed networks barely trained at all, a collapse rather "
                 "than a worse fit (see the experiment's documentation for the mechanism on this network).")
    return claims + text
