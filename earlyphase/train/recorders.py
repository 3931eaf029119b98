"""Recorders observe a run without changing it. They accumulate on the device after each step and
are read back only at evaluation steps, so the hot loop stays free of host syncs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..registry import RECORDER_REGISTRY
from ..store.metrics import Row


@dataclass
class RecordContext:
    """What a recorder may know about the run it observes."""

    model: torch.nn.Module
    start: int  # first step this process trains from (a resumed run starts late)
    end: int  # the run's last step T
    evals: list[int]  # steps at which ``collect`` is called
    prunable: list[str]  # names of the prunable weights
    initial_state: Callable[[], dict[str, torch.Tensor] | None] = field(default=lambda: None)  # theta_0, if known
    lr_at: Callable[[int], float] = field(default=lambda step: float("nan"))
    data: Any = None  # the run's Dataset (on the device), for probes that evaluate on it
    config: Any = None  # the run's RunConfig


class Recorder:
    """Base class: override what you need. ``after_step`` must not sync with the host."""

    name = "recorder"

    def start(self, ctx: RecordContext) -> None:
        """Called once before the first step."""

    def after_step(self, model: torch.nn.Module, step: int, loss: torch.Tensor) -> None:
        """Called after the update that ends at ``step`` (the loop's step counter after the update)."""

    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        """Rows to store at an evaluation step; may read back from the device."""
        return []


class GradNormRecorder(Recorder):
    """Global gradient L2 norm of every step, averaged between evaluation steps (name ``grad_norm``)."""

    name = "grad_norm"

    def start(self, ctx: RecordContext) -> None:
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]
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

    def start(self, ctx: RecordContext) -> None:
        self.lr_fn = ctx.lr_at

    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        return [(step, "lr", "", "train", self.lr_fn(step))]


def register_recorder(name: str, factory: Callable[[], Recorder]) -> Callable[[], Recorder]:
    """``observe.recorders = ["name"]`` then builds ``factory()`` for each run (docs/plugins.md)."""
    return RECORDER_REGISTRY.register(name, factory)


register_recorder("grad_norm", GradNormRecorder)
register_recorder("lr", LearningRateRecorder)


def build_recorders(names: tuple[str, ...]) -> list[Recorder]:
    """One fresh recorder per name; the package's probes and the plug-ins register theirs, found by the
    registry on first lookup (this module imports none of them)."""
    return [RECORDER_REGISTRY.get(n, key="observe.recorders").value() for n in names]
