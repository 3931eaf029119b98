"""A rich progress bar: step, loss, accuracy, steps/s and time left. It reads the loss from the
device only every ``every`` steps (about 100 reads a run), so the loop stays sync-free between."""
from __future__ import annotations

import sys

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressBar:
    def __init__(self, *, enabled: bool, total: int, start: int, label: str) -> None:
        self.enabled = enabled
        self.total, self.start = total, start
        self.every = max(1, (total - start) // 100) if enabled else 0
        self.label = label
        self._progress: Progress | None = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("acc {task.fields[acc]}"),
                TextColumn("{task.fields[rate]} it/s"), TimeRemainingColumn(),
                console=Console(file=sys.stderr), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.start,
                                                 loss="-", acc="-", rate="-")
        return self

    def update(self, step: int, loss_sum: torch.Tensor, count: int, acc: float | None) -> None:
        if self._progress is None:
            return
        loss = float(loss_sum) / max(1, count)
        task = self._progress.tasks[0]
        speed = task.speed
        self._progress.update(self._task, completed=step, loss=f"{loss:.4f}",
                              acc="-" if acc is None else f"{acc:.3f}",
                              rate="-" if not speed else f"{speed:.0f}")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
