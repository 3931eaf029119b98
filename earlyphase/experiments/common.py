"""Small pieces the instability, gradient-subspace and critical-period experiments share: step
strings in iterations (a step beyond T is bad input), pooled std, final accuracies, and result
caches written beside a run."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import RunConfig, canonical_json
from ..data import Dataset, load_dataset
from ..models import build_model
from ..errors import UserError
from ..steps import parse_step
from ..store import Store, load_model_state
from ..train.schedules import run_schedule
from ..store.checkpoints import split_prefix
from ..store.atomic import write_bytes_atomic


def iterations(run: RunConfig, steps: Iterable[str], what: str) -> tuple[dict[str, int], int]:
    """Each step string in iterations of ``run``'s data, and its training length T; a step beyond
    T is a UserError naming ``what`` (the config key)."""
    schedule = run_schedule(run)  # sizes from the dataset's metadata: nothing is loaded
    total = schedule.total
    out = {s: parse_step(s).to_iterations(schedule.spe) for s in steps}
    for s, it in out.items():
        if it > total:
            raise UserError(f"{what}: step {s} ({it} steps) is beyond the training length {total}; "
                            "drop it or lengthen run.train.steps")
    return out, total


def pooled(a: float, b: float) -> float:
    """sqrt((a^2 + b^2) / 2); a missing std (one seed) counts as 0."""
    a, b = (0.0 if not np.isfinite(v) else float(v) for v in (a, b))
    return float(np.sqrt((a * a + b * b) / 2))


def verdict(*parts: bool | None) -> bool | None:
    """False if any part fails; else None if any part could not be judged; else True."""
    if any(p is False for p in parts):
        return False
    return None if any(p is None for p in parts) else True


def final_accuracy(store: Store, rid: str) -> float:
    m = store.run(rid).metrics()
    acc = m[(m.name == "accuracy") & (m.split == "test") & (m.layer == "")]
    return float(acc.value.iloc[acc.step.values.argmax()])


def final_density(store: Store, rid: str) -> float:
    m = store.run(rid).metrics()
    d = m[(m.name == "density") & (m.layer == "")]
    return float(d.value.iloc[0]) if len(d) else 1.0


def model_at(store: Store, rid: str, cfg: RunConfig, step: int, data: Dataset) -> torch.nn.Module:
    """Run ``rid``'s network at ``step``, on the CPU in eval mode, built from the plan's ``cfg`` (whose
    data root the stored spec leaves out) for ``data``'s shapes."""
    rd = store.run(rid)
    model = build_model(cfg.model, data.input_shape, data.out_dim)
    load_model_state(model, split_prefix(rd.load(step)[0], "model."), rd.checkpoint_path(step))
    return model.eval()


def cache_key(obj: object) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


def cached_table(path: Path, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()`` once, kept as CSV at ``path`` (beside a run), so a redraw is cheap."""
    if path.is_file():
        return pd.read_csv(path)
    df = compute()
    write_bytes_atomic(path, df.to_csv(index=False).encode())
    return df


def steps_text(steps: Iterable[int]) -> str:
    steps = list(steps)
    return "{" + ", ".join(str(s) for s in steps) + "}" if steps else "{}"
