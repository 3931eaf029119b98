"""The notebook entry points: ``earlyphase.train(config) -> Run``, ``earlyphase.run(name) -> Experiment``,
and ``earlyphase.register_experiment`` (the other ``register_*`` live with what they register)."""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig, check_names, load_run_config, to_dict
from .stored_run import Run
from .store import Store
from .train.engine import execute


def train(config: RunConfig | dict | str | Path | None = None, *, preset: str | None = None,
          store: str | Path | Store | None = None, overrides: list[str] | tuple[str, ...] = (),
          progress: bool | None = None) -> Run:
    """Train one run (or find it in the store) and return it.

    ``config`` is a RunConfig, a dict in the TOML layout, or a TOML path; ``preset`` ("laptop",
    "paper") supplies the base it overrides; ``overrides`` are ``"train.lr=0.05"`` strings.
    """
    if isinstance(config, RunConfig):
        cfg = config
        if overrides or preset:
            cfg = load_run_config(to_dict(config), preset=preset, overrides=overrides)
        check_names(cfg)
    else:
        cfg = load_run_config(config, preset=preset, overrides=overrides)
    st = store if isinstance(store, Store) else Store(store)
    return Run(execute(cfg, st, progress=progress))


def run(experiment: str, *, preset: str = "laptop", config: str | Path | dict | None = None,
        overrides: list[str] | tuple[str, ...] = (), store: str | Path | Store | None = None,
        executor: str = "local", workers: int = 1, address: str | None = None, retry_failed: bool = False,
        progress: bool = False, device: str | None = None, batch_runs: int | None = None, deterministic: bool = False,
        **fields):
    """Run an experiment (training only the runs the store lacks) and return its ``Experiment``:
    ``.results`` (DataFrame), ``.tables``, ``.check``, ``.figures``, ``.report_path``.

    Keyword ``fields`` set top-level experiment keys, e.g. ``earlyphase.run("rewinding", seeds=2)``.
    ``device``, ``batch_runs`` and ``deterministic`` say how the runs are executed (docs/scale.md).
    """
    from .execute import ExecOptions
    from .experiments import run_experiment

    options = ExecOptions(device=device, deterministic=deterministic, batch_runs=batch_runs)
    return run_experiment(experiment, preset=preset, config=config, overrides=overrides, store=store,
                          executor=executor, workers=workers, address=address, retry_failed=retry_failed,
                          progress=progress, options=options, **fields)


def register_experiment(definition):
    """Make ``earlyphase run NAME`` run an ExperimentDef subclass (or instance) under its ``name``
    (docs/plugins.md)."""
    from .experiments.runner import register_experiment as register

    return register(definition)
