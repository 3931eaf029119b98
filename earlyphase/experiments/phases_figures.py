"""Figures of the learning-phases experiment: reconstruction per layer, transfer against pre-training
steps, and the verdict's figure (the penultimate layer per seed beside transfer). Step axes are
symlog from 0 (step 0 is initialisation) and never extend below it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

NETWORK_STYLE = {"with_bn": "-", "bn_free": "--"}


def step_axis(ax: Axes) -> None:
    """The report's log-like step axis (symlog, step 0 shown), cut at step 0: no negative steps."""
    from ..report import log_step_axis

    log_step_axis(ax)
    ax.set_xlim(left=0)


def _main(phases: pd.DataFrame) -> str:
    return str(phases[~phases.control].network.iloc[0])


def _reconstruction_panel(ax: Axes, curves: pd.DataFrame, phases: pd.DataFrame, network: str) -> None:
    """Every layer's mean reconstruction curve over seeds, over its step-0 value; ▼ per-seed ends of
    phase 1, ★ per-seed minima."""
    from ..report import band

    for layer in dict.fromkeys(curves[curves.network == network].layer):
        c = curves[(curves.network == network) & (curves.layer == layer)].sort_values("step")
        base = c.reconstruction_mse_mean.iloc[0]
        line = band(ax, c.step.values, c.reconstruction_mse_mean.values / base,
                    c.reconstruction_mse_std.values / base, label=layer)
        ph = phases[(phases.network == network) & (phases.layer == layer)]
        y_at = dict(zip(c.step, c.reconstruction_mse_mean / base))
        for steps, marker, size in ((ph.phase1_end, "v", 7), (ph.minimum_step, "*", 9)):
            for s in sorted({int(x) for x in steps if pd.notna(x)}):
                ax.plot([s], [y_at.get(s, np.nan)], marker=marker, color=line.get_color(), ms=size, ls="none")
    ax.set_yscale("log")  # early blocks reconstruct almost perfectly at first: their ratios span decades
    ax.set_ylabel("test reconstruction MSE / its step-0 value")
    ax.set_title(f"{network}: reconstruction per layer (▼ end of phase 1, ★ minimum)")
    ax.legend(fontsize=6)
    step_axis(ax)


def _accuracy_panel(ax: Axes, curves: pd.DataFrame, network: str) -> None:
    from ..report import band

    c = curves[curves.network == network]
    layers = list(dict.fromkeys(c.layer))
    for layer in layers:
        lc = c[c.layer == layer].sort_values("step")
        band(ax, lc.step.values, lc.source_probe_accuracy_mean.values, lc.source_probe_accuracy_std.values,
             label=f"probe {layer}", marker=None)
    lc = c[c.layer == layers[-1]].sort_values("step")
    band(ax, lc.step.values, lc.classifier_accuracy_mean.values, lc.classifier_accuracy_std.values,
         label="classifier", color="black")
    ax.set_ylabel("test accuracy (source task)")
    ax.set_title(f"{network}: linear probes and the classifier")
    ax.legend(fontsize=6)
    step_axis(ax)


def _transfer_panel(ax: Axes, curves: pd.DataFrame, results: pd.DataFrame, main: str) -> None:
    """Target probe (and fine-tuning) accuracy on the penultimate layer and the source classifier's,
    per network; the dotted line is the main network's best stop on the mean curve."""
    from ..report import band

    pen = results[results.penultimate]
    layer, target = str(pen.layer.iloc[0]), str(pen.target.iloc[0])
    for network in dict.fromkeys(curves.network):
        pc = curves[(curves.network == network) & (curves.layer == layer)].sort_values("step")
        dashed = NETWORK_STYLE.get(network) == "--"
        band(ax, pc.step.values, pc.target_probe_accuracy_mean.values, pc.target_probe_accuracy_std.values,
             label=f"{network}: target ({target}) probe on {layer}", color="tab:red" if network == main else "tab:pink",
             dashed=dashed)
        if "target_finetune_accuracy_mean" in pc:
            band(ax, pc.step.values, pc.target_finetune_accuracy_mean.values, pc.target_finetune_accuracy_std.values,
                 label=f"{network}: target fine-tuned", color="tab:orange", dashed=dashed)
        band(ax, pc.step.values, pc.classifier_accuracy_mean.values, pc.classifier_accuracy_std.values,
             label=f"{network}: source classifier", color="black" if network == main else "grey", dashed=dashed)
        if network == main:
            best = int(pc.step.values[int(np.argmax(pc.target_probe_accuracy_mean.values))])
            ax.axvline(best, color="tab:red", ls=":", lw=1, label=f"{main}: best stop (mean), step {best}")
    ax.set_ylabel("test accuracy")
    ax.set_title("Transfer against pre-training steps (mean ± std over seeds)")
    ax.legend(fontsize=6)
    step_axis(ax)


def _penultimate_panel(ax: Axes, results: pd.DataFrame, phases: pd.DataFrame) -> None:
    """The penultimate layer's reconstruction per seed (over its step-0 value), one line each."""
    pen = results[results.penultimate]
    colors = {n: c for n, c in zip(dict.fromkeys(pen.network), ("tab:blue", "tab:green", "tab:purple"))}
    for (network, seed), g in pen.groupby(["network", "seed"], sort=False):
        g = g.sort_values("step")
        y = g.reconstruction_mse.values / g.reconstruction_mse.values[0]
        ph = phases[(phases.network == network) & (phases.seed == seed) & phases.penultimate].iloc[0]
        ax.plot(g.step.values, y, NETWORK_STYLE.get(network, "-"), color=colors[network], lw=1, alpha=0.8,
                label=f"{network} seed {seed}: {'all three' if ph.all_three else 'not all three'}")
        i_min = int(np.argmin(y))
        ax.plot([g.step.values[i_min]], [y[i_min]], marker="*", color=colors[network], ms=8, ls="none")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_ylabel(f"test reconstruction MSE of {pen.layer.iloc[0]} / step 0")
    ax.set_title("Penultimate layer per seed (★ minimum)")
    ax.legend(fontsize=6)
    step_axis(ax)


def draw_figures(tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    from ..report import new_figure, save_figure

    results, phases, curves = tables["results"], tables["phases"], tables["curves"]
    main = _main(phases)
    nets = list(dict.fromkeys(curves.network))
    fig, axes = new_figure(ncols=len(nets) + 1, width=5.2, height=3.8)
    for ax, network in zip(axes, nets):
        _reconstruction_panel(ax, curves, phases, network)
    _accuracy_panel(axes[-1], curves, main)
    paths = save_figure(fig, directory, "reconstruction_phases")
    fig, ax = new_figure(width=6.0, height=3.8)
    _transfer_panel(ax, curves, results, main)
    paths += save_figure(fig, directory, "transfer")
    fig, axes = new_figure(ncols=2, width=5.2, height=3.8)
    _penultimate_panel(axes[0], results, phases)
    _transfer_panel(axes[1], curves, results, main)
    return paths + save_figure(fig, directory, "phases_transfer")
