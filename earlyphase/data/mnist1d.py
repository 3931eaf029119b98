"""MNIST-1D, generated offline by the ``mnist1d`` package (never downloaded: ``get_dataset`` would fetch a
pickle from the web). Generation is slow-ish (~3 s for 10000 samples), so results are cached in the
process and as .npz files on disk."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from .base import Dataset, DatasetInfo

DEFAULT_N_TRAIN, DEFAULT_N_TEST = 4000, 1000


def cache_dir() -> Path:
    """$EARLYPHASE_HOME/cache if set, else ~/.cache/earlyphase."""
    home = os.environ.get("EARLYPHASE_HOME")
    return Path(home) / "cache" if home else Path.home() / ".cache" / "earlyphase"


def _generate(args: dict) -> tuple[np.ndarray, np.ndarray]:
    """Run ``make_dataset`` with the global RNG states it reseeds saved and restored."""
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView

    full = get_dataset_args(as_dict=True)
    full.update(args)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        out = make_dataset(ObjectView(full))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([out["x"], out["x_test"]]).astype(np.float32)
    y = np.concatenate([out["y"], out["y_test"]]).astype(np.int64)
    return x, y


@functools.lru_cache(maxsize=8)
def _cached(args_json: str) -> tuple[np.ndarray, np.ndarray]:
    args = json.loads(args_json)
    key = hashlib.sha256(args_json.encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    try:
        with np.load(path) as f:
            return f["x"], f["y"]
    except (OSError, KeyError, ValueError):
        pass  # absent or unreadable: regenerate
    x, y = _generate(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the regeneration next time
    return x, y


def info(cfg: DataConfig) -> DatasetInfo:
    if not 0 <= cfg.seed < 2**32:
        raise UserError(f"data.seed must be in [0, 2**32) for mnist1d (numpy's seed range), got {cfg.seed}")
    return DatasetInfo(cfg.n_train or DEFAULT_N_TRAIN, cfg.n_test or DEFAULT_N_TEST, (1, 40), 10)


def load(cfg: DataConfig) -> Dataset:
    """N x 1 x 40 float32 sequences, 10 classes; ``n_train`` + ``n_test`` samples are generated from
    ``cfg.seed`` (rounded up to a multiple of 10, as the generator makes equal classes), the first
    ``n_train`` for training and the next ``n_test`` for testing."""
    n_train, n_test = info(cfg).n_train, info(cfg).n_test
    total = -(-(n_train + n_test) // 10) * 10
    # train_split is left at its default: the split is made here, so (n_train, n_test) pairs with the
    # same total share one generated set and one cache entry.
    args = {"num_samples": total, "seed": cfg.seed}
    x, y = _cached(json.dumps(args, sort_keys=True))
    x = torch.from_numpy(x.copy())[:, None, :]
    y = torch.from_numpy(y.copy())
    return Dataset("mnist1d", x[:n_train], y[:n_train], x[n_train:n_train + n_test], y[n_train:n_train + n_test], 10)
