"""The experiment framework: an experiment turns its config into a graph of runs (``plan``), reads
results from the store (``analyze``), draws figures and evaluates the experiment's claim (``check``).
The runner (runner.py) does the rest: executing, caching, the report, ``check.json``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from ..execute.graph import RunGraph
from ..store import Store


@dataclass
class Plan:
    """The runs of an experiment and what each one is to it (labels become result-table columns)."""

    graph: RunGraph = field(default_factory=RunGraph)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, cfg, **labels: Any) -> str:
        rid = self.graph.add(cfg)
        self.labels.setdefault(rid, labels)
        return rid


@dataclass
class Check:
    """A claim judged on the experiment's own numbers (``passed=None``: a finding, no pass/fail claim).

    ``statement`` is built from the config it judges (levels, k, thresholds), never fixed text.
    ``measured`` and ``meaning`` say in plain words what was measured (with the numbers that decided)
    and what the verdict means; ``tables`` hold the per-seed numbers behind it, shown in the report
    as tables."""

    statement: str
    passed: bool | None
    numbers: dict[str, Any]
    measured: str = ""
    meaning: str = ""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


class ExperimentDef:
    """Subclass per experiment; instances are stateless."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    description: ClassVar[str] = ""
    main_figure: ClassVar[str] = ""  # stem of the figure index.html shows beside the verdict

    def plan(self, cfg: Any, store: Store) -> Plan:
        raise NotImplementedError

    def analyze(self, cfg: Any, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        """Result tables; the one named ``results`` is the experiment's main table."""
        raise NotImplementedError

    def figures(self, cfg: Any, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        return []

    def check(self, cfg: Any, tables: dict[str, pd.DataFrame]) -> Check:
        raise NotImplementedError
