"""Probes of a run: early-phase statistics, linear model and NTK, reconstruction and linear probes,
Hessian subspace, mode connectivity (DESIGN.md "Layout")."""

from . import early_stats, linear_model  # noqa: E402,F401  register the ``early_stats`` and ``linear_dynamics`` recorders

from .phases import DEFAULT_DELTA, Phases, detect_phases  # noqa: E402,F401  docs/experiments/learning_phases.md
