"""SPEC §4: Schneider & Prabhushankar's learning phases. One run per seed with checkpoints at 0 and
powers of two; at each checkpoint, for each probed layer, the test-set reconstruction MSE of a
decoder fit on the training set, a linear probe's accuracy for the source labels and for a transfer
target, and the classifier's own accuracy and loss; the three phases of each reconstruction curve
(SPEC §4.2) and the best moment to stop pre-training for transfer (SPEC §4.3)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import DataConfig, RunConfig, _check, canonical_json, to_dict
from ..data import load_dataset
from ..errors import UserError
from ..steps import parse_step, steps_per_epoch
from ..store import Store
from ..store.atomic import write_bytes_atomic
from ..threads import pinned_threads
from ..train.schedules import checkpoint_steps
from .base import Check, ExperimentDef, Plan

STATEMENT = ("On the embedded data with a conv net, the penultimate layer's reconstruction curve shows all three "
             "phases for a majority of seeds, and the best transfer stop comes before the step of best source "
             "accuracy.")
TARGETS = ("auto", "color_dominance", "energy_half", "labels")


@dataclass(frozen=True)
class LearningPhasesConfig:
    run: RunConfig = field(default_factory=RunConfig)  # observe.schedule = "pow2" gives 0 and 2^i
    seeds: int = 3
    layers: tuple[str, ...] = ()  # module names; empty = every block and the penultimate features
    delta: float = 0.02  # phase rules' tolerance, relative (SPEC §4.2)
    holdout: float = 0.2  # of the training set, to choose the ridge strength
    chunk: int = 1000  # images per streamed forward pass
    decoder: str = "ridge"  # ridge (closed form) | adam_linear | conv (the paper code's, 20 epochs of Adam)
    probe: str = "ridge"  # ridge (closed form) | lbfgs (softmax regression) | sgd (the paper code's)
    target: str = "auto"  # auto | color_dominance | energy_half | labels (another dataset's labels)
    target_data: DataConfig | None = None  # target = "labels": a dataset with the same images
    finetune_steps: str = ""  # "" = off; else fine-tune the whole network this long at every checkpoint
    finetune_lr: float = 0.002

    def __post_init__(self) -> None:
        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(0.0 <= self.delta < 1.0, f"delta must be in [0, 1), got {self.delta}")
        _check(0.0 <= self.holdout < 1.0, f"holdout must be in [0, 1), got {self.holdout}")
        _check(self.chunk >= 1, f"chunk must be >= 1, got {self.chunk}")
        _check(self.decoder in ("ridge", "adam_linear", "conv"),
               f"decoder must be 'ridge', 'adam_linear' or 'conv', got {self.decoder!r}")
        _check(self.probe in ("ridge", "lbfgs", "sgd"), f"probe must be 'ridge', 'lbfgs' or 'sgd', got {self.probe!r}")
        _check(self.target in TARGETS, f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        _check(self.target != "labels" or self.target_data is not None,
               "target = 'labels' needs a [target_data] table naming the dataset whose labels to predict")
        if self.finetune_steps:
            parse_step(self.finetune_steps)
        _check(self.finetune_lr > 0, f"finetune_lr must be > 0, got {self.finetune_lr}")


# ----------------------------------------------------------------------------------------------
# plan


def seed_run(cfg: LearningPhasesConfig, seed: int) -> RunConfig:
    return cfg.run.replace(seed=seed, data_seed=seed)


def probe_steps(run: RunConfig, n_train: int) -> list[int]:
    """The checkpoint steps the probes read; a schedule with fewer than two is a UserError."""
    spe = steps_per_epoch(n_train, n_train if run.train.full_batch else run.train.batch_size)
    total = parse_step(run.train.steps).to_iterations(spe)
    steps = checkpoint_steps(run.observe.checkpoints, run.observe.schedule, total, spe)
    if len(steps) < 2 or (run.observe.schedule == "none" and not run.observe.checkpoints):
        raise UserError(f"the checkpoint schedule has no steps to probe (run.observe.schedule = "
                        f"{run.observe.schedule!r}, run.observe.checkpoints = {list(run.observe.checkpoints)}); "
                        "set run.observe.schedule = \"pow2\" or list run.observe.checkpoints")
    return steps


# ----------------------------------------------------------------------------------------------
# what the probes read


def target_labels(cfg: LearningPhasesConfig, source) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """The transfer target's train and test labels for the source's images, its class count and name."""
    data_cfg = cfg.run.data
    task = cfg.target
    if task == "auto":
        task = "energy_half" if source.x_train.dim() < 4 or source.x_train.shape[1] == 1 else "color_dominance"
    if task in ("color_dominance", "energy_half"):
        if data_cfg.task != "classify":
            raise UserError(f"target {task!r} relabels the source images, which needs run.data.task = 'classify', "
                            f"got {data_cfg.task!r}")
        t = load_dataset(replace(data_cfg, task=task, label_noise=0.0, targets="index"))
        return t.y_train, t.y_test, t.num_classes, task
    t = load_dataset(cfg.target_data)
    same = (t.x_train.shape == source.x_train.shape and t.x_test.shape == source.x_test.shape
            and torch.equal(t.x_train, source.x_train) and torch.equal(t.x_test, source.x_test))
    if not same:
        raise UserError(f"target_data ({cfg.target_data.name}, {t.n_train} train / {t.x_test.shape[0]} test images "
                        f"of shape {tuple(t.x_train.shape[1:])}) does not label the source images "
                        f"({data_cfg.name}, {source.n_train} / {source.x_test.shape[0]} of shape "
                        f"{tuple(source.x_train.shape[1:])}); its labels must be for the same images in the same order")
    if t.y_train.is_floating_point():
        raise UserError("target_data must have class labels (data.targets = 'index')")
    return t.y_train, t.y_test, t.num_classes, f"labels:{cfg.target_data.name}"


def _probe_key(cfg: LearningPhasesConfig, layers: list[str], steps: list[int]) -> str:
    what = {k: v for k, v in to_dict(cfg).items() if k not in ("run", "seeds", "delta")}
    return hashlib.sha256(canonical_json({"p": what, "l": layers, "s": steps, "v": 1}).encode()).hexdigest()[:12]


def probe_run(cfg: LearningPhasesConfig, store: Store, rid: str, rcfg: RunConfig) -> pd.DataFrame:
    """Probe rows of one stored run (cached beside the run: ``probes-<key>.csv``). ``rcfg`` is the
    run's full config (the stored spec keeps only the hashed part, not the checkpoint schedule)."""
    from ..probes.activations import resolve_layers
    from ..stored_run import Run

    run = Run(store.run(rid))
    source = load_dataset(rcfg.data)
    y_tr, y_te, k, target_name = target_labels(cfg, source)
    model0 = run.model(0)
    layers = resolve_layers(model0, cfg.layers)
    penultimate = getattr(model0, "penultimate", None)
    if penultimate and penultimate not in layers:
        layers.append(penultimate)
    steps = [s for s in probe_steps(rcfg, source.n_train) if s in run.checkpoint_steps()]
    cache = store.run(rid).path / f"probes-{_probe_key(cfg, layers, steps)}.csv"
    if cache.is_file():
        return pd.read_csv(cache, keep_default_na=False, na_values=[""])
    with pinned_threads(rcfg.observe.threads):
        df = _probe(cfg, run, rcfg, source, (y_tr, y_te, k), layers, steps)
    df["target"] = target_name
    df["penultimate"] = df.layer == penultimate
    write_bytes_atomic(cache, df.to_csv(index=False).encode())
    return df


