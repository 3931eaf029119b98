"""Run an experiment: resolve its config, plan, execute (finding stored runs), analyze, draw, report,
check. ``earlyphase run`` and ``earlyphase.run`` both come here."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import _merge, apply_overrides, canonical_json, check_names, from_dict, preset_path, read_toml, to_dict
from ..devices import analysis_on
from ..errors import UserError
from ..registry import EXPERIMENT_REGISTRY
from ..store import Store
from ..store.atomic import remove_stale_temporaries, write_bytes_atomic, write_json_atomic
from ..store.runs import exclusive
from ..train.work import WORK
from .base import Check, ExperimentDef, Plan


class RunsFailed(Exception):
    """Some runs of the plan failed: the experiment cannot be analysed until they are retried."""


# The package's experiment modules in demo order; each defines one ExperimentDef subclass.
MODULES = ("rewinding", "rewinding_robustness", "early_stats", "perturbations", "pretraining", "linear_dynamics",
           "learning_phases", "prototypes", "instability", "gradient_subspace", "critical_period", "timeline")


def register_experiment(definition: type[ExperimentDef] | ExperimentDef) -> ExperimentDef:
    """Make ``earlyphase run NAME`` run an ExperimentDef (a subclass, or an instance of one) under its
    ``name``; its presets are found like the package's (docs/plugins.md)."""
    exp = definition() if isinstance(definition, type) else definition
    if not isinstance(exp, ExperimentDef) or not getattr(exp, "name", ""):
        raise UserError(f"register_experiment needs an ExperimentDef subclass with a name, got {definition!r}")
    return EXPERIMENT_REGISTRY.register(exp.name, exp)


def _register_builtins() -> None:
    import importlib

    for module in MODULES:
        mod = importlib.import_module(f"{__package__}.{module}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, ExperimentDef) and obj.__module__ == mod.__name__:
                register_experiment(obj)


def registry() -> dict[str, ExperimentDef]:
    """Every registered experiment by name: the package's in demo order, then the plug-ins'."""
    return {e.name: e.value for e in EXPERIMENT_REGISTRY.entries()}


def get_experiment(name: str) -> ExperimentDef:
    return EXPERIMENT_REGISTRY.get(name).value


def load_experiment_config(exp: ExperimentDef, *, preset: str = "laptop", config: str | Path | dict | None = None,
                           overrides: list[str] | tuple[str, ...] = (), **fields: Any) -> Any:
    """Preset TOML, then a config file, then ``--set`` overrides, then keyword fields.
    The ``run`` table is laid over the train preset named by ``run_preset`` (default: the same preset)."""
    data = read_toml(preset_path(exp.name, preset))
    if isinstance(config, dict):
        data = _merge(data, config)
    elif config is not None:
        data = _merge(data, read_toml(config))
    data = apply_overrides(data, overrides)
    for key, value in fields.items():
        if value is not None:
            data[key] = value
    run_preset = data.pop("run_preset", preset)
    data["run"] = _merge(read_toml(preset_path("train", run_preset)), data.get("run", {}))
    cfg = from_dict(exp.config_cls, data)
    check_names(cfg)
    return cfg


def experiment_id(cfg: Any) -> str:
    return hashlib.sha256(canonical_json(to_dict(cfg, hashed_only=True)).encode()).hexdigest()[:12]


@dataclass
class Experiment:
    """A finished experiment: its tables (``results`` first), check, figures and report."""

    name: str
    path: Path
    config: Any
    tables: dict[str, pd.DataFrame]
    check: dict
    figures: list[Path] = field(default_factory=list)

    @property
    def results(self) -> pd.DataFrame:
        return self.tables["results"]

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def main_figure(self) -> Path | None:
        """The PNG shown beside the verdict on index.html: the experiment's named main figure, else
        its first."""
        pngs = [f for f in self.figures if f.suffix == ".png"]
        named = [f for f in pngs if f.stem == getattr(get_experiment(self.name), "main_figure", "")]
        return (named or pngs or [None])[0]

    def __repr__(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "finding"}[self.check.get("pass")]
        return f"Experiment({self.name}, {verdict}, path={str(self.path)!r})"

    def _repr_html_(self) -> str:
        """In a notebook: the verdict, the key numbers and the main figure."""
        from ..report.notebook import experiment_html

        return experiment_html(self.name, self.check, self.main_figure, self.report_path)


def estimate_seconds(plan: Plan, store: Store, workers: int) -> tuple[float, int]:
    """Seconds for the runs not yet stored, from a 20-step timing of the first pending run's setup."""
    from ..data import load_dataset
    from ..train.schedules import run_schedule
    from .timing import seconds_per_step

    pending = [rid for rid in plan.graph if not _done(store, rid)]
    if not pending:
        return 0.0, 0
    steps = 0
    per_step: dict[str, float] = {}
    for rid in pending:
        cfg = plan.graph.nodes[rid]
        rs = run_schedule(cfg)
        steps += rs.total - rs.start
        key = canonical_json({"d": to_dict(cfg.data), "m": to_dict(cfg.model), "b": cfg.train.batch_size})
        if key not in per_step:
            per_step[key] = seconds_per_step(cfg, load_dataset(cfg.data))
    return steps * (sum(per_step.values()) / len(per_step)) / max(1, workers), len(pending)


def _done(store: Store, rid: str) -> bool:
    rd = store.run(rid)
    return rd.exists() and rd.status()["status"] == "done"


def run_experiment(name: str, *, preset: str = "laptop", config: str | Path | dict | None = None,
                   overrides: list[str] | tuple[str, ...] = (), store: str | Path | Store | None = None,
                   executor: str = "local", workers: int = 1, address: str | None = None, dry_run: bool = False,
                   retry_failed: bool = False, progress: bool = True, log=None, options=None,
                   **fields: Any) -> Experiment | None:
    """``options``: how the runs are executed (execute.ExecOptions: device, determinism, batched runs)."""
    t0 = time.time()
    log = log or sys.stderr
    exp = get_experiment(name)
    cfg = load_experiment_config(exp, preset=preset, config=config, overrides=overrides, **fields)
    from ..execute import make_executor

    runner = make_executor(executor, workers=workers, address=address, progress=progress, options=options)
    st = store if isinstance(store, Store) else Store(store)
    plan = exp.plan(cfg, st)
    runner.check(plan.graph, st)  # bad input (e.g. a model workers cannot import) before anything is written
    directory = st.root / "experiments" / f"{name}-{experiment_id(cfg)}"
    if dry_run:
        seconds, pending = estimate_seconds(plan, st, workers)
        print(f"{name}: {len(plan.graph)} runs, {len(plan.graph) - pending} already stored, {pending} to train; "
              f"estimated {seconds / 60:.1f} min with {workers} worker(s)", file=log)
        return None
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "config.json", {"experiment": name, "preset": preset, "config": to_dict(cfg)})
    write_json_atomic(directory / "runs.json", sorted(plan.graph))
    stored = sum(_done(st, rid) for rid in plan.graph)
    print(f"{name}: {len(plan.graph)} runs ({stored} already stored) with {executor} executor, {workers} worker(s)",
          file=log)
    report = runner.run(plan.graph, st, retry_failed=retry_failed, work=WORK)
    if not report.ok:
        first = next(iter(report.failed.items()), (None, None))
        raise RunsFailed(f"{len(report.failed)} runs failed and {len(report.blocked)} could not start"
                         f" (first: {first[0]}: {first[1]}); fix the cause and run again with --retry-failed")
    with analysis_on(options.device if options is not None else None):
        return finish(exp, cfg, plan, st, directory, preset=preset, started=t0)


