"""The three learning phases of a reconstruction-loss curve (*ours*; the paper reads them off a log
plot; see docs/experiments/learning_phases.md):

- phase 1 ends at the first checkpoint whose loss is more than δ below the step-0 value;
- phase 2 ends at the minimum; phase 3 is the rise after it.

A curve shows *all three phases* only when each of them is there:

1. flat start: the first two checkpoints after step 0 are within δ of the step-0 value;
2. drop: the minimum is at least δ below the step-0 value, comes after the end of phase 1 (strictly:
   phase 2 spans at least two checkpoints) and before the last checkpoint;
3. rise: the last checkpoint's loss exceeds the minimum by at least ρ.

δ and ρ are relative (0.02 = 2 % of the reference value) and must lie in (0, 1). A curve that only
rises, only falls or stays flat does not show the phases.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError

DEFAULT_DELTA = 0.02
DEFAULT_RHO = 0.10


def check_tolerances(delta: float, rho: float) -> None:
    """δ and ρ must lie strictly between 0 and 1 (a UserError naming the bad one otherwise)."""
    for name, value in (("delta", delta), ("rho", rho)):
        if not 0.0 < value < 1.0:
            raise UserError(f"{name} must be in (0, 1) (a relative tolerance, e.g. 0.02), got {value}")


@dataclass(frozen=True)
class Phases:
    """Boundaries (steps) and the tests behind ``all_three``; ``phase1_end`` is None when the loss
    never falls more than δ below its start."""

    phase1_end: int | None
    minimum_step: int
    last_step: int
    flat_start: bool  # the first two checkpoints after 0 are within δ of step 0
    drops: bool  # the minimum is at least δ below step 0
    minimum_after_phase1: bool  # the minimum comes after the end of phase 1
    minimum_before_end: bool  # ... and before the last checkpoint
    rises: bool  # the last loss is at least ρ above the minimum
    all_three: bool
    drop: float  # (L0 - Lmin) / L0
    rise: float  # (Llast - Lmin) / Lmin

    def as_dict(self) -> dict:
        return asdict(self)


def _sorted_curve(steps: Sequence[int], loss: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(steps, dtype=np.int64)
    v = np.asarray(loss, dtype=np.float64)
    if s.ndim != 1 or s.shape != v.shape or len(s) < 2:
        raise ValueError(f"need matching 1-D steps and losses with at least two points, got {s.shape} and {v.shape}")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if s[0] != 0:
        raise ValueError(f"the curve must start at step 0, it starts at {s[0]}")
    return s, v


def detect_phases(steps: Sequence[int], loss: Sequence[float], delta: float = DEFAULT_DELTA,
                  rho: float = DEFAULT_RHO) -> Phases:
    """Phase boundaries of one curve; ``steps`` must start at 0 and have at least two points."""
    check_tolerances(delta, rho)
    s, v = _sorted_curve(steps, loss)
    l0 = v[0]
    below = np.nonzero(v < l0 * (1 - delta))[0]
    i_end1 = int(below[0]) if len(below) else None
    i_min = int(np.argmin(v))
    l_min = v[i_min]
    flat_start = bool(len(v) >= 3 and np.all(np.abs(v[1:3] - l0) <= delta * abs(l0)))
    drops = bool(l_min <= l0 * (1 - delta))
    after = bool(i_end1 is not None and i_min > i_end1)
    before_end = bool(i_min < len(v) - 1)
    rises = bool(v[-1] >= l_min * (1 + rho))
    return Phases(phase1_end=None if i_end1 is None else int(s[i_end1]), minimum_step=int(s[i_min]),
                  last_step=int(s[-1]), flat_start=flat_start, drops=drops, minimum_after_phase1=after,
                  minimum_before_end=before_end, rises=rises,
                  all_three=flat_start and drops and after and before_end and rises,
                  drop=float((l0 - l_min) / l0) if l0 else float("nan"),
                  rise=float((v[-1] - l_min) / l_min) if l_min else float("nan"))
