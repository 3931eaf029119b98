"""scikit-learn's 8x8 digits (1797 images, shipped with the package, so always available offline)."""
from __future__ import annotations

import torch

from ..config import DataConfig
from .base import Dataset, DatasetInfo

N_TRAIN = 1437  # the rest (360) is the test split
SPLIT_SEED = 0  # the split is fixed: it does not follow cfg.seed, so runs with other seeds compare


def info(cfg: DataConfig) -> DatasetInfo:
    return DatasetInfo(N_TRAIN, 1797 - N_TRAIN, (1, 8, 8), 10)


def load(cfg: DataConfig) -> Dataset:
    """N x 1 x 8 x 8 float32 in [0, 1] (pixel values / 16), 10 classes; a fixed shuffle (seed 0), then
    the first 1437 images train and the last 360 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x, y = x[order], y[order]
    return Dataset("digits", x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], 10)
