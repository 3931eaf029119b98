"""The bounds every config value is checked against when it is loaded (docs/bounds.md holds the same
table for users; a test keeps the two equal). A value outside them is a one-line UserError before
anything is planned, allocated or written: a typo such as ``train.steps=1000000000000it`` or
``observe.threads=100000`` must not become a MemoryError, a hang, or a run stored as done."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import UserError
from .steps import Step

SEED_MAX = 2**32 - 1  # torch and numpy generators take 32-bit seeds; larger ones alias smaller ones
MAX_STEP = 10**7  # iterations (or epochs) in any step value; a run's total iterations likewise

# config key -> (lowest, highest) allowed integer; a tuple field's every entry is checked
BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, SEED_MAX),
    "data_seed": (0, SEED_MAX),
    "data.seed": (0, SEED_MAX),
    "mask.seed": (0, SEED_MAX),
    "perturb.seed": (0, SEED_MAX),
    "data.n_train": (1, 10**6),
    "data.n_test": (1, 10**6),
    "data.dim": (1, 10**6),
    "data.num_classes": (2, 10**5),
    "data.blur": (1, 64),
    "data.classes": (0, 10**5),
    "model.widths": (1, 10**6),
    "model.width": (1, 10**7),
    "model.channels": (1, 10**5),
    "train.batch_size": (1, 10**7),
    "observe.eval_batch": (1, 10**7),
    "observe.threads": (1, 1024),
}


def check_values(obj: Any, section: str) -> None:
    """Every float of a config dataclass finite, every bounded integer within its bounds, every step
    at most MAX_STEP; ``section`` is the dataclass's key prefix ("train", "data", "" for the run)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{section}.{f.name}" if section else f.name
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            _check_one(key, v)


def _check_one(key: str, v: Any) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise UserError(f"config key '{key}' must be a finite number, got {v}")
    if isinstance(v, Step) and max(v.epochs, v.iterations) > MAX_STEP:
        raise UserError(f"config key '{key}' = {str(v)!r} is beyond the longest run allowed ({MAX_STEP}it or "
                        f"{MAX_STEP}ep, docs/bounds.md); shorten it")
    bound = BOUNDS.get(key)
    if bound is not None and isinstance(v, int) and not isinstance(v, bool) and not bound[0] <= v <= bound[1]:
        raise UserError(f"config key '{key}' = {v} is outside [{bound[0]}, {bound[1]}] (docs/bounds.md); "
                        f"pick a value in that range")


def check_total_steps(total: int, steps: str) -> None:
    """A run's length in iterations (epochs converted) within MAX_STEP."""
    if total > MAX_STEP:
        raise UserError(f"train.steps = {steps!r} is {total} iterations, beyond the longest run allowed "
                        f"({MAX_STEP}, docs/bounds.md); shorten it")
