"""Perturbations of rewound weights (docs/experiments/perturbations.md): sign/magnitude mixes, permutations of the surviving
values (global, per layer, per output filter; optionally only among values of equal sign), and
Gaussian noise scaled by each layer's initialization std. All act on surviving prunable weights only
and are exact: a permutation keeps the multiset of surviving values of each group."""
from __future__ import annotations

import torch

from .errors import UserError

Weights = dict[str, torch.Tensor]
KINDS = ("sign_k_mag_0", "sign_k_mag_fresh", "sign_0_mag_k", "permute", "noise")
SCOPES = ("global", "layer", "filter")


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def mix_sign_magnitude(signs: Weights, magnitudes: Weights, mask: Weights, base: Weights) -> Weights:
    """Surviving weights get the sign of ``signs`` and the magnitude of ``magnitudes``."""
    return {n: torch.where(mask[n], _sign(signs[n]) * magnitudes[n].abs(), base[n]) for n in mask}


def _permute_rows(values: torch.Tensor, alive: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Permute each row's ``alive`` entries among themselves; other entries stay in place.
    Stable sorts list the survivors first (by position, and in random order) and the rest in
    position order in both, so scattering one onto the other moves only survivors."""
    n_cols = values.shape[1]
    position = torch.arange(n_cols, dtype=torch.float64).expand_as(values)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    dest = torch.argsort(torch.where(alive, position, inf), dim=1, stable=True)
    keys = torch.rand(values.shape, generator=g, dtype=torch.float64)
    src = torch.argsort(torch.where(alive, keys, inf + position * 0), dim=1, stable=True)
    src = torch.where(torch.arange(n_cols).expand_as(values) < alive.sum(1, keepdim=True), src, dest)
    out = values.clone()
    out.scatter_(1, dest, values.gather(1, src))
    return out


def permute(weights: Weights, mask: Weights, scope: str, same_sign: bool, g: torch.Generator) -> Weights:
    """Shuffle surviving values globally, within each layer, or within each output filter (a conv
    output channel, a row of a linear layer); with ``same_sign`` only among values of one sign."""
    if scope not in SCOPES:
        raise UserError(f"permutation scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    groups = [mask] if not same_sign else [
        {n: mask[n] & (weights[n] >= 0) for n in mask}, {n: mask[n] & (weights[n] < 0) for n in mask}]
    out = {n: w.clone() for n, w in weights.items()}
    for alive in groups:
        if scope == "global":
            names = list(alive)
            flat = torch.cat([out[n].flatten() for n in names]).unsqueeze(0)
            keep = torch.cat([alive[n].flatten() for n in names]).unsqueeze(0)
            new = _permute_rows(flat, keep, g)[0]
            i = 0
            for n in names:
                k = out[n].numel()
                out[n] = new[i:i + k].view_as(out[n])
                i += k
        else:
            for n in alive:
                rows = 1 if scope == "layer" else out[n].shape[0]
                new = _permute_rows(out[n].reshape(rows, -1), alive[n].reshape(rows, -1), g)
                out[n] = new.view_as(out[n])
    return out


def add_noise(weights: Weights, mask: Weights, init_std: dict[str, float], scale: float,
              g: torch.Generator) -> Weights:
    """Surviving weights plus N(0, (scale * init std of the layer)^2)."""
    return {n: torch.where(mask[n], weights[n] + scale * init_std[n] * torch.randn(weights[n].shape, generator=g,
                                                                                  dtype=weights[n].dtype), weights[n])
            for n in mask}


def effective_std(perturbed: Weights, original: Weights, mask: Weights) -> float:
    """std(theta_perturbed - theta_k) over all surviving prunable weights."""
    diff = torch.cat([(perturbed[n] - original[n])[mask[n]].double() for n in mask])
    return float(diff.std()) if diff.numel() > 1 else 0.0


def apply(kind: str, weights: Weights, mask: Weights, *, theta0: Weights | None, fresh: Weights, scope: str = "layer",
          same_sign: bool = False, scale: float = 1.0, seed: int = 0) -> Weights:
    """One perturbation of ``weights`` (theta_k) on the survivors of ``mask``."""
    g = torch.Generator().manual_seed(seed)
    if kind in ("sign_k_mag_0", "sign_0_mag_k") and theta0 is None:
        raise UserError(f"perturbation {kind} needs the weights at step 0 of the start run; checkpoint step 0")
    if kind == "sign_k_mag_0":
        return mix_sign_magnitude(weights, theta0, mask, weights)
    if kind == "sign_k_mag_fresh":
        return mix_sign_magnitude(weights, fresh, mask, weights)
    if kind == "sign_0_mag_k":
        return mix_sign_magnitude(theta0, weights, mask, weights)
    if kind == "permute":
        return permute(weights, mask, scope, same_sign, g)
    if kind == "noise":
        return add_noise(weights, mask, {n: float(fresh[n].double().std()) for n in mask}, scale, g)
    raise UserError(f"unknown perturbation {kind!r}; use one of: {', '.join(KINDS)}")
