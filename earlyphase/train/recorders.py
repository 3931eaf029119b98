"""Recorders observe a run without changing it. They accumulate on the device after each step and
are read back only at evaluation steps, so the hot loop stays free of host syncs."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from ..store.metrics import Row


class Recorder:
    """Base class: override what you need. ``after_step`` must not sync with the host."""

    name = "recorder"

    def start(self, model: torch.nn.Module, step: int) -> None:
        """Called once before the first step (``step`` is the starting step)."""

    def after_step(self, model: torch.nn.Module, step: int, loss: torch.Tensor) -> None:
        """Called after the update that ends at ``step`` (the loop's step counter after the update)."""

    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        """Rows to store at an evaluation step; may read back from the device."""
        return []


class GradNormRecorder(Recorder):
    """Global gradient L2 norm of every step, averaged between evaluation steps (name ``grad_norm``)."""

    name = "grad_norm"

    def start(self, model: torch.nn.Module, step: int) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device
        self.total = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)

    def after_step(self, model: torch.nn.Module, step: int, loss: torch.Tensor) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            self.total.add_(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            self.count.add_(1)

    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        if float(self.count) == 0:
            return []
        value = float(self.total / self.count)
        self.total.zero_()
        self.count.zero_()
        return [(step, "grad_norm", "", "train", value)]


class LearningRateRecorder(Recorder):
    """The learning rate in force at each evaluation step (name ``lr``)."""

    name = "lr"

    def __init__(self) -> None:
        self.lr_fn: Callable[[int], float] | None = None

    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        return [(step, "lr", "", "train", self.lr_fn(step))] if self.lr_fn else []


RECORDERS: dict[str, Callable[[], Recorder]] = {"grad_norm": GradNormRecorder, "lr": LearningRateRecorder}


def register_recorder(name: str, factory: Callable[[], Recorder]) -> None:
    """Let a probe plug in: ``observe.recorders = ["name"]`` then builds it for each run."""
    RECORDERS[name] = factory


def build_recorders(names: tuple[str, ...]) -> list[Recorder]:
    unknown = [n for n in names if n not in RECORDERS]
    if unknown:
        raise UserError(f"unknown recorder {unknown[0]!r}; known: {', '.join(sorted(RECORDERS))}")
    return [RECORDERS[n]() for n in names]