def _probe(cfg: LearningPhasesConfig, run, rcfg: RunConfig, source, target, layers: list[str], steps: list[int]) -> pd.DataFrame:
    from ..probes.checkpoint_probes import ProbeData, probe_checkpoints

    data = ProbeData(source.x_train, source.x_test, {"source": (source.y_train, source.y_test, source.num_classes),
                                                     "target": target})
    models: dict[int, torch.nn.Module] = {}

    def load(step: int) -> torch.nn.Module:
        if step not in models:
            models.clear()
            models[step] = run.model(step)
        return models[step]

    df = pd.DataFrame(probe_checkpoints(load, steps, layers, data, holdout=cfg.holdout, chunk=cfg.chunk))
    if cfg.decoder != "ridge" or cfg.probe != "ridge":
        _iterative(cfg, load, steps, layers, data, df)
    if cfg.finetune_steps:
        from ..probes.linear_probe import fine_tune

        spe = steps_per_epoch(source.n_train, rcfg.train.batch_size)
        budget = parse_step(cfg.finetune_steps).to_iterations(spe)
        acc = {s: fine_tune(load(s), source.x_train, target[0], source.x_test, target[1], target[2], steps=budget,
                            lr=cfg.finetune_lr, batch=rcfg.train.batch_size) for s in steps}
        df["target_finetune_accuracy"] = df.step.map(acc)
    m = run.metrics()
    for name in ("accuracy", "loss"):
        curve = m[(m.name == name) & (m.split == "test") & (m.layer == "")].set_index("step").value
        df[f"classifier_{name}"] = df.step.map(curve)
    return df


