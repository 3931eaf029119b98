"""The ``earlyphase`` command: train, run, report, demo, list, ls, show, query, gc.

Every user mistake ends in one line on stderr naming the problem and the fix, and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import NonFiniteLoss, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        raise UserError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _store(args: argparse.Namespace):
    from .store import Store

    return Store(args.store)


def _existing_store(args: argparse.Namespace):
    """The store a reading command looks at: never created, never written (a read-only store works)."""
    from .store import Store

    store = Store(args.store, create=False)
    if not store.root.is_dir():
        raise UserError(f"no store at {store.root}; check --store (or $EARLYPHASE_HOME), or train a run first")
    return store


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="DIR", help="store root (default: $EARLYPHASE_HOME or ./earlyphase-store)")


def _add_exec(p: argparse.ArgumentParser) -> None:
    """How a sweep's runs are executed; none of it changes a run's id (docs/scale.md)."""
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N for every run (default: each run's own)")
    p.add_argument("--batch-runs", type=int, metavar="N",
                   help="train up to N runs of one architecture, data and schedule as one batched model "
                        "(1: each alone; default: 1 on a CPU, 8 on a GPU)")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels only (recorded per run)")


def _exec_options(args: argparse.Namespace):
    from .execute import ExecOptions

    return ExecOptions(device=args.device, deterministic=args.deterministic, batch_runs=args.batch_runs)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .stored_run import Run
    from .train.engine import execute

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"observe.device={json.dumps(args.device)}")
    if args.threads:
        overrides.append(f"observe.threads={args.threads}")
    if args.preset is None and args.config is None:
        args.preset = "laptop"
    cfg = load_run_config(args.config, preset=args.preset, overrides=overrides)
    if args.print_config:
        from .config import to_dict
        import tomli_w

        print(tomli_w.dumps(_drop_none(to_dict(cfg))), end="")
        return 0
    store = _store(args)
    t0 = time.time()
    run = Run(execute(cfg, store, progress=not args.quiet and sys.stderr.isatty()))
    acc = run.final_accuracy
    print(f"run {run.id}: test accuracy {acc:.4f} after {cfg.train.steps} ({time.time() - t0:.1f} s)")
    print(run.path)
    return 0


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def _headline(rd) -> tuple[str, str]:
    df = rd.metrics()
    acc = df[(df.name == "accuracy") & (df.split == "test")]
    if acc.empty:
        return "-", "-"
    last = acc.iloc[acc.step.values.argmax()]
    return str(int(last.step)), f"{last.value:.4f}"


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    store = _existing_store(args)
    table = Table("run", "status", "data", "model", "steps", "seed", "last step", "test acc", box=None)
    for rd in store.runs():
        damage = rd.damage()
        if damage is not None:  # one line for it; the rest of the store is listed
            print(f"warning: {damage}", file=sys.stderr)
            table.add_row(rd.id, "damaged", "?", "?", "?", "?", "-", "-")
            continue
        cfg = rd.spec().get("config", {})
        status = rd.status()["status"]
        if status == "running" and not rd.is_locked():
            status = "stale (killed; run again to resume)"
        step, acc = _headline(rd)
        table.add_row(rd.id, status, cfg.get("data", {}).get("name", "?"), cfg.get("model", {}).get("name", "?"),
                      str(cfg.get("train", {}).get("steps", "?")), str(cfg.get("seed", "?")), step, acc)
    Console(width=160).print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _existing_store(args)
    rd = store.find(args.run)
    print(f"run {rd.id} at {rd.path}")
    print("status:", json.dumps(rd.status()))
    print("config:", json.dumps(rd.spec().get("config", {}), indent=2, sort_keys=True))
    print("provenance:", json.dumps(rd.provenance(), sort_keys=True))
    steps = rd.checkpoint_steps()
    shown = steps if len(steps) <= 12 else steps[:6] + ["..."] + steps[-5:]
    print(f"checkpoints ({len(steps)}):", " ".join(map(str, shown)))
    df = rd.metrics()
    if not df.empty:
        last = df[df.step == df.step.max()]
        print(f"metrics at step {int(df.step.max())}:")
        for r in last.itertuples(index=False):
            print(f"  {r.name:<12} {r.split:<6} {r.layer:<10} {r.value:.6g}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from .store.query import result
    from .table_output import write_result

    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    with result(_existing_store(args), args.sql, warn=warn) as (schema, batches):
        sys.stdout.flush()
        write_result(schema, batches, args.format, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_tensorboard

    experiment = Path(args.target) / "runs.json"
    if args.store is None and experiment.is_file():  # an experiment directory knows its store
        args.store = str(experiment.parent.parent.parent)
    written = export_tensorboard(args.target, _existing_store(args), Path(args.tensorboard))
    print(f"{len(written)} runs exported to {args.tensorboard}; view them with: tensorboard --logdir {args.tensorboard}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    store = _store(args)
    referenced = store.referenced_runs()
    doomed = []
    for rd in store.runs():
        if rd.is_locked():
            continue
        status = "damaged" if rd.damage() is not None else rd.status()["status"]
        if status == "damaged" or (rd.id not in referenced and (status != "done" or args.unreferenced)):
            doomed.append((rd, status))  # a damaged run protects nothing: `earlyphase run` retrains it
    if not doomed:
        print("nothing to remove")
        return 0
    for rd, status in doomed:
        print(f"{'removing' if args.yes else 'would remove'} {rd.id} ({status})")
    if args.yes:
        for rd, _ in doomed:
            rd.remove()
    else:
        print(f"{len(doomed)} runs; run again with --yes to remove them")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments import get_experiment, run_experiment
    from .experiments.runner import RunsFailed, load_experiment_config

    if args.print_config:
        import tomli_w
        from .config import to_dict

        cfg = load_experiment_config(get_experiment(args.experiment), preset=args.preset, config=args.config,
                                     overrides=args.set or [], seeds=args.seeds)
        print(tomli_w.dumps(_drop_none(to_dict(cfg))), end="")
        return 0
    try:
        exp = run_experiment(args.experiment, preset=args.preset, config=args.config, overrides=args.set or [],
                             store=args.store, executor=args.executor, workers=args.workers, address=args.address,
                             dry_run=args.dry_run, retry_failed=args.retry_failed, progress=not args.quiet,
                             seeds=args.seeds, options=_exec_options(args))
    except RunsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if exp is not None:
        _print_check(exp.name, exp.check)
        print(exp.path)
    return 0


def _print_check(name: str, check: dict) -> None:
    verdict = {True: "PASS", False: "FAIL", None: "finding"}[check.get("pass")]
    print(f"{name}: {verdict} — {check.get('statement', '')}", file=sys.stderr)
    if check.get("measured"):
        print(f"  {check['measured']}", file=sys.stderr)
    numbers = {k: v for k, v in check.get("numbers", {}).items() if isinstance(v, (int, float)) or v is None}
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
    findings = len(check.get("numbers", {}))
    print(f"  {shown or f'{findings} findings, see the report'}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments import redraw

    exp = redraw(args.directory, store=args.store)
    _print_check(exp.name, exp.check)
    print(exp.report_path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_names, run_demo
    from .experiments.runner import RunsFailed
    from .store import Store

    options = _exec_options(args)  # bad options before the store is touched
    store = Store(args.store)
    try:
        index = run_demo(demo_names(args.all, args.only), store, workers=args.workers, progress=not args.quiet,
                         on_result=_print_check, retry_failed=args.retry_failed, options=options)
    except RunsFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(index)
    return 0


LISTS = ("models", "datasets", "experiments", "recorders", "presets")


def cmd_list(args: argparse.Namespace) -> int:
    """What is registered, one line each: its name and where it comes from."""
    from .config import preset_roots
    from .registry import REGISTRIES

    if args.what == "presets":
        for root, origin in preset_roots():
            for path in sorted(root.glob("*/*.toml")):
                print(f"{path.parent.name + '/' + path.stem:<32} {origin} ({path})")
        return 0
    for entry in REGISTRIES[args.what[:-1]].entries():
        print(f"{entry.name:<32} {entry.origin}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = _Parser(prog="earlyphase", description="Study the early phase of neural-network training.")
    parser.add_argument("--version", action="version", version=f"earlyphase {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_run(sub)
    _add_others(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one run (or find it in the store)",
                       description="Train one run from a preset and/or a TOML config with overrides.")
    p.add_argument("--preset", help="laptop (default) or paper")
    p.add_argument("--config", metavar="FILE.toml", help="a run config; overrides the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=0.05")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch threads for this run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_store(p)
    p.set_defaults(func=cmd_train)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run an experiment (trains only what the store lacks), then report",
                       description="Plan an experiment's runs, execute the missing ones, analyze, draw figures, "
                                   "write report.html and check.json. The last line printed is the experiment "
                                   "directory; the exit code is 0 whether or not the check passed.")
    p.add_argument("experiment", help="an experiment's name; `earlyphase list experiments` lists them")
    p.add_argument("--preset", default="laptop", help="laptop (default) or paper")
    p.add_argument("--config", metavar="FILE.toml", help="experiment config; overrides the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. levels=5 or run.train.lr=0.05")
    p.add_argument("--seeds", type=int, help="number of seeds (replicates)")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (processes, or Ray tasks)")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--address", help="Ray cluster address (with --executor ray); default: a local Ray instance")
    p.add_argument("--dry-run", action="store_true", help="print the plan: runs, how many stored, time estimate")
    p.add_argument("--print-config", action="store_true", help="print the resolved experiment config and exit")
    p.add_argument("--retry-failed", action="store_true", help="train failed runs again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_exec(p)
    _add_store(p)
    p.set_defaults(func=cmd_run)


def _add_others(sub) -> None:
    p = sub.add_parser("report", help="redraw an experiment's figures and report from the store")
    p.add_argument("directory", help="an experiment directory, <store>/experiments/<name>-<id>")
    _add_store(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="run the headline laptop experiments (or --all) and write index.html",
                       description="The headline set: rewinding, perturbations, linear_dynamics and "
                                   "learning_phases (one experiment per paper, plus perturbations); --all runs "
                                   "every experiment. Prints the estimated training time first.")
    p.add_argument("--all", action="store_true", help="run every experiment, not only the headline set")
    p.add_argument("--workers", type=int, default=2, help="runs trained at once (default 2)")
    p.add_argument("--only", action="append", metavar="EXPERIMENT", help="run only these experiments")
    p.add_argument("--retry-failed", action="store_true", help="train failed runs again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_exec(p)
    _add_store(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="what is registered: models, datasets, experiments, recorders or presets",
                       description="One line each: the name and where it comes from (earlyphase, a plug-in "
                                   "with its distribution and version, or a run-time registration).")
    p.add_argument("what", choices=LISTS)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ls", help="list runs with status and headline metrics")
    _add_store(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="show one run: config, status, provenance, checkpoints, metrics")
    p.add_argument("run", help="run id or a unique prefix")
    _add_store(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("query", help="SQL (DuckDB) over all runs",
                       description="Views: metrics(run_id, step, name, layer, split, value) and "
                                   "runs(run_id, kind, status, created, spec).")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _add_store(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="export a run's or an experiment's metrics (TensorBoard event files)",
                       description="Write TensorBoard event files from the stored metrics: one directory per run, "
                                   "one scalar tag per metric (split/name[/layer]).")
    p.add_argument("target", help="a run id (or unique prefix) or an experiment directory <store>/experiments/<name>-<id>")
    p.add_argument("--tensorboard", metavar="DIR", required=True, help="directory for the event files")
    _add_store(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("gc", help="remove failed or abandoned runs no experiment refers to",
                       description="Lists what it would remove; --yes removes it. Done runs are kept "
                                   "unless --unreferenced.")
    p.add_argument("--yes", action="store_true", help="really remove")
    p.add_argument("--unreferenced", action="store_true", help="also remove done runs no experiment refers to")
    _add_store(p)
    p.set_defaults(func=cmd_gc)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:  # the run is stored as failed at that step
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`earlyphase query ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
