"""The verdict of the learning-phases experiment (see docs/experiments/learning_phases.md): the
penultimate layer's reconstruction curve shows all three phases for a majority of seeds, and transfer
is an inverted U whose top comes before the source's best step. Pure functions of the result tables,
so the rule is tested on constructed tables."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .base import Check

PHASE_COLUMNS = ["network", "seed", "layer", "phase1_end", "minimum_step", "drop", "rise", "flat_start", "drops",
                 "minimum_after_phase1", "minimum_before_end", "rises", "all_three"]


@dataclass(frozen=True)
class InvertedU:
    """The transfer rule on mean curves over seeds: the best stop is interior, beats the step-0 and
    the last checkpoint's accuracy by more than ``k`` pooled std, and precedes the best source step."""

    best_step: int
    best_accuracy: float
    first_accuracy: float
    last_accuracy: float
    margin_first: float  # best - first
    margin_last: float  # best - last
    pooled_std_first: float  # sqrt((s_best² + s_first²) / 2), sample std over seeds
    pooled_std_last: float
    best_source_step: int
    interior: bool
    beats_first: bool
    beats_last: bool
    before_source: bool
    passed: bool

    def as_dict(self) -> dict:
        return asdict(self)


def inverted_u(steps, target_mean, target_std, source_mean, k: float = 2.0) -> InvertedU:
    """Judge one mean transfer curve (``target_mean``/``target_std`` over seeds at ``steps``) against
    the source accuracy curve ``source_mean``; ties go to the earliest step. A NaN std (one seed)
    never beats anything."""
    s = np.asarray(steps)
    order = np.argsort(s, kind="stable")
    s, m, sd, src = (np.asarray(a, dtype=float)[order] for a in (s, target_mean, target_std, source_mean))
    b, last = int(np.argmax(m)), len(m) - 1
    pooled = [float(np.sqrt((sd[b] ** 2 + sd[i] ** 2) / 2)) for i in (0, last)]
    margins = [float(m[b] - m[0]), float(m[b] - m[last])]
    beats = [bool(mg > k * p) for mg, p in zip(margins, pooled)]  # False when p is NaN
    best_source = int(s[int(np.argmax(src))])
    interior = 0 < b < last
    before = bool(s[b] < best_source)
    return InvertedU(best_step=int(s[b]), best_accuracy=float(m[b]), first_accuracy=float(m[0]),
                     last_accuracy=float(m[last]), margin_first=margins[0], margin_last=margins[1],
                     pooled_std_first=pooled[0], pooled_std_last=pooled[1], best_source_step=best_source,
                     interior=interior, beats_first=beats[0], beats_last=beats[1], before_source=before,
                     passed=bool(interior and beats[0] and beats[1] and before))


def network_verdict(phases: pd.DataFrame, curves: pd.DataFrame, network: str, k: float) -> dict:
    """Phases majority and the inverted U of one network (the penultimate layer's rows)."""
    pen = phases[phases.penultimate & (phases.network == network)].sort_values("seed")
    layer = str(pen.layer.iloc[0])
    c = curves[(curves.network == network) & (curves.layer == layer)].sort_values("step")
    u = inverted_u(c.step.values, c.target_probe_accuracy_mean.values, c.target_probe_accuracy_std.values,
                   c.classifier_accuracy_mean.values, k)
    n_three = int(pen.all_three.sum())
    return {"network": network, "layer": layer, "seeds": len(pen), "seeds_with_all_three_phases": n_three,
            "phases_majority": bool(n_three > len(pen) / 2), "inverted_u": u}


def _phases_text(v: dict, pen: pd.DataFrame) -> str:
    per = "; ".join(f"seed {int(r.seed)}: {'all three' if r.all_three else 'not all three'} (falls "
                    f"{100 * r.drop:.1f} % to its minimum at step {int(r.minimum_step)}, then rises {100 * r.rise:.1f} %)"
                    for r in pen.itertuples())
    return (f"{v['network']}: {v['seeds_with_all_three_phases']} of {v['seeds']} seeds show all three phases at "
            f"{v['layer']} ({per})")


def _transfer_text(v: dict, k: float) -> str:
    u: InvertedU = v["inverted_u"]
    return (f"{v['network']}: best transfer stop on the mean curve at step {u.best_step} ({u.best_accuracy:.3f}; "
            f"step 0: {u.first_accuracy:.3f}, last: {u.last_accuracy:.3f}); margins {u.margin_first:+.3f} and "
            f"{u.margin_last:+.3f} against {k:g} pooled std = {k * u.pooled_std_first:.3f} and "
            f"{k * u.pooled_std_last:.3f}; best source accuracy at step {u.best_source_step}")