def _iterative(cfg: LearningPhasesConfig, load, steps, layers, data, df: pd.DataFrame) -> None:
    """The optional iterative decoders and probes, one layer at a time on activations in memory."""
    from ..probes.activations import collect
    from ..probes.linear_probe import lbfgs_probe, sgd_probe
    from ..probes.reconstruction import adam_linear_decoder, conv_decoder

    for step in steps:
        model = load(step)
        for layer in layers:
            acts = collect(model, data.x_train, [layer], cfg.chunk)[layer]
            acts_te = collect(model, data.x_test, [layer], cfg.chunk)[layer]
            row = (df.step == step) & (df.layer == layer)
            if cfg.decoder != "ridge":
                if cfg.decoder == "adam_linear":
                    res = adam_linear_decoder(acts, data.x_train, acts_te, data.x_test)
                else:
                    with torch.no_grad():
                        shape = tuple(_layer_output(model, layer, data.x_train[:1]).shape[1:])
                    res = conv_decoder(acts, data.x_train, acts_te, data.x_test, shape)
                df.loc[row, "reconstruction_mse"] = res.test_mse
            if cfg.probe != "ridge":
                fn = lbfgs_probe if cfg.probe == "lbfgs" else sgd_probe
                for name, (y_tr, y_te, k) in data.labels.items():
                    df.loc[row, f"{name}_probe_accuracy"] = fn(acts, y_tr, acts_te, y_te, k)


def _layer_output(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    got = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.setdefault("o", o))
    try:
        model.eval()
        model(x)
    finally:
        h.remove()
    return got["o"]


# ----------------------------------------------------------------------------------------------
# tables


def phase_table(results: pd.DataFrame, delta: float) -> pd.DataFrame:
    from ..probes.phases import detect_phases

    rows = []
    for (seed, layer), g in results.groupby(["seed", "layer"], sort=False):
        g = g.sort_values("step")
        ph = detect_phases(g.step.values, g.reconstruction_mse.values, delta)
        rows.append({"seed": seed, "layer": layer, "penultimate": bool(g.penultimate.iloc[0]), **ph.as_dict()})
    return pd.DataFrame(rows)


