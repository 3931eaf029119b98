"""Schneider & Prabhushankar's learning phases (see docs/experiments/learning_phases.md). One run per
seed with checkpoints at 0 and powers of two, and beside it the same network without BatchNorm (the
control); at each checkpoint, with BN statistics re-estimated on the training set (or the stored
ones), for each probed layer, the test-set reconstruction MSE of a decoder fit on the training set, a
linear probe's accuracy for the source labels and for a transfer target, and the classifier's own
accuracy and loss; the three phases of each reconstruction curve and the best moment to stop
pre-training for transfer, judged by :mod:`.phases_verdict`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import DataConfig, RunConfig, _check, canonical_json, to_dict
from ..data import load_dataset
from ..errors import UserError
from ..probes.phases import check_tolerances
from ..steps import parse_step, steps_per_epoch
from ..store import Store
from ..store.atomic import write_bytes_atomic
from ..threads import pinned_threads
from ..train.schedules import run_schedule
from .base import Check, ExperimentDef, Plan
from .phases_verdict import learning_phases_check

TARGETS = ("auto", "color_dominance", "energy_half", "labels")
BN_STATS = ("reestimate", "stored")
WITH_BN, BN_FREE = "with_bn", "bn_free"  # the ``network`` column: the network as configured, its BN-free control


@dataclass(frozen=True)
class LearningPhasesConfig:
    run: RunConfig = field(default_factory=RunConfig)  # observe.schedule = "pow2" gives 0 and 2^i
    seeds: int = 3
    layers: tuple[str, ...] = ()  # module names; empty = every block and the penultimate features
    delta: float = 0.02  # phase rules' tolerance, relative: flat start and drop
    rho: float = 0.10  # phase 3: the last loss at least this far (relative) above the minimum
    transfer_std: float = 2.0  # the inverted U's top beats step 0 and the end by more than this many pooled std
    bn_stats: str = "reestimate"  # reestimate (BN statistics on the training set at each checkpoint) | stored
    bn_free_control: bool = True  # also train and probe the network without BatchNorm (where it has BN)
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
        check_tolerances(self.delta, self.rho)
        _check(self.transfer_std > 0, f"transfer_std must be > 0, got {self.transfer_std}")
        _check(self.bn_stats in BN_STATS, f"bn_stats must be 'reestimate' or 'stored', got {self.bn_stats!r}")
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


def seed_run(cfg: LearningPhasesConfig, seed: int, control: bool = False) -> RunConfig:
    """Replicate ``seed`` of the configured network, or (``control``) of its BN-free control."""
    run = cfg.run.replace(seed=seed, data_seed=seed)
    return run.replace(model=replace(run.model, norm="none")) if control else run


def networks(cfg: LearningPhasesConfig, model: torch.nn.Module) -> list[str]:
    """The networks trained: the configured one (named by whether it has BN) and, where it has BN
    and the control is asked for, the BN-free control."""
    from ..models import NORM_FREE
    from ..probes.batchnorm import has_batchnorm

    if not has_batchnorm(model):
        return [BN_FREE]
    if cfg.bn_free_control and cfg.run.model.name not in NORM_FREE:
        raise UserError(f"bn_free_control needs a network that can be built without BatchNorm ({', '.join(NORM_FREE)}), "
                        f"not {cfg.run.model.name!r}; set bn_free_control = false")
    return [WITH_BN, BN_FREE] if cfg.bn_free_control else [WITH_BN]


def probe_steps(run: RunConfig, n_train: int) -> list[int]:
    """The checkpoint steps the probes read; a schedule with fewer than two is a UserError."""
    steps = run_schedule(run, n_train).checkpoints
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


NOT_PROBED = ("run", "seeds", "delta", "rho", "transfer_std", "bn_free_control")  # fields the probe rows do not depend on


def _probe_key(cfg: LearningPhasesConfig, layers: list[str], steps: list[int]) -> str:
    """Cache key of a run's probe rows: every probe setting, bn_stats included, the layers and steps."""
    what = {k: v for k, v in to_dict(cfg).items() if k not in NOT_PROBED}
    return hashlib.sha256(canonical_json({"p": what, "l": layers, "s": steps, "v": 2}).encode()).hexdigest()[:12]


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
    from ..probes.batchnorm import reestimate_bn
    from ..probes.checkpoint_probes import ProbeData, probe_checkpoints

    data = ProbeData(source.x_train, source.x_test, {"source": (source.y_train, source.y_test, source.num_classes),
                                                     "target": target})
    models: dict[int, torch.nn.Module] = {}

    def load(step: int) -> torch.nn.Module:
        if step not in models:
            models.clear()
            models[step] = run.model(step)
            if cfg.bn_stats == "reestimate":
                reestimate_bn(models[step], source.x_train)
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


def phase_table(results: pd.DataFrame, delta: float, rho: float) -> pd.DataFrame:
    from ..probes.phases import detect_phases

    rows = []
    for (network, seed, layer), g in results.groupby(["network", "seed", "layer"], sort=False):
        g = g.sort_values("step")
        ph = detect_phases(g.step.values, g.reconstruction_mse.values, delta, rho)
        rows.append({"network": network, "control": bool(g.control.iloc[0]), "seed": seed, "layer": layer,
                     "penultimate": bool(g.penultimate.iloc[0]), **ph.as_dict()})
    return pd.DataFrame(rows)


