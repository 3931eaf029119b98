"""Probes of a run: early-phase statistics, linear model and NTK, reconstruction and linear probes,
Hessian subspace, mode connectivity (DESIGN.md "Layout")."""