def transfer_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per seed: the best stop for transfer (the checkpoint whose penultimate-layer target probe is
    most accurate, the earliest on ties) and the step of best source accuracy (the classifier's)."""
    rows = []
    for seed, g in results[results.penultimate].groupby("seed"):
        g = g.sort_values("step")
        t = g.iloc[int(np.argmax(g.target_probe_accuracy.values))]
        s = g.iloc[int(np.argmax(g.classifier_accuracy.values))]
        row = {"seed": seed, "best_transfer_step": int(t.step), "best_transfer_accuracy": float(t.target_probe_accuracy),
               "source_accuracy_at_best_transfer": float(t.classifier_accuracy),
               "final_transfer_accuracy": float(g.target_probe_accuracy.iloc[-1]),
               "best_source_step": int(s.step), "best_source_accuracy": float(s.classifier_accuracy)}
        if "target_finetune_accuracy" in g:
            f = g.iloc[int(np.argmax(g.target_finetune_accuracy.values))]
            row.update({"best_finetune_step": int(f.step), "best_finetune_accuracy": float(f.target_finetune_accuracy)})
        rows.append(row)
    return pd.DataFrame(rows)


def mean_curves(results: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in results.columns if c.endswith(("_mse", "_accuracy", "_loss"))]
    agg = results.groupby(["layer", "step"], sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    return agg.reset_index()


class LearningPhases(ExperimentDef):
    name = "learning_phases"
    config_cls = LearningPhasesConfig
    description = ("Learning phases (SPEC §4): one run per seed, checkpoints at 0 and powers of two. At each "
                   "checkpoint, in eval mode, every probed layer's activations are streamed over the training "
                   "set once; a ridge decoder to the normalized input and ridge probes for the source and "
                   "transfer labels are solved in closed form (strength chosen on a held-out 20 % of the "
                   "training set) and scored on the test set. Phases by SPEC §4.2; best transfer stop by §4.3.")

    def plan(self, cfg: LearningPhasesConfig, store: Store) -> Plan:
        plan = Plan()
        data = load_dataset(cfg.run.data)
        probe_steps(cfg.run, data.n_train)
        target_labels(cfg, data)  # a mismatched target is an error before anything trains
        from ..models import build_model
        from ..probes.activations import resolve_layers

        with torch.random.fork_rng(devices=[]):
            resolve_layers(build_model(cfg.run.model, data.input_shape, data.out_dim), cfg.layers)
        for s in range(cfg.seeds):
            plan.add(seed_run(cfg, s), kind="train", seed=s)
        plan.notes.append(f"{len(cfg.layers) or 'default'} layers probed; δ = {cfg.delta:g}; decoder {cfg.decoder}, "
                          f"probe {cfg.probe}, target {cfg.target}")
        return plan

    def analyze(self, cfg: LearningPhasesConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        parts = []
        for rid, labels in plan.labels.items():
            df = probe_run(cfg, store, rid, plan.graph.nodes[rid])
            df.insert(0, "seed", labels["seed"])
            df["run_id"] = rid
            parts.append(df)
        results = pd.concat(parts, ignore_index=True)
        return {"results": results, "phases": phase_table(results, cfg.delta), "transfer": transfer_table(results),
                "curves": mean_curves(results)}

    def figures(self, cfg: LearningPhasesConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from ..report import band, log_step_axis, new_figure, save_figure

        results, phases, curves, transfer = tables["results"], tables["phases"], tables["curves"], tables["transfer"]
        layers = list(dict.fromkeys(results.layer))
        fig, axes = new_figure(ncols=2, width=5.2, height=3.8)
        ax = axes[0]
        for layer in layers:
            c = curves[curves.layer == layer].sort_values("step")
            base = c.reconstruction_mse_mean.iloc[0]
            line = band(ax, c.step.values, c.reconstruction_mse_mean.values / base,
                        c.reconstruction_mse_std.values / base, label=layer)
            ph = phases[phases.layer == layer]
            ends = [s for s in ph.phase1_end if pd.notna(s)]
            y_at = dict(zip(c.step, c.reconstruction_mse_mean / base))
            for s in sorted(set(ends)):
                ax.plot([s], [y_at.get(s, np.nan)], marker="v", color=line.get_color(), ms=7, ls="none")
            for s in sorted(set(ph.minimum_step)):
                ax.plot([s], [y_at.get(s, np.nan)], marker="*", color=line.get_color(), ms=9, ls="none")
        ax.set_ylabel("test reconstruction MSE / its step-0 value")
        ax.set_title(f"Reconstruction per layer ({results.seed.nunique()} seeds; ▼ end of phase 1, ★ minimum)")
        ax.legend(fontsize=6)
        ax = axes[1]
        for layer in layers:
            c = curves[curves.layer == layer].sort_values("step")
            band(ax, c.step.values, c.source_probe_accuracy_mean.values, c.source_probe_accuracy_std.values,
                 label=f"probe {layer}", marker=None)
        c = curves[curves.layer == layers[-1]].sort_values("step")
        band(ax, c.step.values, c.classifier_accuracy_mean.values, c.classifier_accuracy_std.values,
             label="classifier", color="black")
        ax.set_ylabel("test accuracy (source task)")
        ax.set_title("Linear probes and the classifier")
        ax.legend(fontsize=6)
        for a in axes:
            log_step_axis(a)
        paths = save_figure(fig, directory, "reconstruction_phases")

        fig, ax = new_figure(width=6.0, height=3.8)
        pen = results[results.penultimate]
        pc = curves[curves.layer == pen.layer.iloc[0]].sort_values("step")
        band(ax, pc.step.values, pc.target_probe_accuracy_mean.values, pc.target_probe_accuracy_std.values,
             label=f"target ({pen.target.iloc[0]}): linear probe on {pen.layer.iloc[0]}", color="tab:red")
        if "target_finetune_accuracy_mean" in pc:
            band(ax, pc.step.values, pc.target_finetune_accuracy_mean.values, pc.target_finetune_accuracy_std.values,
                 label="target: fine-tuned", color="tab:orange", dashed=True)
        band(ax, pc.step.values, pc.classifier_accuracy_mean.values, pc.classifier_accuracy_std.values,
             label="source: classifier", color="black")
        best = int(pc.step.values[int(np.argmax(pc.target_probe_accuracy_mean.values))])
        ax.axvline(best, color="tab:red", ls=":", lw=1, label=f"best stop (mean): step {best}")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Transfer against pre-training steps (per-seed best stops: "
                     f"{', '.join(map(str, transfer.best_transfer_step))})")
        ax.legend(fontsize=6)
        log_step_axis(ax)
        return paths + save_figure(fig, directory, "transfer")

    def check(self, cfg: LearningPhasesConfig, tables: dict[str, pd.DataFrame]) -> Check:
        phases, transfer, curves = tables["phases"], tables["transfer"], tables["curves"]
        pen = phases[phases.penultimate].sort_values("seed")
        n_three = int(pen.all_three.sum())
        majority = n_three > len(pen) / 2
        layer = pen.layer.iloc[0]
        pc = curves[curves.layer == layer].sort_values("step")
        best_stop = int(pc.step.values[int(np.argmax(pc.target_probe_accuracy_mean.values))])
        best_source = int(pc.step.values[int(np.argmax(pc.classifier_accuracy_mean.values))])
        before = best_stop < best_source
        numbers = {
            "penultimate_layer": layer, "seeds": len(pen), "seeds_with_all_three_phases": n_three,
            "best_transfer_step_mean_curve": best_stop, "best_source_step_mean_curve": best_source,
            "per_seed": {int(r.seed): {"phase1_end": None if pd.isna(r.phase1_end) else int(r.phase1_end),
                                       "minimum_step": int(r.minimum_step), "all_three": bool(r.all_three),
                                       "drop": round(float(r.drop), 4), "rise": round(float(r.rise), 4)}
                         for r in pen.itertuples()},
            "per_seed_transfer": {int(r.seed): {"best_transfer_step": int(r.best_transfer_step),
                                                "best_transfer_accuracy": round(float(r.best_transfer_accuracy), 4),
                                                "best_source_step": int(r.best_source_step),
                                                "best_source_accuracy": round(float(r.best_source_accuracy), 4)}
                                  for r in transfer.itertuples()},
            "delta": cfg.delta,
        }
        return Check(STATEMENT, bool(majority and before), numbers)
