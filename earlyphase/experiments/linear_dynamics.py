"""docs/experiments/linear_dynamics.md: Hu, Xiao, Adlam & Pennington — early training of a network is that of a linear model of its
inputs. Each trajectory run trains the network with the engine (full-batch gradient descent, square
loss, per-layer learning rates as ``train.lr_scales``) and the ``linear_dynamics`` recorder
(``earlyphase.probes.linear_model``) trains the matching linear model beside it and computes the
empirical NTK at initialization; everything lands in the run's metrics. Why the engine and not a
private simulation: the network's trajectory is then an ordinary run (cached, resumable, queryable)
and the linear model, a function of that run, is one of its observations.

Runs: the main Gaussian run (the laptop setting), optional Gaussian runs with other input
spectra, optional binary image tasks with ``fc_ntk``/``cnn_ntk`` (their linear model from the
least-squares fit of their NTK), and one-step runs that only measure ||Theta - Theta_lin|| / ||Theta_lin||
at initialization across widths and input dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig, RunConfig, _check
from ..data.gaussian import DEFAULT_N_TEST, DEFAULT_N_TRAIN
from ..errors import UserError
from ..probes import linear_model  # noqa: F401  registers the recorder in this process
from ..probes.coefficients import moments
from ..probes.ntk import check_budget
from ..store import Store
from .base import Check, ExperimentDef, Plan

MODES = {"first": (1, 0), "second": (0, 1), "both": (1, 1)}
TRAJ_COLUMNS = ["loss_train", "loss_test", "lin_loss_train", "lin_loss_test", "accuracy_test", "lin_accuracy_test",
                "gap_mse", "gap_rel", "agreement"]


@dataclass(frozen=True)
class LinearDynamicsConfig:
    run: RunConfig = field(default_factory=RunConfig)  # the main run: two_layer on gaussian
    mode: str = "first"  # first | second | both: which layers of two_layer train
    eta1: float = 1.0  # first-layer learning-rate factor (times run.train.lr)
    eta2: float = 1.0  # second-layer factor
    spectra: tuple[str, ...] = ()  # further gaussian runs with these spectra, e.g. "power:1.0"
    spectra_steps: str = ""  # their length ("" = run.train.steps)
    image_data: str = ""  # a binary image task: dataset name ("" = none), e.g. digits, cifar10
    image_classes: tuple[int, ...] = (3, 8)
    image_models: tuple[str, ...] = ("fc_ntk",)
    image_n_train: int | None = None
    image_n_test: int | None = None
    image_lr: float = 1.0
    image_steps: str = ""  # "" = run.train.steps
    sweep_widths: tuple[int, ...] = ()  # spectral gap at initialization against width ...
    sweep_dims: tuple[int, ...] = ()  # ... and against d (one-step runs)
    gap_threshold: float = 0.15  # relative output gap: the check's bound until t_reduction; its first crossing is reported
    spectral_gap_max: float = 0.2  # the check's bound on ||Theta - Theta_lin|| / ||Theta_lin|| at initialization
    reduction: float = 0.9  # t_reduction: when the linear model has made this fraction of its test-loss reduction
    ntk_memory_gb: float = 4.0  # budget for one n x n NTK in float64
    seeds: int = 1

    def __post_init__(self) -> None:
        _check(self.mode in MODES, f"mode must be first, second or both, got {self.mode!r}")
        _check(self.eta1 > 0 and self.eta2 > 0, f"eta1 and eta2 must be > 0, got {self.eta1}, {self.eta2}")
        _check(len(self.image_classes) == 2 and len(set(self.image_classes)) == 2,
               f"image_classes must name exactly two distinct classes for the binary task, got {list(self.image_classes)}")
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.ntk_memory_gb > 0, f"ntk_memory_gb must be > 0, got {self.ntk_memory_gb}")
        _check(self.gap_threshold > 0 and self.spectral_gap_max > 0,
               f"gap_threshold and spectral_gap_max must be > 0, got {self.gap_threshold}, {self.spectral_gap_max}")
        _check(0.0 < self.reduction <= 1.0, f"reduction must be in (0, 1], got {self.reduction}")
        _check(all(w >= 2 and w % 2 == 0 for w in self.sweep_widths),
               f"sweep_widths must be even widths >= 2 (symmetric initialization), got {list(self.sweep_widths)}")


def _observed(cfg: RunConfig) -> RunConfig:
    obs = replace(cfg.observe, recorders=tuple(sorted({*cfg.observe.recorders, "linear_dynamics"})),
                  checkpoints=tuple(sorted({*cfg.observe.checkpoints, "0it"})), eval_train=True)
    return cfg.replace(observe=obs)


def main_run(cfg: LinearDynamicsConfig, seed: int = 0) -> RunConfig:
    base = cfg.run.replace(seed=seed, data_seed=seed)
    if base.model.name == "two_layer":
        f1, f2 = MODES[cfg.mode]
        base = base.replace(train=replace(base.train, lr_scales=(f1 * cfg.eta1, f2 * cfg.eta2)))
    return _observed(base)


def image_run(cfg: LinearDynamicsConfig, model: str, seed: int = 0) -> RunConfig:
    base = main_run(cfg, seed)
    data = replace(DataConfig(), name=cfg.image_data, classes=tuple(cfg.image_classes), targets="pm1", normalize=True,
                   sphere=True, n_train=cfg.image_n_train, n_test=cfg.image_n_test, root=base.data.root)
    train = replace(base.train, lr=cfg.image_lr, lr_scales=(), steps=cfg.image_steps or base.train.steps)
    return base.replace(data=data, model=replace(base.model, name=model), train=train)


def probe_run(cfg: LinearDynamicsConfig, *, width: int | None = None, dim: int | None = None) -> RunConfig:
    """One step: what is measured is the NTK at initialization."""
    base = main_run(cfg)
    model = replace(base.model, width=width or base.model.width)
    data = replace(base.data, dim=dim or base.data.dim)
    obs = replace(base.observe, eval_every="", eval_dense_until="", eval_train=False, checkpoints=("0it",))
    return base.replace(model=model, data=data, train=replace(base.train, steps="1it"), observe=obs)


def _n_train(run: RunConfig) -> int | None:
    if run.data.n_train is not None:
        return run.data.n_train
    return DEFAULT_N_TRAIN if run.data.name == "gaussian" else None


class LinearDynamics(ExperimentDef):
    name = "linear_dynamics"
    config_cls = LinearDynamicsConfig
    main_figure = "gap"
    description = ("Linear dynamics (docs/experiments/linear_dynamics.md): a network and the linear model with the matching kernel, trained side "
                   "by side by full-batch gradient descent on the square loss; their losses, the gap between their "
                   "test outputs, and the empirical NTK at initialization against the linear model's kernel.")

    def plan(self, cfg: LinearDynamicsConfig, store: Store) -> Plan:
        plan = Plan()
        budget = int(cfg.ntk_memory_gb * 2**30)
        if cfg.run.model.name == "two_layer":
            moments(cfg.run.model.activation)  # an unknown activation fails here, before any run starts
        for seed in range(cfg.seeds):
            main = main_run(cfg, seed)
            plan.add(main, kind="main", variant=main.data.spectrum, seed=seed)
            for spectrum in cfg.spectra:
                run = main.replace(data=replace(main.data, spectrum=spectrum),
                                   train=replace(main.train, steps=cfg.spectra_steps or main.train.steps))
                plan.add(run, kind="spectrum", variant=spectrum, seed=seed)
            if cfg.image_data:
                for model in cfg.image_models:
                    plan.add(image_run(cfg, model, seed), kind="image",
                             variant=f"{cfg.image_data}{list(cfg.image_classes)} {model}", seed=seed)
        for width in cfg.sweep_widths:
            plan.add(probe_run(cfg, width=width), kind="sweep_width", variant=str(width), seed=0)
        for dim in cfg.sweep_dims:
            plan.add(probe_run(cfg, dim=dim), kind="sweep_dim", variant=str(dim), seed=0)
        for rid, run in plan.graph.nodes.items():
            n = _n_train(run)
            if n is not None:
                check_budget(n, budget_bytes=budget, hint="lower the run's data.n_train or raise ntk_memory_gb")
        return plan

    def analyze(self, cfg: LinearDynamicsConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        traj, ntk, outs = [], [], []
        for rid, labels in plan.labels.items():
            run = plan.graph.nodes[rid]
            m = store.run(rid).metrics()
            info = {"run_id": rid, **labels, "model": run.model.name, "width": run.model.width, "dim": run.data.dim}
            once = m[m.name.isin(["ntk_gap", "ntk_norm", "ntk_lin_norm", "ntk_fit_residual", "ntk_seconds"])]
            row = {**info, **dict(zip(once.name, once.value))}
            coef = m[m.name == "lin_coef"]
            row.update({f"coef_{k}": v for k, v in zip(coef.layer, coef.value)})
            ntk.append(row)
            if labels["kind"].startswith("sweep"):
                continue
            wide = m[m.name.isin(["loss", "accuracy", "lin_loss", "lin_accuracy", "gap_mse", "gap_rel", "agreement"])]
            t = wide.pivot_table(index="step", columns=["name", "split"], values="value")
            t.columns = [f"{a}_{b}" if a in ("loss", "accuracy", "lin_loss", "lin_accuracy") else a for a, b in t.columns]
            t = t.reset_index()
            for k, v in info.items():
                t[k] = v
            traj.append(t)
            if labels["kind"] == "main" and labels["seed"] == 0:
                o = m[m.name.isin(["out_net", "out_lin"])]
                o = o[o.step.isin(scatter_steps(sorted(o.step.unique())))]
                o = o.pivot_table(index=["step", "layer"], columns="name", values="value").reset_index()
                outs.append(o.rename(columns={"layer": "index"}))
        results = pd.concat(traj, ignore_index=True) if traj else pd.DataFrame()
        ntk_t = pd.DataFrame(ntk)
        summary = pd.DataFrame([summarize(g, cfg.gap_threshold, cfg.reduction) | {"run_id": rid, "kind": g.kind.iloc[0],
                                                                    "variant": g.variant.iloc[0], "seed": g.seed.iloc[0]}
                                for rid, g in results.groupby("run_id", sort=False)]) if len(results) else pd.DataFrame()
        if len(summary):
            summary = summary.merge(ntk_t[["run_id", "ntk_gap", "ntk_fit_residual"]], on="run_id", how="left")
        return {"results": results, "summary": summary, "ntk": ntk_t,
                "outputs": pd.concat(outs, ignore_index=True) if outs else pd.DataFrame()}

    def figures(self, cfg: LinearDynamicsConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        res, summary, ntk, outs = tables["results"], tables["summary"], tables["ntk"], tables["outputs"]
        paths: list[Path] = []
        groups = [(rid, g) for rid, g in res.groupby("run_id", sort=False) if g.seed.iloc[0] == 0]
        if groups:
            paths += _trajectory_figures(cfg, groups, summary, directory)
        return paths + _output_and_sweep_figures(outs, ntk, directory)

    def check(self, cfg: LinearDynamicsConfig, tables: dict[str, pd.DataFrame]) -> Check:
        return linear_dynamics_check(cfg, tables["summary"])


def _label(g: pd.DataFrame) -> str:
    return g.variant.iloc[0] if g.kind.iloc[0] == "image" else f"{g.variant.iloc[0]} ({g.model.iloc[0]})"


def _trajectory_figures(cfg: LinearDynamicsConfig, groups: list, summary: pd.DataFrame, directory: Path) -> list[Path]:
    """``losses``: network and linear model per run; ``gap`` (the main figure): the relative and absolute
    output gaps, the threshold and the steps where the linear model has made ``reduction`` of its progress."""
    from ..report import new_figure, save_figure

    fig, axes = new_figure(ncols=len(groups), width=4.6, height=3.4)
    for ax, (rid, g) in zip(np.atleast_1d(axes), groups):
        g = g[g.step > 0]
        for col, label, style in (("loss_train", "network train", "-"), ("loss_test", "network test", "-"),
                                  ("lin_loss_train", "linear train", "--"), ("lin_loss_test", "linear test", "--")):
            ax.plot(g.step, g[col], style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("square loss")
        ax.set_title(_label(g))
        ax.legend()
    paths = save_figure(fig, directory, "losses")
    fig, axes = new_figure(ncols=2, width=4.6, height=3.4)
    for rid, g in groups:
        g = g[g.step > 0]
        axes[0].plot(g.step, g.gap_rel, label=_label(g))
        axes[1].plot(g.step, g.gap_mse, label=_label(g))
    axes[0].axhline(cfg.gap_threshold, color="grey", ls=":", label=f"threshold {cfg.gap_threshold}")
    for _, s in summary[summary.seed == 0].iterrows():
        if np.isfinite(s.t_reduction):
            axes[0].axvline(s.t_reduction, color="grey", ls="--", lw=0.7)
    axes[0].set_title(f"RMS(f_net − f_lin) / RMS(f_lin) on test (dashed: {100 * cfg.reduction:g} % of the "
                      "linear model's test-loss reduction)")
    axes[1].set_title("mean squared gap of test outputs")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend()
    return paths + save_figure(fig, directory, "gap")


def _output_and_sweep_figures(outs: pd.DataFrame, ntk: pd.DataFrame, directory: Path) -> list[Path]:
    """``outputs_scatter``: network against linear outputs at a few steps; ``spectral_gap``: the gap at
    initialization against width and d."""
    from ..report import new_figure, save_figure

    paths: list[Path] = []
    if len(outs):
        pick = [s for s in sorted(outs.step.unique()) if s > 0]
        fig, axes = new_figure(ncols=max(1, len(pick)), width=3.2, height=3.2)
        for ax, s in zip(np.atleast_1d(axes), pick):
            o = outs[outs.step == s]
            ax.scatter(o.out_lin, o.out_net, s=4, alpha=0.6)
            lo, hi = float(min(o.out_lin.min(), o.out_net.min())), float(max(o.out_lin.max(), o.out_net.max()))
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
            ax.set_xlabel("linear model output")
            ax.set_ylabel("network output")
            ax.set_title(f"step {int(s)}")
        paths += save_figure(fig, directory, "outputs_scatter")
    sweeps = [(k, col) for k, col in (("sweep_width", "width"), ("sweep_dim", "dim")) if (ntk.kind == k).any()]
    if sweeps:
        fig, axes = new_figure(ncols=len(sweeps), width=4.2, height=3.2)
        for ax, (kind, col) in zip(np.atleast_1d(axes), sweeps):
            s = ntk[ntk.kind == kind].sort_values(col)
            ax.plot(s[col], s.ntk_gap, marker="o")
            ax.set_xscale("log")
            ax.set_xlabel("width m" if col == "width" else "input dimension d")
            ax.set_ylabel("‖Θ − Θ_lin‖ / ‖Θ_lin‖")
            ax.set_title(f"spectral gap at initialization against {col}")
        paths += save_figure(fig, directory, "spectral_gap")
    return paths


def statement(cfg: LinearDynamicsConfig) -> str:
    """The claim, from the config it judges: the setting and the three thresholds."""
    r = cfg.run
    n_train = r.data.n_train or (DEFAULT_N_TRAIN if r.data.name == "gaussian" else "all")
    n_test = r.data.n_test or (DEFAULT_N_TEST if r.data.name == "gaussian" else "all")
    batch = "full-batch gradient descent" if r.train.full_batch else f"SGD with batch {r.train.batch_size}"
    return (f"{r.model.name} {r.model.activation}, d = {r.data.dim}, m = {r.model.width}, n = {n_train} train and "
            f"{n_test} test {r.data.name} samples, {cfg.mode}-layer mode, learning rate {r.train.lr:g}, "
            f"{r.train.steps} of {batch}: the relative spectral gap ||Theta - Theta_lin|| / ||Theta_lin|| is "
            f"below {cfg.spectral_gap_max:g} at initialization; the relative output gap on the test set (RMS of "
            f"f_net - f_lin over RMS of f_lin) stays below {cfg.gap_threshold:g} until the linear model has made "
            f"{100 * cfg.reduction:g} % of its eventual test-loss reduction; later the network's test loss goes "
            f"below the linear model's.")


CLAUSES = ("spectral_gap_ok", "output_gap_ok", "network_overtakes")
SUMMARY_COLUMNS = ["seed", "ntk_gap", "t_reduction", "max_gap_rel_to_t_reduction", "net_below_lin_step",
                   "threshold_step", "final_loss_test", "final_lin_loss_test", *CLAUSES]


def _clauses(cfg: LinearDynamicsConfig, main: pd.DataFrame) -> pd.DataFrame:
    main = main.sort_values("seed").copy()
    main["spectral_gap_ok"] = main.ntk_gap < cfg.spectral_gap_max
    main["output_gap_ok"] = main.max_gap_rel_to_t_reduction < cfg.gap_threshold  # NaN: False
    main["network_overtakes"] = main.net_below_lin_step >= 0
    return main


def _meaning(cfg: LinearDynamicsConfig, main: pd.DataFrame, passed: bool) -> str:
    if passed:
        return ("The network's early training is that of the linear model: their kernels nearly agree at "
                "initialization, their test outputs stay close until the linear model has done most of its "
                "learning, and only then does the network pull ahead (it learns what the linear model cannot).")
    why = []
    if not main.spectral_gap_ok.all():
        why.append(f"the spectral gap at initialization reaches {main.ntk_gap.max():.3f} (bound {cfg.spectral_gap_max:g})")
    if not main.output_gap_ok.all():
        why.append(f"the output gap reaches {main.max_gap_rel_to_t_reduction.max():.3f} before the linear model's "
                   f"{100 * cfg.reduction:g} % point (bound {cfg.gap_threshold:g})")
    if not main.network_overtakes.all():
        why.append("the network's test loss never goes below the linear model's after that point")
    return "The claim does not hold here: " + "; ".join(why) + "."


def linear_dynamics_check(cfg: LinearDynamicsConfig, summary: pd.DataFrame) -> Check:
    """Every seed's main run must meet all three clauses."""
    main = summary[summary.kind == "main"]
    if not len(main):
        raise UserError("linear_dynamics has no main run to check")
    main = _clauses(cfg, main)
    passed = bool(main[list(CLAUSES)].all(axis=None))
    r = main.iloc[0]
    numbers = {"seeds": len(main), "ntk_gap_at_init": float(r.ntk_gap), "reduction_step": int(r.t_reduction),
               "max_gap_rel_until_reduction_step": float(r.max_gap_rel_to_t_reduction),
               "net_test_loss_below_linear_from_step": int(r.net_below_lin_step),
               f"gap_rel_exceeds_{cfg.gap_threshold}_at_step": int(r.threshold_step),
               "final_test_loss_network": float(r.final_loss_test), "final_test_loss_linear": float(r.final_lin_loss_test),
               "ntk_fit_residual_offdiag": float(r.ntk_fit_residual), "final_agreement": float(r.final_agreement),
               "spectral_gap_max": cfg.spectral_gap_max, "gap_threshold": cfg.gap_threshold, "reduction": cfg.reduction}
    measured = "; ".join(
        f"seed {int(x.seed)}: spectral gap {x.ntk_gap:.3f} at initialization; the linear model reaches "
        f"{100 * cfg.reduction:g} % of its test-loss reduction at step {int(x.t_reduction)}, by when the output gap "
        f"peaks at {x.max_gap_rel_to_t_reduction:.3f}; the network's test loss goes below the linear model's "
        + (f"from step {int(x.net_below_lin_step)}" if x.net_below_lin_step >= 0 else "never")
        + f" (final test loss {x.final_loss_test:.4f} against {x.final_lin_loss_test:.4f})" for x in main.itertuples()) + "."
    return Check(statement(cfg), passed, numbers, measured=measured, meaning=_meaning(cfg, main, passed),
                 tables={"main_runs": main[SUMMARY_COLUMNS].reset_index(drop=True)})


