"""The step notation of SPEC §0: ``500it``, ``2ep``, ``2ep100it``; parsed once, converted with
steps-per-epoch = ceil(n_train / batch)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UserError

_STEP_RE = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


@dataclass(frozen=True)
class Step:
    """A duration of training: whole epochs plus iterations."""

    epochs: int = 0
    iterations: int = 0

    def to_iterations(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch + self.iterations

    def __str__(self) -> str:
        if self.epochs and self.iterations:
            return f"{self.epochs}ep{self.iterations}it"
        if self.epochs:
            return f"{self.epochs}ep"
        return f"{self.iterations}it"


def parse_step(text: str | int) -> Step:
    """Parse ``500it``, ``2ep``, ``2ep100it`` (or a bare non-negative int, read as iterations)."""
    if isinstance(text, bool):
        raise UserError(f"step {text!r} is not a step; write e.g. '500it', '2ep' or '2ep100it'")
    if isinstance(text, int):
        if text < 0:
            raise UserError(f"step {text} is negative; steps count from 0")
        return Step(0, text)
    s = str(text).strip()
    m = _STEP_RE.match(s)
    if not s or m is None or (m.group(1) is None and m.group(2) is None):
        raise UserError(f"malformed step {text!r}; write e.g. '500it', '2ep' or '2ep100it'")
    return Step(int(m.group(1) or 0), int(m.group(2) or 0))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Steps in one epoch: the last batch of an epoch may be short."""
    return max(1, math.ceil(n_train / batch_size))


def to_iterations(text: str | int, n_train: int, batch_size: int) -> int:
    return parse_step(text).to_iterations(steps_per_epoch(n_train, batch_size))
