"""The timeline's step rules: each lens's "the early phase ends here" read off a curve (steps against
values), as pure functions of arrays so each can be tested on constructed curves. A rule returns
None when its curve never shows the event. See docs/experiments/timeline.md."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..probes.phases import detect_phases

Rule = Callable[[np.ndarray, np.ndarray], "int | None"]


def _sorted(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s, v = np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    return s[order], v[order]


def first_above(threshold: float) -> Rule:
    """Linearization: the first step > 0 whose value (the relative output gap) exceeds ``threshold``."""
    def rule(steps, values):
        s, v = _sorted(steps, values)
        hit = np.nonzero((s > 0) & (v > threshold))[0]
        return int(s[hit[0]]) if len(hit) else None
    return rule


def smallest_below(threshold: float) -> Rule:
    """Stability: the smallest rewind point whose error barrier is below ``threshold``."""
    def rule(steps, values):
        s, v = _sorted(steps, values)
        hit = np.nonzero(v < threshold)[0]
        return int(s[hit[0]]) if len(hit) else None
    return rule


def smallest_at_least(threshold: float) -> Rule:
    """Lottery k*: the smallest rewind point whose accuracy at the level is at least ``threshold``
    (the matching threshold: dense mean minus one dense std)."""
    def rule(steps, values):
        s, v = _sorted(steps, values)
        hit = np.nonzero(v >= threshold)[0]
        return int(s[hit[0]]) if len(hit) else None
    return rule


def settled(threshold: float, until: int) -> Rule:
    """Gradient subspace: the first checkpoint from which the overlap with the first drop's subspace
    stays above ``threshold`` at every checkpoint up to ``until`` (the first drop, where it is 1)."""
    def rule(steps, values):
        s, v = _sorted(steps, values)
        keep = s <= until
        s, v = s[keep], v[keep]
        if not len(s):
            return None
        below = np.nonzero(~(v > threshold))[0]
        first = below[-1] + 1 if len(below) else 0
        return int(s[first]) if first < len(s) else None
    return rule


def peak(steps, values) -> int | None:
    """Gradient-norm peak: the step of the largest value (the first, on ties)."""
    s, v = _sorted(steps, values)
    ok = np.isfinite(v)
    return int(s[ok][np.argmax(v[ok])]) if ok.any() else None


def halved(steps, values) -> int | None:
    """Sign-flip half-rate: the first step whose rate is at most half the first step's rate."""
    s, v = _sorted(steps, values)
    if not len(v) or not v[0] > 0:
        return None
    hit = np.nonzero(v <= v[0] / 2)[0]
    return int(s[hit[0]]) if len(hit) else None


def phase_end(which: int, delta: float, rho: float) -> Rule:
    """Reconstruction: the end of phase 1 (the first checkpoint more than δ below step 0) or of phase 2
    (the minimum), with the learning-phases rules; phase 2's end only when the curve drops at all."""
    def rule(steps, values):
        s, v = _sorted(steps, values)
        if len(s) < 2 or s[0] != 0:
            return None
        ph = detect_phases(s, v, delta, rho)
        if which == 1:
            return ph.phase1_end
        return ph.minimum_step if ph.drops else None
    return rule


def within(spread: dict[int, float]) -> Rule:
    """Critical period: the earliest window start whose damage (no-deficit mean minus accuracy) is at
    most twice the pooled std of that start (``spread``, by start)."""
    def rule(steps, values):
        s, v = _sorted(steps, values)
        hit = [i for i in range(len(s)) if v[i] <= spread.get(int(s[i]), np.inf)]
        return int(s[hit[0]]) if hit else None
    return rule


@dataclass(frozen=True)
class Lens:
    """One row of the timeline: its curve per seed (columns seed, step, value), its rule and what it
    means in words."""

    name: str  # the row's key
    label: str  # the row's name in the table and figure
    group: str  # the lens it belongs to (what ``lenses`` selects)
    curve: pd.DataFrame
    rule: Rule
    definition: str


def mean_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """The curve averaged over seeds at every step (steps a seed lacks average over the others)."""
    return curve.groupby("step", as_index=False).value.mean().sort_values("step").reset_index(drop=True)


def apply(lens: Lens) -> tuple[int | None, dict[int, int | None]]:
    """The lens's step on the mean curve, and on each seed's curve."""
    m = mean_curve(lens.curve)
    per_seed = {int(seed): lens.rule(g.step.values, g.value.values) for seed, g in lens.curve.groupby("seed")}
    return lens.rule(m.step.values, m.value.values), per_seed


def on_drop(step: int | None, drops: Sequence[int], tolerance: float) -> bool:
    """Whether ``step`` lies within ``tolerance`` (relative) of a learning-rate drop."""
    return step is not None and any(abs(step - d) <= tolerance * d for d in drops if d > 0)


def agree(a: int | None, b: int | None, factor: float) -> bool:
    """Two steps agree within ``factor`` (both 0, or both positive with ratio at most the factor)."""
    if a is None or b is None:
        return False
    if a == 0 or b == 0:
        return a == b
    return max(a, b) / min(a, b) <= factor


def grid_distance(grid: Sequence[int], a: int, b: int) -> int:
    """How many grid points apart two steps of ``grid`` are."""
    g = sorted(set(int(x) for x in grid))
    return abs(g.index(int(a)) - g.index(int(b)))
