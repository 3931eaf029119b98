"""Figures as PNG (for the HTML report) and SVG (for papers), drawn without pyplot.

Figures are built from ``matplotlib.figure.Figure`` directly, so nothing here selects or switches a
backend: a notebook keeps its inline backend and a headless worker never needs a display.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..store.atomic import write_atomic

PNG_DPI = 120

#: One look for every experiment's figures: small fonts (figures are read side by side in the
#: report), light grids, no top/right spines.
STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 3.5,
    "svg.fonttype": "none",
    "svg.hashsalt": "earlyphase",  # stable element ids, so re-rendering gives the same SVG  # keep text as text in SVG, so it stays editable and searchable
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply STYLE to artists made inside the block (titles and legends read rcParams when made)."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0,
               height: float = 3.6) -> tuple[Figure, Any]:
    """A pyplot-free figure in the house style; ``width``/``height`` are per panel, in inches.

    Returns ``(fig, axes)`` where ``axes`` is one Axes for a single panel, else a 2-D array
    ``[nrows, ncols]`` squeezed like ``plt.subplots``.
    """
    with style():
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows=nrows, ncols=ncols, squeeze=True)
        for ax in np.atleast_1d(axes).ravel():
            ax.grid(True, alpha=STYLE["grid.alpha"])
            ax.tick_params(labelsize=STYLE["xtick.labelsize"])
            ax.xaxis.label.set_fontsize(STYLE["axes.labelsize"])
            ax.yaxis.label.set_fontsize(STYLE["axes.labelsize"])
            ax.title.set_fontsize(STYLE["axes.titlesize"])
    return fig, axes


def reference_lines(ax: Axes, table: "pd.DataFrame", controls: Sequence[tuple[str, str]]) -> None:
    """A horizontal line at each named control's mean (``table`` rows with columns control, mean, std),
    with its +-std band: the baselines a perturbed or pre-trained curve is read against."""
    for control, color in controls:
        row = table[table.control == control]
        if len(row):
            m, sd = float(row["mean"].iloc[0]), float(np.nan_to_num(row["std"].iloc[0]))
            ax.axhline(m, color=color, lw=1, label=control)
            ax.axhspan(m - sd, m + sd, color=color, alpha=0.08)


def band(ax: Axes, x: Sequence[float] | np.ndarray, mean: Sequence[float] | np.ndarray,
         std: Sequence[float] | np.ndarray | None, *, label: str | None, color: str | None = None,
         dashed: bool = False, marker: str | None = "o") -> Line2D:
    """Plot a mean over seeds with a shaded +-std band, so spread is visible next to the trend.

    The band is left out wherever ``std`` is NaN (e.g. a point measured on one seed only).
    """
    x = np.asarray(x, dtype=float)
    mean = np.asarray(mean, dtype=float)
    (line,) = ax.plot(x, mean, label=label, color=color, linestyle="--" if dashed else "-",
                      marker=marker, linewidth=STYLE["lines.linewidth"],
                      markersize=STYLE["lines.markersize"])
    if std is not None:
        std = np.asarray(std, dtype=float)
        if std.shape != mean.shape:
            raise ValueError(f"std has shape {std.shape} but mean has {mean.shape}")
        ok = np.isfinite(std) & np.isfinite(mean)
        if ok.any():
            s = np.where(ok, std, 0.0)
            m = np.where(ok, mean, 0.0)
            ax.fill_between(x, m - s, m + s, where=ok, color=line.get_color(), alpha=0.2,
                            linewidth=0, interpolate=False)
            # a band needs two neighbours; a lone point gets an error bar instead
            padded = np.concatenate([[False], ok, [False]])
            lone = ok & ~padded[:-2] & ~padded[2:]
            if lone.any():
                ax.errorbar(x[lone], mean[lone], yerr=std[lone], fmt="none",
                            ecolor=line.get_color(), alpha=0.5, capsize=2)
    return line


def log_step_axis(ax: Axes, linthresh: float = 1.0) -> None:
    """A log-like step axis that still shows step 0 (linear below ``linthresh``): the early phase
    spans a few steps to thousands, and initialisation is step 0."""
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlabel("step")


def save_figure(fig: Figure, directory: Path, name: str) -> list[Path]:
    """Save ``name.png`` and ``name.svg`` in ``directory`` atomically, then close the figure.

    Returns ``[png, svg]``. Atomic writes mean a report never links a half-written image.
    """
    directory = Path(directory)
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    _restyle_text(fig)
    paths = []
    try:
        for fmt in ("png", "svg"):
            path = directory / f"{name}.{fmt}"
            kwargs: dict[str, Any] = {"format": fmt}
            if fmt == "png":
                kwargs["dpi"] = PNG_DPI
            else:
                kwargs["metadata"] = {"Date": None}  # same figure, same bytes
            with style():
                write_atomic(path, lambda tmp, kw=kwargs: fig.savefig(tmp, **kw))
            paths.append(path)
    finally:
        _close(fig)
    return paths


def _restyle_text(fig: Figure) -> None:
    """Shrink titles and legends made outside ``style()`` to the house sizes.

    ``ax.set_title`` and ``ax.legend`` read rcParams when called, after ``new_figure`` returned;
    only text still at the ambient rcParams size is changed, so an explicit ``fontsize`` wins.
    """
    from matplotlib.font_manager import FontProperties

    def default_pt(key: str) -> float:
        return FontProperties(size=matplotlib.rcParams[key]).get_size_in_points()

    title_pt, legend_pt = default_pt("axes.titlesize"), default_pt("legend.fontsize")
    for ax in fig.axes:
        if abs(ax.title.get_fontsize() - title_pt) < 1e-6:
            ax.title.set_fontsize(STYLE["axes.titlesize"])
        legend = ax.get_legend()
        if legend is not None:
            for text in legend.get_texts():
                if abs(text.get_fontsize() - legend_pt) < 1e-6:
                    text.set_fontsize(STYLE["legend.fontsize"])


def _close(fig: Figure) -> None:
    """Release the figure; only pyplot keeps figures alive, so only ask pyplot if it is loaded."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