def _failures(v: dict, k: float) -> list[str]:
    u: InvertedU = v["inverted_u"]
    why = []
    if not v["phases_majority"]:
        why.append(f"only {v['seeds_with_all_three_phases']} of {v['seeds']} seeds show all three phases")
    if not u.interior:
        why.append(f"transfer is best at the {'first' if u.best_step == 0 else 'last'} checkpoint (no inverted U)")
    else:
        for beats, name, acc, margin, pooled in ((u.beats_first, "step-0", u.first_accuracy, u.margin_first,
                                                  u.pooled_std_first),
                                                 (u.beats_last, "last checkpoint's", u.last_accuracy, u.margin_last,
                                                  u.pooled_std_last)):
            if not beats:
                why.append(f"the transfer peak ({u.best_accuracy:.3f} at step {u.best_step}) is within noise of the "
                           f"{name} accuracy ({acc:.3f}): a margin of {margin:.3f} against {k:g} pooled std = "
                           f"{k * pooled:.3f}")
        if not u.before_source:
            why.append(f"the best transfer stop (step {u.best_step}) does not come before the best source step "
                       f"({u.best_source_step})")
    return why


def _meaning(main: dict, passed: bool | None, controls: list[dict], k: float) -> str:
    if passed is None:
        text = "No verdict: the transfer rule needs a standard deviation over at least 2 seeds."
    elif passed:
        text = ("The claim holds here: the penultimate layer first keeps, then recovers, then loses information "
                "about the input, and features stopped early transfer better than both the initial and the "
                "fully trained ones, before the source task is at its best.")
    else:
        text = "The claim does not hold on this run: " + "; ".join(_failures(main, k)) + "."
    for c in controls:
        state = "also shows" if c["phases_majority"] else "does not show"
        text += f" The {c['network']} control {state} the phases for a majority of seeds"
        text += f" and {'has' if c['inverted_u'].passed else 'has no'} clear inverted U (a finding, not judged)."
    return text


def _numbers(verdicts: list[dict], pen: pd.DataFrame) -> dict:
    out = {}
    for v in verdicts:
        rows = pen[pen.network == v["network"]]
        out[v["network"]] = {
            "layer": v["layer"], "seeds": v["seeds"], "seeds_with_all_three_phases": v["seeds_with_all_three_phases"],
            "phases_majority": v["phases_majority"], "inverted_u": v["inverted_u"].as_dict(),
            "per_seed": {int(r.seed): {"phase1_end": None if pd.isna(r.phase1_end) else int(r.phase1_end),
                                       "minimum_step": int(r.minimum_step), "all_three": bool(r.all_three),
                                       "drop": round(float(r.drop), 4), "rise": round(float(r.rise), 4)}
                         for r in rows.itertuples()}}
    return out


def learning_phases_check(statement: str, tables: dict[str, pd.DataFrame], main: str, k: float,
                          extra: dict | None = None) -> Check:
    """The verdict on network ``main``; the other networks in the tables (the BN-free control) are
    reported beside it as findings."""
    phases, curves, transfer = tables["phases"], tables["curves"], tables["transfer"]
    networks = list(dict.fromkeys([main, *phases.network]))
    verdicts = [network_verdict(phases, curves, n, k) for n in networks]
    v = verdicts[0]
    passed = None if v["seeds"] < 2 else bool(v["phases_majority"] and v["inverted_u"].passed)
    pen = phases[phases.penultimate].sort_values(["network", "seed"])
    per_network = _numbers(verdicts, pen)
    numbers = {"network": main, **{key: per_network[main][key] for key in ("layer", "seeds", "seeds_with_all_three_phases")},
               "best_transfer_step_mean_curve": v["inverted_u"].best_step,
               "best_source_step_mean_curve": v["inverted_u"].best_source_step,
               "per_seed": per_network[main]["per_seed"],
               "per_seed_transfer": {int(r.seed): {c: r._asdict()[c] for c in ("best_transfer_step", "best_transfer_accuracy",
                                                                             "best_source_step", "best_source_accuracy")}
                                     for r in transfer[transfer.network == main].itertuples()},
               "networks": per_network, "transfer_std_factor": k, **(extra or {})}
    measured = ". ".join([_phases_text(x, pen[pen.network == x["network"]]) for x in verdicts]
                         + [_transfer_text(x, k) for x in verdicts]) + "."
    c = curves[curves.layer == v["layer"]][["network", "step", "target_probe_accuracy_mean", "target_probe_accuracy_std",
                                           "classifier_accuracy_mean", "classifier_accuracy_std"]]
    return Check(statement, passed, numbers, measured=measured, meaning=_meaning(v, passed, verdicts[1:], k),
                 tables={"phases": pen[[col for col in PHASE_COLUMNS if col in pen]].reset_index(drop=True),
                         "transfer": transfer.reset_index(drop=True), "transfer_mean_curve": c.reset_index(drop=True)})
