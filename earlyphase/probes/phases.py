"""The three learning phases of a reconstruction-loss curve, by the rules of SPEC §4.2 (*ours*; the
paper reads them off a log plot):

- phase 1 ends at the first checkpoint whose loss is more than δ below the step-0 value;
- phase 2 ends at the minimum; phase 3 is the rise after it;
- a curve shows *all three phases* when the first checkpoint after step 0 is within δ of step 0,
  the minimum comes before the last checkpoint, and the last loss exceeds the minimum by more than δ.

δ is relative (0.02 = 2 % of the reference value).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_DELTA = 0.02


@dataclass(frozen=True)
class Phases:
    """Boundaries (steps) and the tests behind ``all_three``; ``phase1_end`` is None when the loss
    never falls more than δ below its start."""

    phase1_end: int | None
    minimum_step: int
    last_step: int
    flat_start: bool  # first checkpoint after 0 within δ of step 0
    minimum_before_end: bool
    rises: bool  # last loss above the minimum by more than δ
    all_three: bool
    drop: float  # (L0 - Lmin) / L0
    rise: float  # (Llast - Lmin) / Lmin

    def as_dict(self) -> dict:
        return asdict(self)


def detect_phases(steps: Sequence[int], loss: Sequence[float], delta: float = DEFAULT_DELTA) -> Phases:
    """Phase boundaries of one curve; ``steps`` must start at 0 and have at least two points."""
    s = np.asarray(steps, dtype=np.int64)
    v = np.asarray(loss, dtype=np.float64)
    if s.ndim != 1 or s.shape != v.shape or len(s) < 2:
        raise ValueError(f"need matching 1-D steps and losses with at least two points, got {s.shape} and {v.shape}")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    if s[0] != 0:
        raise ValueError(f"the curve must start at step 0, it starts at {s[0]}")
    l0 = v[0]
    below = np.nonzero(v < l0 * (1 - delta))[0]
    phase1_end = int(s[below[0]]) if len(below) else None
    i_min = int(np.argmin(v))
    l_min = v[i_min]
    flat_start = bool(abs(v[1] - l0) <= delta * abs(l0))
    minimum_before_end = bool(i_min < len(v) - 1)
    rises = bool(v[-1] > l_min * (1 + delta))
    return Phases(phase1_end=phase1_end, minimum_step=int(s[i_min]), last_step=int(s[-1]), flat_start=flat_start,
                  minimum_before_end=minimum_before_end, rises=rises,
                  all_three=flat_start and minimum_before_end and rises,
                  drop=float((l0 - l_min) / l0) if l0 else float("nan"),
                  rise=float((v[-1] - l_min) / l_min) if l_min else float("nan"))
