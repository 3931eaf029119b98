"""Experiments: each turns a config into runs, results, figures, a report and a check."""
from .base import Check, ExperimentDef, Plan
from .runner import Experiment, get_experiment, redraw, register_experiment, registry, run_experiment

__all__ = ["Check", "ExperimentDef", "Plan", "Experiment", "get_experiment", "redraw", "register_experiment", "registry", "run_experiment"]