def finish(exp: ExperimentDef, cfg: Any, plan: Plan, store: Store, directory: Path, *, preset: str,
           started: float | None = None, prior_wall: float = 0.0) -> Experiment:
    """Analyze the stored runs, then write tables, figures, check.json and report.html, each file
    atomically, under the experiment directory's lock (two identical commands write one at a time,
    and a writer killed earlier leaves temporaries that are removed here). The wall time recorded
    runs from ``started`` (training and analysis), or is the ``prior_wall`` of a redraw."""
    tables = exp.analyze(cfg, plan, store)
    wall_seconds = time.time() - started if started is not None else prior_wall
    with exclusive(directory / ".lock"):
        remove_stale_temporaries(directory)
        return _write_results(exp, cfg, plan, directory, tables, preset=preset, wall_seconds=wall_seconds)


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    write_bytes_atomic(path, table.to_csv(index=False).encode())


def _write_results(exp: ExperimentDef, cfg: Any, plan: Plan, directory: Path, tables: dict[str, pd.DataFrame], *,
                   preset: str, wall_seconds: float) -> Experiment:
    from ..report import write_check, write_report

    for tname, table in tables.items():
        _write_csv(directory / f"{tname}.csv", table)
    figures = exp.figures(cfg, tables, directory)
    chk: Check = exp.check(cfg, tables)
    write_check(directory, experiment=exp.name, statement=chk.statement, passed=chk.passed, numbers=chk.numbers,
                wall_seconds=round(wall_seconds, 2), measured=chk.measured, meaning=chk.meaning)
    for tname, table in chk.tables.items():
        _write_csv(directory / f"check-{tname}.csv", table)
    check = json.loads((directory / "check.json").read_text())
    write_report(directory, title=f"{exp.name} ({preset} preset)", check=check,
                 figures=[f for f in figures if f.suffix == ".png"], tables=tables,
                 configs={"experiment": to_dict(cfg)}, notes=[exp.description, *plan.notes],
                 wall_seconds=wall_seconds, check_tables=chk.tables)
    return Experiment(exp.name, directory, cfg, tables, check, figures)


def redraw(directory: str | Path, store: str | Path | Store | None = None) -> Experiment:
    """Re-analyze an experiment directory's runs and rewrite its figures and report."""
    directory = Path(directory)
    meta_path = directory / "config.json"
    if not meta_path.is_file():
        raise UserError(f"{directory} is not an experiment directory (no config.json); "
                        "pass a directory under <store>/experiments/")
    meta = json.loads(meta_path.read_text())
    exp = get_experiment(meta["experiment"])
    cfg = from_dict(exp.config_cls, meta["config"])
    st = store if isinstance(store, Store) else Store(store if store is not None else directory.parent.parent)
    plan = exp.plan(cfg, st)
    missing = [rid for rid in plan.graph if not _done(st, rid)]
    if missing:
        raise UserError(f"{len(missing)} of the experiment's runs are not finished in {st.root} "
                        f"(e.g. {missing[0]}); run `earlyphase run {exp.name}` first")
    prior = json.loads((directory / "check.json").read_text()).get("wall_seconds", 0.0) \
        if (directory / "check.json").is_file() else 0.0
    return finish(exp, cfg, plan, st, directory, preset=meta.get("preset", "?"), prior_wall=prior)


_register_builtins()
