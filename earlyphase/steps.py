"""The step notation: ``500it``, ``2ep``, ``2ep100it`` (see docs/index.md "Steps").

A step is parsed once, when a config is loaded, into a :class:`Step`; code that needs iterations
asks the step (``cfg.train.steps.to_iterations(spe)``) instead of parsing text again. A Step *is*
its normal-form string, so a config holding one serializes, compares and hashes exactly as the
string did: run ids do not change.
"""
from __future__ import annotations

import math
import re

from .errors import UserError

_STEP_RE = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


class Step(str):
    """A duration of training: whole epochs plus iterations, spelled in its normal form."""

    epochs: int
    iterations: int

    def __new__(cls, epochs: int = 0, iterations: int = 0) -> "Step":
        if epochs and iterations:
            text = f"{epochs}ep{iterations}it"
        else:
            text = f"{epochs}ep" if epochs else f"{iterations}it"
        obj = super().__new__(cls, text)
        obj.epochs, obj.iterations = epochs, iterations
        return obj

    def __getnewargs__(self) -> tuple[int, int]:  # type: ignore[override]  # pickling and copying
        return self.epochs, self.iterations

    def to_iterations(self, steps_per_epoch: int) -> int:
        return self.epochs * steps_per_epoch + self.iterations

    def __str__(self) -> str:
        return str.__str__(self)


def parse_step(text: str | int) -> Step:
    """Parse ``500it``, ``2ep``, ``2ep100it`` (or a bare non-negative int, read as iterations); a Step
    is returned as it is."""
    if isinstance(text, Step):
        return text
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
