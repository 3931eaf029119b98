"""Pruning masks: magnitude pruning (global or per layer), random masks with given per-layer
densities, and the resolution of a run's MaskConfig against the store (the IMP chain)."""
from .masks import densities, level_of, magnitude_prune, random_like, resolve_mask

__all__ = ["densities", "level_of", "magnitude_prune", "random_like", "resolve_mask"]
