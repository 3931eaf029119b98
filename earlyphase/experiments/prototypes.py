"""The synthetic model of the learning phases (see docs/experiments/prototypes.md): class prototypes,
a fraction of atypical samples weakly aligned with theirs, a single-layer softmax network, and the
input reconstructed from its outputs by the closed-form ridge decoder. Over a small grid of the
atypical fraction and alignment, which of the three phases the reconstruction curve shows: a finding
(``"pass": null``), never tuned to show them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig, RunConfig, _check
from ..data import load_dataset
from ..errors import UserError
from ..probes.phases import check_tolerances, detect_phases
from ..store import Store
from ..threads import pinned_threads
from .base import Check, ExperimentDef, Plan
from .learning_phases import probe_steps

GRID = ["fraction", "alignment"]


@dataclass(frozen=True)
class PrototypesConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(data=DataConfig(name="prototypes")))  # a single-layer network
    seeds: int = 1
    fractions: tuple[float, ...] = (0.05, 0.10)  # data.atypical: fraction of atypical samples
    alignments: tuple[float, ...] = (0.1, 0.2, 0.4)  # data.atypical_alignment: prototype weight in an atypical sample
    delta: float = 0.02  # phase rule: flat start and drop (relative)
    rho: float = 0.10  # phase rule: the final rise above the minimum (relative)
    holdout: float = 0.2  # of the training set, to choose the ridge strength

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(len(self.fractions) >= 1 and all(0.0 < f < 1.0 for f in self.fractions),
               f"fractions must be atypical fractions in (0, 1), got {list(self.fractions)}")
        _check(len(self.alignments) >= 1 and all(a >= 0.0 for a in self.alignments),
               f"alignments must be prototype weights >= 0, got {list(self.alignments)}")
        _check(len(set(self.fractions)) == len(self.fractions) and len(set(self.alignments)) == len(self.alignments),
               "fractions and alignments must not repeat a value")
        check_tolerances(self.delta, self.rho)
        _check(0.0 <= self.holdout < 1.0, f"holdout must be in [0, 1), got {self.holdout}")
        _check(self.run.data.name == "prototypes",
               f"the prototypes experiment needs run.data.name = 'prototypes', got {self.run.data.name!r}")


def grid_run(cfg: PrototypesConfig, fraction: float, alignment: float, seed: int) -> RunConfig:
    data = replace(cfg.run.data, atypical=fraction, atypical_alignment=alignment)
    return cfg.run.replace(data=data, seed=seed, data_seed=seed)


def probe_curve(store: Store, rid: str, rcfg: RunConfig, holdout: float) -> pd.DataFrame:
    """Per checkpoint: the test MSE of the ridge decoder from the network's outputs to its input, a
    ridge probe's accuracy on the outputs, and the network's own test accuracy."""
    from ..probes.checkpoint_probes import ProbeData, probe_checkpoints
    from ..stored_run import Run

    run = Run(store.run(rid))
    data = load_dataset(rcfg.data)
    steps = [s for s in probe_steps(rcfg, data.n_train) if s in run.checkpoint_steps()]
    model0 = run.model(0)
    probe = ProbeData(data.x_train, data.x_test, {"source": (data.y_train, data.y_test, data.num_classes)})
    with pinned_threads(rcfg.observe.threads):
        rows = probe_checkpoints(run.model, steps, [model0.output_layer], probe, holdout=holdout)
    df = pd.DataFrame(rows)
    m = run.metrics()
    acc = m[(m.name == "accuracy") & (m.split == "test") & (m.layer == "")].set_index("step").value
    df["classifier_accuracy"] = df.step.map(acc)
    return df


def phase_rows(results: pd.DataFrame, delta: float, rho: float) -> pd.DataFrame:
    """The phase rule per grid point and seed, with which phases appear: 1 = a flat start, 2 = a drop
    of at least δ after the end of phase 1, 3 = a rise of at least ρ after the minimum."""
    rows = []
    for (f, a, seed), g in results.groupby([*GRID, "seed"], sort=False):
        g = g.sort_values("step")
        ph = detect_phases(g.step.values, g.reconstruction_mse.values, delta, rho)
        shown = [ph.flat_start, ph.drops and ph.minimum_after_phase1, ph.rises and ph.minimum_before_end]
        rows.append({"fraction": f, "alignment": a, "seed": seed, **ph.as_dict(),
                     "phases_shown": "+".join(str(i + 1) for i, ok in enumerate(shown) if ok) or "none"})
    return pd.DataFrame(rows)


def grid_table(phases: pd.DataFrame) -> pd.DataFrame:
    """Per grid point: how many seeds show each phase and all three, and the mean drop and rise."""
    g = phases.groupby(GRID, sort=False)
    out = g.agg(seeds=("seed", "count"), flat_start=("flat_start", "sum"), drops=("drops", "sum"),
                rises=("rises", "sum"), all_three=("all_three", "sum"), drop=("drop", "mean"), rise=("rise", "mean"),
                minimum_step=("minimum_step", "median"))
    return out.reset_index()


def statement(cfg: PrototypesConfig) -> str:
    r = cfg.run
    init = f"W0 ~ N(0, {r.model.init_std:g}²)" if r.model.init_std > 0 else f"Kaiming {r.model.init_mode} init"
    return (f"Finding: prototypes data ({r.data.num_classes} classes, d = {r.data.dim}, "
            f"{r.data.n_train or 'default'} training samples), a single-layer softmax network ({init}), "
            f"{r.train.optimizer.upper()} lr {r.train.lr:g} batch {r.train.batch_size} for {r.train.steps}: for "
            f"atypical fractions {list(cfg.fractions)} and alignments {list(cfg.alignments)} ({cfg.seeds} seed(s) "
            f"each), which of the three phases the reconstruction of the input from the network's outputs shows "
            f"(flat start within δ = {cfg.delta:g} over the first two checkpoints, a drop of at least δ, a final "
            f"rise of at least ρ = {cfg.rho:g} above the minimum).")


class Prototypes(ExperimentDef):
    name = "prototypes"
    config_cls = PrototypesConfig
    main_figure = "reconstruction_grid"
    description = ("Prototypes: the learning phases' synthetic model. A single-layer softmax network on class "
                   "prototypes with a fraction of atypical, weakly aligned samples; at checkpoints 0 and 2^i the "
                   "input is reconstructed from the network's outputs by a closed-form ridge decoder, and the "
                   "phase rule is applied at each point of a grid of atypical fraction x alignment. A finding.")

    def plan(self, cfg: PrototypesConfig, store: Store) -> Plan:
        plan = Plan()
        probe_steps(cfg.run, load_dataset(cfg.run.data).n_train)
        if cfg.run.model.name != "mlp" or cfg.run.model.widths:
            raise UserError("the prototypes experiment studies a single-layer softmax network: set "
                            f"run.model.name = 'mlp' and run.model.widths = [] (got {cfg.run.model.name!r}, "
                            f"widths {list(cfg.run.model.widths)})")
        for f in cfg.fractions:
            for a in cfg.alignments:
                for s in range(cfg.seeds):
                    plan.add(grid_run(cfg, f, a, s), fraction=f, alignment=a, seed=s)
        plan.notes.append(f"grid: fractions {list(cfg.fractions)} x alignments {list(cfg.alignments)}, "
                          f"{cfg.seeds} seed(s); δ = {cfg.delta:g}, ρ = {cfg.rho:g}")
        return plan

    def analyze(self, cfg: PrototypesConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        parts = []
        for rid, labels in plan.labels.items():
            df = probe_curve(store, rid, plan.graph.nodes[rid], cfg.holdout)
            for i, key in enumerate(("fraction", "alignment", "seed")):
                df.insert(i, key, labels[key])
            df["run_id"] = rid
            parts.append(df)
        results = pd.concat(parts, ignore_index=True)
        phases = phase_rows(results, cfg.delta, cfg.rho)
        return {"results": results, "phases": phases, "grid": grid_table(phases)}

    def figures(self, cfg: PrototypesConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import new_figure, save_figure
        from .phases_figures import step_axis

        res = tables["results"]
        fig, axes = new_figure(ncols=len(cfg.fractions), width=4.6, height=3.6)
        for ax, f in zip(np.atleast_1d(axes), cfg.fractions):
            for a in cfg.alignments:
                for seed, g in res[(res.fraction == f) & (res.alignment == a)].groupby("seed"):
                    g = g.sort_values("step")
                    ax.plot(g.step, g.reconstruction_mse / g.reconstruction_mse.iloc[0], marker="o", ms=3,
                            label=f"alignment {a:g}" + (f", seed {seed}" if cfg.seeds > 1 else ""))
            ax.axhline(1.0, color="grey", lw=0.6)
            ax.set_ylabel("test reconstruction MSE from the outputs / step 0")
            ax.set_title(f"{100 * f:g} % atypical samples")
            ax.legend(fontsize=6)
            step_axis(ax)
        return save_figure(fig, directory, "reconstruction_grid")

    def check(self, cfg: PrototypesConfig, tables: dict[str, pd.DataFrame]) -> Check:
        phases, grid = tables["phases"], tables["grid"]
        per_point = [f"{100 * r.fraction:g} % atypical, alignment {r.alignment:g}: all three in {int(r.all_three)} "
                     f"of {int(r.seeds)} (flat start {int(r.flat_start)}, drop {int(r.drops)}, rise {int(r.rises)}; "
                     f"mean drop {100 * r.drop:.1f} %, rise {100 * r.rise:.1f} %, minimum near step "
                     f"{int(r.minimum_step)})" for r in grid.itertuples()]
        full = grid[grid.all_three > grid.seeds / 2]
        where = ", ".join(f"({100 * r.fraction:g} %, {r.alignment:g})" for r in full.itertuples())
        meaning = (f"All three phases appear for a majority of seeds at {where}; " if len(full) else
                   "At no grid point do all three phases appear for a majority of seeds; ")
        meaning += ("the grid says where (in atypical fraction and alignment) this synthetic model reproduces the "
                    "paper's mechanism with this training; nothing was tuned, so points without phase 3 mean the "
                    "atypical samples did not pull the outputs away from the prototypes by ρ within the run.")
        numbers = {"grid": grid.to_dict("records"), "delta": cfg.delta, "rho": cfg.rho,
                   "grid_points_with_all_three": [[float(r.fraction), float(r.alignment)] for r in full.itertuples()]}
        cols = ["fraction", "alignment", "seed", "phase1_end", "minimum_step", "drop", "rise", "flat_start", "drops",
                "rises", "all_three", "phases_shown"]
        return Check(statement(cfg), None, numbers, measured="; ".join(per_point) + ".", meaning=meaning,
                     tables={"grid": grid, "phases": phases[cols]})