def scatter_steps(steps: list[int]) -> list[int]:
    """Step 0 (both outputs exactly 0) and four recorded steps spread over the run on a log scale."""
    pos = [s for s in steps if s > 0]
    if not pos:
        return list(steps)
    logs = np.log(pos)
    want = [logs[0] + q * (logs[-1] - logs[0]) for q in (0.25, 0.5, 0.75, 1.0)]
    return sorted({0, *(pos[int(np.argmin(np.abs(logs - w)))] for w in want)} & {*steps, 0})


def summarize(g: pd.DataFrame, threshold: float, reduction: float = 0.9) -> dict:
    """The numbers of one trajectory run (docs/experiments/linear_dynamics.md): t_reduction, the first
    step where the linear model has made ``reduction`` of its eventual (last-step) test-loss reduction;
    the largest relative output gap up to it; the first step from it on where the network's test loss
    is below the linear model's; the first crossing of ``threshold``. Steps are -1 where the event never
    happens."""
    g = g.sort_values("step")
    lin = g.lin_loss_test.to_numpy()
    steps = g.step.to_numpy()
    drop = lin[0] - lin[-1]
    reached = np.nonzero(lin[0] - lin >= reduction * drop)[0] if drop > 0 else np.array([len(lin) - 1])
    i_red = int(reached[0])
    early = g[(g.step > 0) & (g.step <= steps[i_red])]
    later = g[(g.step >= steps[i_red]) & (g.loss_test < g.lin_loss_test)]
    over = g[(g.step > 0) & (g.gap_rel > threshold)]
    return {"t_reduction": int(steps[i_red]),
            "max_gap_rel_to_t_reduction": float(early.gap_rel.max()) if len(early) else float("nan"),
            "net_below_lin_step": int(later.step.iloc[0]) if len(later) else -1,
            "threshold_step": int(over.step.iloc[0]) if len(over) else -1,
            "final_loss_test": float(g.loss_test.iloc[-1]), "final_lin_loss_test": float(lin[-1]),
            "final_agreement": float(g.agreement.iloc[-1])}