def transfer_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per network and seed: the best stop for transfer (the checkpoint whose penultimate-layer target
    probe is most accurate, the earliest on ties) and the step of best source accuracy (the classifier's)."""
    rows = []
    for (network, seed), g in results[results.penultimate].groupby(["network", "seed"], sort=False):
        g = g.sort_values("step")
        t = g.iloc[int(np.argmax(g.target_probe_accuracy.values))]
        s = g.iloc[int(np.argmax(g.classifier_accuracy.values))]
        row = {"network": network, "seed": seed, "best_transfer_step": int(t.step),
               "best_transfer_accuracy": float(t.target_probe_accuracy),
               "step0_transfer_accuracy": float(g.target_probe_accuracy.iloc[0]),
               "final_transfer_accuracy": float(g.target_probe_accuracy.iloc[-1]),
               "source_accuracy_at_best_transfer": float(t.classifier_accuracy),
               "best_source_step": int(s.step), "best_source_accuracy": float(s.classifier_accuracy)}
        if "target_finetune_accuracy" in g:
            f = g.iloc[int(np.argmax(g.target_finetune_accuracy.values))]
            row.update({"best_finetune_step": int(f.step), "best_finetune_accuracy": float(f.target_finetune_accuracy)})
        rows.append(row)
    return pd.DataFrame(rows)


def mean_curves(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof = 1) over seeds per network, layer and step."""
    cols = [c for c in results.columns if c.endswith(("_mse", "_accuracy", "_loss"))]
    agg = results.groupby(["network", "layer", "step"], sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    return agg.reset_index()


def statement(cfg: LearningPhasesConfig, layer: str, network: str, target: str) -> str:
    """The claim judged, from the config: data, network, schedule, δ, ρ and the transfer margin."""
    r, t = cfg.run, cfg.run.train
    net = f"{r.model.name}{'' if network == BN_FREE else ' with BatchNorm'}"
    return (f"On {r.data.name} with {net}, {t.optimizer.upper()} lr {t.lr:g} (momentum {t.momentum:g}, {t.schedule} "
            f"schedule) for {t.steps}, checkpoints at 0 and 2^i: the penultimate layer's ({layer}) reconstruction curve "
            f"shows all three phases (the first two checkpoints within δ = {cfg.delta:g} of step 0, a minimum at "
            f"least δ below step 0 after the end of phase 1, a final rise of at least ρ = {cfg.rho:g} above the "
            f"minimum) for a majority of {cfg.seeds} seeds; and transfer to the {target} target is an inverted "
            f"U: on the mean curve over seeds the best stop is neither the first nor the last checkpoint, beats both "
            f"by more than {cfg.transfer_std:g} pooled std, and comes before the step of best source accuracy.")


class LearningPhases(ExperimentDef):
    name = "learning_phases"
    config_cls = LearningPhasesConfig
    main_figure = "phases_transfer"
    description = ("Learning phases: one run per seed, checkpoints at 0 and powers of two, and the same network "
                   "without BatchNorm as a control. At each checkpoint, in eval mode (BN statistics as set by "
                   "bn_stats), every probed layer's activations are streamed over the training set once; a ridge "
                   "decoder to the normalized input and ridge probes for the source and transfer labels are solved "
                   "in closed form (strength chosen on a held-out 20 % of the training set) and scored on the test "
                   "set. Phases: flat start, drop, rise of at least rho; transfer: an inverted U.")

    def plan(self, cfg: LearningPhasesConfig, store: Store) -> Plan:
        plan = Plan()
        data = load_dataset(cfg.run.data)
        probe_steps(cfg.run, data.n_train)
        target_labels(cfg, data)  # a mismatched target is an error before anything trains
        from ..models import build_model
        from ..probes.activations import resolve_layers

        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg.run.model, data.input_shape, data.out_dim)
        resolve_layers(model, cfg.layers)
        nets = networks(cfg, model)
        for i, net in enumerate(nets):
            for s in range(cfg.seeds):
                plan.add(seed_run(cfg, s, control=i > 0), kind="train", seed=s, network=net, control=i > 0)
        bn = ("BN statistics re-estimated on the training set at every checkpoint before probing"
              if cfg.bn_stats == "reestimate" else "BN statistics as stored in the checkpoints (running averages)")
        plan.notes.append(f"{len(cfg.layers) or 'default'} layers probed; δ = {cfg.delta:g}, ρ = {cfg.rho:g}; decoder "
                          f"{cfg.decoder}, probe {cfg.probe}, target {cfg.target}; networks: {', '.join(nets)}; "
                          f"{bn if WITH_BN in nets else 'no BatchNorm in the network'}")
        return plan

    def analyze(self, cfg: LearningPhasesConfig, plan: Plan, store: Store) -> dict[str, pd.DataFrame]:
        parts = []
        for rid, labels in plan.labels.items():
            df = probe_run(cfg, store, rid, plan.graph.nodes[rid])
            df.insert(0, "seed", labels["seed"])
            df.insert(0, "network", labels["network"])
            df["control"] = labels["control"]
            df["run_id"] = rid
            parts.append(df)
        results = pd.concat(parts, ignore_index=True)
        return {"results": results, "phases": phase_table(results, cfg.delta, cfg.rho),
                "transfer": transfer_table(results), "curves": mean_curves(results)}

    def figures(self, cfg: LearningPhasesConfig, tables: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
        from .phases_figures import draw_figures

        return draw_figures(tables, directory)

    def check(self, cfg: LearningPhasesConfig, tables: dict[str, pd.DataFrame]) -> Check:
        phases = tables["phases"]
        main = str(phases[~phases.control].network.iloc[0])
        layer = str(phases[phases.penultimate].layer.iloc[0])
        bn = {"bn_stats": cfg.bn_stats, "delta": cfg.delta, "rho": cfg.rho}
        target = str(tables["results"].target.iloc[0]) if "results" in tables else cfg.target
        return learning_phases_check(statement(cfg, layer, main, target), tables, main, cfg.transfer_std, bn)
