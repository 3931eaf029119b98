"""Stored metrics as TensorBoard event files, so curves open in the tool researchers already use.

One event directory per run (``DIR/<label>-<run id>/``), one scalar tag per metric:
``<split>/<name>`` or ``<split>/<name>/<layer>``. An experiment exports every run it refers to,
labelled by its result table (e.g. ``imp_k=500it_level=3_seed=0``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from .errors import UserError
from .store import RunDir, Store

INSTALL_HINT = "TensorBoard export needs the tensorboard package: pip install 'earlyphase[tensorboard]'"


def export_tensorboard(target: str, store: Store, out: Path) -> list[Path]:
    """Write event files for a run (id or unique prefix) or an experiment directory; returns the
    event directories written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    written = []
    for rd, label in _runs(target, store):
        where = out / (f"{label}-{rd.id}" if label else rd.id)
        for old in where.glob("events.out.tfevents.*"):  # a re-export replaces, never doubles, the curves
            old.unlink()
        writer = SummaryWriter(log_dir=str(where))
        for r in rd.metrics().itertuples(index=False):
            tag = "/".join(p for p in (r.split or "run", r.name, r.layer) if p)
            writer.add_scalar(tag, r.value, int(r.step))
        writer.close()
        written.append(where)
    return written


def _runs(target: str, store: Store) -> list[tuple[RunDir, str]]:
    path = Path(target)
    if (path / "runs.json").is_file():
        ids = json.loads((path / "runs.json").read_text())
        labels = _labels(path)
        return [(store.run(rid), labels.get(rid, "")) for rid in ids if store.run(rid).exists()]
    if path.exists():
        raise UserError(f"{path} is not an experiment directory (no runs.json); pass a run id or "
                        "<store>/experiments/<name>-<id>")
    return [(store.find(target), "")]


def _labels(directory: Path) -> dict[str, str]:
    """run id -> its labels in the experiment's results table, as a directory-safe name."""
    results = directory / "results.csv"
    if not results.is_file():
        return {}
    df = pd.read_csv(results, dtype=str, keep_default_na=False)
    if "run_id" not in df:
        return {}
    keep = [c for c in ("control", "k", "level", "seed", "setting", "task", "duration") if c in df]
    return {r["run_id"]: re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(f"{c}={r[c]}" if c != "control" else r[c]
                                                                    for c in keep if r[c] != ""))
            for _, r in df.iterrows()}
