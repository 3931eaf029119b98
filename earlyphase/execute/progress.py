"""One progress bar for a sweep: runs finished of the plan, elapsed and time left."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class SweepProgress:
    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._p: Progress | None = None

    def __enter__(self) -> "SweepProgress":
        if self.enabled:
            self._p = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                               TimeRemainingColumn(), console=Console(file=sys.stderr))
            self._p.start()
            self._task = self._p.add_task("runs", total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._p is not None and n:
            self._p.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()
