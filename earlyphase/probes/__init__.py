"""Probes of a run: early-phase statistics, linear model and NTK, reconstruction and linear probes,
Hessian subspace, mode connectivity (DESIGN.md "Layout")."""

from . import linear_model  # noqa: E402,F401  registers the ``linear_dynamics`` recorder
