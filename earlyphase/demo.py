"""``earlyphase demo``: a set of laptop experiments on the embedded data, then index.html with each
experiment's main figure beside its verdict.

The headline set is one experiment per paper plus the perturbations of the rewound weights, then the
early-phase timeline (run last, so it finds the runs it shares with the others; shown first on the
index page, since it puts every lens on one axis); ``--all`` runs every registered experiment. The training time is estimated (over the union of the
experiments' plans, so shared runs count once) and printed before anything starts."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TextIO

from .errors import UserError
from .store import Store

HEADLINE = ("rewinding", "perturbations", "linear_dynamics", "learning_phases", "timeline")
FIRST_ON_INDEX = ("timeline",)  # shown first on index.html whatever the order the experiments ran in


def demo_names(everything: bool, only: list[str] | None = None) -> list[str]:
    """The experiments a demo runs, in order (runs shared between them are trained by the first)."""
    from .registry import BUILTIN, EXPERIMENT_REGISTRY

    known = [e.name for e in EXPERIMENT_REGISTRY.entries() if e.origin == BUILTIN]
    if only:
        unknown = [n for n in only if n not in EXPERIMENT_REGISTRY]  # a plug-in's experiment may be asked for
        if unknown:
            raise UserError(EXPERIMENT_REGISTRY.unknown(unknown[0], "--only"))
        return list(only)
    return known if everything else [n for n in HEADLINE if n in known]


def estimate(names: list[str], store: Store, workers: int) -> tuple[float, int, int]:
    """(seconds of training, runs to train, runs in all) for the union of the experiments' plans."""
    from .experiments.base import Plan
    from .experiments.runner import estimate_seconds, get_experiment, load_experiment_config

    union = Plan()
    for name in names:
        exp = get_experiment(name)
        union.graph.update(exp.plan(load_experiment_config(exp, preset="laptop"), store).graph)
    seconds, pending = estimate_seconds(union, store, workers)
    return seconds, pending, len(union.graph)


def run_demo(names: list[str], store: Store, *, workers: int, progress: bool, log: TextIO = sys.stderr,
             on_result: Callable[[str, dict], None] = lambda name, check: None, retry_failed: bool = False,
             options=None) -> Path:
    """Run ``names`` on the laptop presets into ``store``, calling ``on_result(name, check)`` after each;
    returns index.html's path. A RunsFailed from any experiment propagates (the CLI exits 1 and says
    how to retry)."""
    from .experiments import run_experiment
    from .report import write_index

    seconds, pending, total = estimate(names, store, workers)
    print(f"demo: {len(names)} experiments ({', '.join(names)}); {total} runs, {total - pending} already stored; "
          f"estimated training time {seconds / 60:.0f} min with {workers} worker(s), plus analysis", file=log)
    entries = []
    for name in names:
        exp = run_experiment(name, preset="laptop", store=store, workers=workers, progress=progress, log=log,
                             retry_failed=retry_failed, options=options)
        on_result(name, exp.check)
        entries.append({"name": name, "report": exp.report_path, "check": exp.check,
                        "wall_seconds": exp.check.get("wall_seconds"), "figure": exp.main_figure})
    entries.sort(key=lambda e: e["name"] not in FIRST_ON_INDEX)  # stable: the rest keep their order
    return write_index(store.root / "index.html", entries)
