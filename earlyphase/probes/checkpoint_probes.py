"""Closed-form probes over many checkpoints and layers at once (docs/experiments/learning_phases.md): per checkpoint one
streamed pass over the training set accumulates, for every probed layer, the sums a ridge fit needs
for three groups of targets — the normalized input (reconstruction), the source labels one-hot and
the transfer target's labels one-hot (linear probes). The fits of one layer at all pending
checkpoints are solved as one batch; a streamed pass over the test set then scores them."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .activations import DEFAULT_CHUNK, stream
from .ridge import Moments, fit_ridge

MEMORY_BYTES = 2 * 2 ** 30  # pending sums before the checkpoints gathered so far are solved


@dataclass
class ProbeData:
    """Inputs as the network sees them, and the label sets the probes predict (name -> train, test,
    number of classes); the reconstruction target is the flattened input itself."""

    x_train: torch.Tensor
    x_test: torch.Tensor
    labels: dict[str, tuple[torch.Tensor, torch.Tensor, int]]

    def targets(self, x: torch.Tensor, rows: slice, split: str) -> torch.Tensor:
        parts = [x.flatten(1).double()]
        for y_train, y_test, k in self.labels.values():
            y = (y_train if split == "train" else y_test)[rows]
            parts.append(F.one_hot(y.long(), k).double())
        return torch.cat(parts, 1)

    def groups(self) -> list[tuple[str, slice]]:
        d = int(self.x_train[0].numel())
        out, start = [("reconstruction", slice(0, d))], d
        for name, (_, _, k) in self.labels.items():
            out.append((name, slice(start, start + k)))
            start += k
        return out


def holdout_mask(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """A fixed random ``fraction`` of the training rows, held out to choose the ridge strength."""
    mask = torch.zeros(n, dtype=torch.bool)
    k = int(round(fraction * n))
    if 0 < k < n:
        mask[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = True
    return mask


def _accumulate(model: nn.Module, layers: Sequence[str], data: ProbeData, hold: torch.Tensor,
                chunk: int) -> dict[str, tuple[Moments, Moments]]:
    q = data.groups()[-1][1].stop
    out: dict[str, tuple[Moments, Moments]] = {}
    for rows, acts in stream(model, data.x_train, layers, chunk):
        y = data.targets(data.x_train[rows], rows, "train")
        h = hold[rows]
        for name, a in acts.items():
            if name not in out:
                out[name] = (Moments.zeros(a.shape[1], q), Moments.zeros(a.shape[1], q))
            out[name][0].add(a[~h], y[~h])
            out[name][1].add(a[h], y[h])
    return out


def _score(model: nn.Module, fits: dict, data: ProbeData, chunk: int) -> dict[str, dict[str, float]]:
    """Test-set reconstruction MSE per input element and probe accuracies, per layer."""
    groups = data.groups()
    sums: dict[str, dict[str, float]] = {n: {g: 0.0 for g, _ in groups} for n in fits}
    for rows, acts in stream(model, data.x_test, list(fits), chunk):
        y = data.targets(data.x_test[rows], rows, "test")
        for name, a in acts.items():
            pred = fits[name].predict(a)
            for g, sl in groups:
                if g == "reconstruction":
                    sums[name][g] += float((pred[:, sl] - y[:, sl]).pow(2).sum())
                else:
                    sums[name][g] += float((pred[:, sl].argmax(1) == y[:, sl].argmax(1)).sum())
    n, d = data.x_test.shape[0], groups[0][1].stop
    return {name: {g: v / (n * d) if g == "reconstruction" else v / n for g, v in s.items()}
            for name, s in sums.items()}


def probe_checkpoints(load: Callable[[int], nn.Module], steps: Sequence[int], layers: Sequence[str],
                      data: ProbeData, *, holdout: float = 0.2, chunk: int = DEFAULT_CHUNK,
                      seed: int = 0) -> list[dict]:
    """Rows ``{step, layer, features, reconstruction_mse, <label set>_probe_accuracy, ...}`` for every
    checkpoint in ``steps`` (``load(step)`` gives the network) and layer."""
    hold = holdout_mask(data.x_train.shape[0], holdout, seed)
    groups = [sl for _, sl in data.groups()]
    rows: list[dict] = []
    pending: list[tuple[int, dict[str, tuple[Moments, Moments]]]] = []

    def flush() -> None:
        if not pending:
            return
        fits: dict[int, dict] = {step: {} for step, _ in pending}
        for name in layers:
            solved = fit_ridge([m[name][0] for _, m in pending],
                               [m[name][1] for _, m in pending] if hold.any() else None, groups)
            for (step, _), fit in zip(pending, solved):
                fits[step][name] = fit
        for step, m in pending:
            scores = _score(load(step), fits[step], data, chunk)
            for name in layers:
                row = {"step": step, "layer": name, "features": int(m[name][0].xx.shape[0]),
                       "reconstruction_mse": scores[name]["reconstruction"]}
                row.update({f"{g}_probe_accuracy": v for g, v in scores[name].items() if g != "reconstruction"})
                rows.append(row)
        pending.clear()

    for step in steps:
        pending.append((step, _accumulate(load(step), layers, data, hold, chunk)))
        size = sum(8 * (fm.xx.numel() + fm.xy.numel()) * 2 for _, m in pending for fm, _ in m.values())
        if size > MEMORY_BYTES:
            flush()
    flush()
    return rows
