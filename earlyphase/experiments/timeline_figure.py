"""The timeline's one figure: a row per lens on a shared log step axis, each lens's mean curve over
seeds normalized to [0, 1] in its own row, its step marked (line) with the band of per-seed steps
(shaded, each seed's step a triangle), and the learning-rate drops drawn across every row."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .timeline_lenses import mean_curve


def normalized(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1] (a constant curve sits at 0.5; NaNs stay NaN)."""
    v = np.asarray(values, dtype=float)
    lo, hi = np.nanmin(v) if np.isfinite(v).any() else 0.0, np.nanmax(v) if np.isfinite(v).any() else 0.0
    return np.full_like(v, 0.5) if hi <= lo else (v - lo) / (hi - lo)


def _row(ax, row: Any, curve: pd.DataFrame, seeds: pd.DataFrame, drops: list[int]) -> None:
    m = mean_curve(curve)
    ax.plot(m.step, normalized(m.value.values), color="tab:blue", lw=1.2)
    if not pd.isna(row.band_min):
        ax.axvspan(int(row.band_min), int(row.band_max), color="tab:orange", alpha=0.25, lw=0)
    got = seeds.dropna(subset=["step"])
    ax.scatter(got.step.astype(int), [1.08] * len(got), marker="v", s=14, color="tab:orange", zorder=3)
    text = "none"
    if not pd.isna(row.step):
        ax.axvline(int(row.step), color="tab:orange", lw=2)
        text = f"{int(row.step)}" + (" (on an lr drop)" if row.on_lr_drop else "")
    for d in drops:
        ax.axvline(d, color="tab:red", ls=":", lw=1)
    ax.set_ylim(-0.1, 1.2)
    ax.set_yticks([])
    ax.set_ylabel(f"{row.lens}\n{text}", rotation=0, ha="right", va="center", fontsize=7)


def draw(cfg: Any, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    from ..report import log_step_axis, new_figure, save_figure

    results, curves, seeds = tables["results"], tables["curves"], tables["per_seed"]
    drops = [int(d) for d in tables["lr_drops"].step]
    n = len(results)
    fig, axes = new_figure(nrows=max(n, 1), width=9.0, height=0.85)
    axes = np.atleast_1d(axes)
    for ax, row in zip(axes, results.itertuples()):
        _row(ax, row, curves[curves.key == row.key], seeds[seeds.key == row.key], drops)
        if ax is not axes[0]:
            ax.sharex(axes[0])
    for ax in axes:
        log_step_axis(ax)
        ax.set_xlim(left=0)
    for ax in axes[:-1]:
        ax.set_xlabel("")
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("step (log scale). Red dotted: learning-rate drops; orange line: the step on the mean curve; "
                        "triangles: each seed's step; band: their range")
    seeds = int(results.seeds.max()) if n else 0
    axes[0].set_title(f"Early-phase timeline: each lens's mean curve over {seeds} seeds, normalized to [0, 1]")
    return save_figure(fig, directory, "timeline")
