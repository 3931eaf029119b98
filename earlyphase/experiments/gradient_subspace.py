"""The gradient subspace (Gur-Ari, Roberts & Dyer 2018): after a few steps the gradient lies mostly in
the span of the top-K Hessian eigenvectors (K = number of classes). At checkpoints 0, powers of two
and the learning-rate drops of dense runs: the top-K eigenpairs of the training loss on a fixed
training subset by Lanczos on Hessian-vector products, the fraction of the subset gradient's squared
norm inside their span, the top eigenvalues, and the overlap with the subspace at the first drop.
See docs/experiments/gradient_subspace.md."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from ..config import RunConfig, _check, to_dict
from ..data import Dataset, load_dataset
from ..devices import analysis_device
from ..errors import UserError
from ..models import build_model
from ..probes.batchnorm import has_batchnorm, reestimate_bn
from ..probes.hessian import LossFunction, SOLVERS, subspace_fraction, subspace_overlap, top_eigenpairs
from ..store import Store
from ..threads import pinned_threads
from ..train.schedules import pow2_schedule
from .base import Check, ExperimentDef, Plan
from .common import cache_key, cached_table, iterations, model_at


@dataclass(frozen=True)
class GradientSubspaceConfig:
    run: RunConfig = field(default_factory=RunConfig)  # the dense run (the rewinding experiment's, same id)
    seeds: int = 2
    subset: int = 2000  # training samples the loss is taken over (a fixed random subset)
    subset_seed: int = 0
    k: int = 0  # eigenpairs; 0 = the number of classes
    solver: str = "lanczos"  # lanczos (ours, full reorthogonalization) | eigsh (scipy ARPACK)
    tol: float = 1e-3  # Ritz residual relative to the top eigenvalue
    max_iter: int = 300  # Hessian-vector products per checkpoint at most
    chunk: int = 2000  # samples per forward pass of a Hessian-vector product
    hvp_mode: str = "fwd_rev"  # fwd_rev (jvp over grad) | rev_rev (grad of grad . v)
    bn: str = "reestimate"  # BatchNorm nets, in eval mode: reestimate (on the subset) | stored (running stats)
    min_fraction: float = 0.5  # the check: fraction above this at every checkpoint before the first drop ...
    min_ratio: float = 100.0  # ... and at least this many times the random fraction K / parameters

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.subset >= 1, f"subset must be >= 1, got {self.subset}")
        _check(self.k >= 0, f"k must be >= 0 (0 = the number of classes), got {self.k}")
        _check(self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        _check(0 < self.tol < 1, f"tol must be in (0, 1), got {self.tol}")
        _check(self.max_iter >= 2 and self.chunk >= 1, "max_iter must be >= 2 and chunk >= 1")
        _check(self.hvp_mode in ("fwd_rev", "rev_rev"),
               f"hvp_mode must be 'fwd_rev' or 'rev_rev', got {self.hvp_mode!r}")
        _check(self.bn in ("reestimate", "stored"), f"bn must be 'reestimate' or 'stored', got {self.bn!r}")


@dataclass
class SubspacePlan(Plan):
    steps: list[int] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)
    k: int = 0
    params: int = 0


def dense_run(cfg: GradientSubspaceConfig, seed: int) -> RunConfig:
    """The dense run of ``seed`` with checkpoints at 0, 2^i and the milestones added (observe only)."""
    base = cfg.run.replace(seed=seed, data_seed=seed)
    schedule = "+".join(sorted({*base.observe.schedule.split("+"), "pow2"} - {"none"}))
    checkpoints = tuple(sorted(set(base.observe.checkpoints) | set(base.train.milestones)))
    return base.replace(observe=replace(base.observe, schedule=schedule, checkpoints=checkpoints))


class GradientSubspace(ExperimentDef):
    name = "gradient_subspace"
    config_cls = GradientSubspaceConfig
    main_figure = "gradient_subspace"
    description = ("The gradient subspace (Gur-Ari, Roberts & Dyer 2018): top-K eigenpairs of the training-loss "
                   "Hessian on a fixed training subset (K = number of classes) by Lanczos on Hessian-vector "
                   "products (torch.func), at checkpoints 0, 2^i and the learning-rate drops of the dense runs; "
                   "the fraction of the subset gradient's squared norm in their span against the random "
                   "fraction K / parameters; the top eigenvalues; the overlap ||P_t P_drop||_F^2 / K with the "
                   "subspace at the first drop. The loss is the cross-entropy without the weight-decay term; "
                   "BatchNorm nets run in eval mode with statistics re-estimated on the subset (option: stored).")

    def plan(self, cfg: GradientSubspaceConfig, store: Store) -> SubspacePlan:
        drops, total = iterations(cfg.run, cfg.run.train.milestones, "run.train.milestones")
        data = load_dataset(cfg.run.data)
        if cfg.subset > data.n_train:
            raise UserError(f"subset = {cfg.subset} but the training set has {data.n_train} samples; lower subset")
        params = sum(p.numel() for p in build_model(cfg.run.model, data.input_shape, data.out_dim).parameters())
        k = cfg.k or data.num_classes
        if k >= params:
            raise UserError(f"k = {k} eigenpairs asked for but {cfg.run.model.name} has {params} parameters; "
                            f"ask for fewer than {params} (k = 0 means the number of classes)")
        plan = SubspacePlan(steps=sorted(set(pow2_schedule(total)) | set(drops.values())),
                            drops=sorted(drops.values()), k=k, params=params)
        for s in range(cfg.seeds):
            plan.add(dense_run(cfg, s), kind="dense", seed=s)
        plan.notes.append(f"K = {k} of {params} parameters (random fraction {k / params:.2e}); BatchNorm: {cfg.bn}.")
        return plan

    def analyze(self, cfg: GradientSubspaceConfig, plan: SubspacePlan, store: Store) -> dict[str, pd.DataFrame]:
        frames = [probe_run(cfg, plan, store, rid, labels["seed"]) for rid, labels in plan.labels.items()]
        df = pd.concat(frames, ignore_index=True)
        lam = [c for c in df.columns if c.startswith("lambda_")]
        eig = df.melt(id_vars=["seed", "step"], value_vars=lam, var_name="index", value_name="eigenvalue")
        eig["index"] = eig["index"].str.removeprefix("lambda_").astype(int)
        results = df.drop(columns=lam[1:]).rename(columns={"lambda_1": "top_eigenvalue"})
        results["random_fraction"] = plan.k / plan.params
        results["first_drop"] = plan.drops[0] if plan.drops else -1
        results["lr_drop"] = results.step.isin(plan.drops)
        return {"results": results.sort_values(["seed", "step"]).reset_index(drop=True),
                "eigenvalues": eig.sort_values(["seed", "step", "index"]).reset_index(drop=True)}

    def figures(self, cfg: GradientSubspaceConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        return draw(tables, directory)

    def check(self, cfg: GradientSubspaceConfig, tables: dict[str, pd.DataFrame]) -> Check:
        return judge(cfg, tables["results"])


# ----------------------------------------------------------------------------------------------
# measurement


def probe_run(cfg: GradientSubspaceConfig, plan: SubspacePlan, store: Store, rid: str, seed: int) -> pd.DataFrame:
    """Rows per checkpoint of one run (cached beside it: ``subspace-<key>.csv``)."""
    what = {k: v for k, v in to_dict(cfg).items() if k not in ("run", "seeds", "min_fraction", "min_ratio")}
    key = cache_key({"cfg": what, "k": plan.k, "steps": plan.steps, "drops": plan.drops, "v": 1})
    rcfg = plan.graph.nodes[rid]
    with pinned_threads(rcfg.observe.threads):
        df = cached_table(store.run(rid).path / f"subspace-{key}.csv",
                          lambda: _measure(cfg, plan, store, rid, rcfg))
    df.insert(0, "seed", seed)
    return df


def _subset(cfg: GradientSubspaceConfig, data: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(cfg.subset_seed))[:cfg.subset]
    return data.x_train[idx].to(device), data.y_train[idx].to(device)


def _measure(cfg: GradientSubspaceConfig, plan: SubspacePlan, store: Store, rid: str, rcfg: RunConfig) -> pd.DataFrame:
    device = analysis_device(rcfg.observe.device)
    data = load_dataset(rcfg.data)
    x, y = _subset(cfg, data, device)
    ref_step = plan.drops[0] if plan.drops else plan.steps[-1]
    ref, rows = None, []
    for step in [ref_step, *(s for s in plan.steps if s != ref_step)]:
        model = model_at(store, rid, rcfg, step, data).to(device)
        if cfg.bn == "reestimate" and has_batchnorm(model):
            reestimate_bn(model, x).eval()
        lf = LossFunction(model, x, y, loss=rcfg.train.loss, chunk=cfg.chunk, mode=cfg.hvp_mode)
        g = lf.gradient()
        pairs = top_eigenpairs(lf.hvp, lf.dim, plan.k, solver=cfg.solver, tol=cfg.tol, max_iter=cfg.max_iter,
                               seed=cfg.subset_seed)
        ref = pairs.vectors if ref is None else ref
        rows.append({"step": step, "fraction": subspace_fraction(g, pairs.vectors),
                     "overlap": subspace_overlap(pairs.vectors, ref), "grad_norm": float(g.norm()),
                     "loss": lf.value(), "matvecs": pairs.matvecs, "converged": pairs.converged,
                     **{f"lambda_{i + 1}": float(v) for i, v in enumerate(pairs.values)}})
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# verdict and figure


def judge(cfg: GradientSubspaceConfig, results: pd.DataFrame) -> Check:
    drop = int(results.first_drop.iloc[0])
    random = float(results.random_fraction.iloc[0])
    before = results[results.step < drop] if drop >= 0 else results
    where = f"every checkpoint before the first learning-rate drop (step {drop})" if drop >= 0 else "every checkpoint"
    statement = (f"At {where} of every seed ({results.seed.nunique()} seeds), the top-K Hessian subspace holds more "
                 f"than {cfg.min_fraction:g} of the gradient's squared norm, and at least {cfg.min_ratio:g} times "
                 f"the fraction a random K-dimensional subspace holds (K / parameters = {random:.2e}).")
    if before.empty:
        return Check(statement, None, {"first_drop": drop, "random_fraction": random, "checkpoints_judged": 0},
                     measured=f"No checkpoint lies before the first learning-rate drop (step {drop}).",
                     meaning="No verdict: the claim is about the steps before the first drop, and there are none.")
    worst = before.loc[before.fraction.idxmin()]
    lowest = float(worst.fraction)
    passed = bool(lowest > cfg.min_fraction and lowest >= cfg.min_ratio * random)
    after = results[results.step >= drop] if drop >= 0 else results.iloc[0:0]
    numbers = {"min_fraction_before_drop": lowest, "at_step": int(worst.step), "at_seed": int(worst.seed),
               "random_fraction": random, "ratio_to_random": lowest / random, "first_drop": drop,
               "mean_fraction_before_drop": float(before.fraction.mean()),
               "mean_fraction_after_drop": float(after.fraction.mean()) if len(after) else None,
               "checkpoints_judged": int(len(before)), "min_fraction": cfg.min_fraction, "min_ratio": cfg.min_ratio,
               "unconverged_eigensolves": int((~results.converged.astype(bool)).sum())}
    after_text = "none" if len(after) == 0 else f"{numbers['mean_fraction_after_drop']:.3f}"
    measured = (f"Over {len(before)} checkpoints before step {drop}, the gradient fraction in the top-K subspace "
                f"was at least {lowest:.3f} (seed {int(worst.seed)}, step {int(worst.step)}; mean "
                f"{numbers['mean_fraction_before_drop']:.3f}), {lowest / random:.0f} times the random fraction "
                f"{random:.2e}; after the drop its mean was {after_text}.")
    meaning = ("PASS: before the first drop gradient descent moves mostly inside the tiny top-K Hessian subspace, as "
               "Gur-Ari et al. report." if passed else
               "FAIL: at some checkpoint before the first drop the top-K subspace holds too little of the gradient "
               "for the claim that gradient descent happens in a tiny subspace.")
    cols = ["seed", "step", "fraction", "random_fraction", "overlap", "top_eigenvalue", "grad_norm"]
    return Check(statement, passed, numbers, measured=measured, meaning=meaning,
                 tables={"before_first_drop": before[cols].reset_index(drop=True)})


def draw(tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    from ..report import band, log_step_axis, new_figure, save_figure

    res, eig = tables["results"], tables["eigenvalues"]
    fig, axes = new_figure(ncols=3, width=4.2, height=3.6)
    stats = res.groupby("step").agg(f=("fraction", "mean"), fs=("fraction", "std"), o=("overlap", "mean"),
                                    os=("overlap", "std")).reset_index()
    band(axes[0], stats.step, stats.f, stats.fs, label="top-K subspace")
    axes[0].axhline(float(res.random_fraction.iloc[0]), color="grey", ls="--", lw=1, label="random K-dim subspace")
    axes[0].set_yscale("log")
    axes[0].set_title("fraction of |g|² in the top-K Hessian subspace")
    top = eig.groupby(["step", "index"]).eigenvalue.mean().reset_index()
    for i, g in top.groupby("index"):
        axes[1].plot(g.step, g.eigenvalue, lw=1.6 if i == 1 else 0.7, label="λ1" if i == 1 else None,
                     color="black" if i == 1 else None)
    axes[1].set_yscale("symlog", linthresh=1e-2)
    axes[1].set_title(f"top {int(eig['index'].max())} Hessian eigenvalues (mean over seeds)")
    band(axes[2], stats.step, stats.o, stats.os, label="overlap")
    axes[2].set_title("overlap ‖P_t P_drop‖²_F / K with the first drop's subspace")
    drops = sorted(set(int(v) for v in res[res.lr_drop.astype(bool)].step))
    for ax in axes:
        log_step_axis(ax)
        ax.set_xlim(left=0)
        for i, d in enumerate(drops):
            ax.axvline(d, color="tab:red", ls=":", lw=1, label="lr drops" if i == 0 else None)
        ax.legend(fontsize=6)
    return save_figure(fig, directory, "gradient_subspace")


__all__ = ["GradientSubspace", "GradientSubspaceConfig", "judge"]
