"""The synthetic model of the learning phases (docs/experiments/prototypes.md): nearly orthogonal class
prototypes, most samples close to their prototype, a fraction of atypical samples only weakly aligned
with it (``data.atypical_alignment``: the prototype's weight in an atypical sample, 1 in a typical
one); small enough that the phases can be looked for in seconds."""
from __future__ import annotations

import torch

from ..config import DataConfig
from ..errors import UserError
from .base import Dataset, DatasetInfo
from .gaussian import part_generator

DEFAULT_N_TRAIN, DEFAULT_N_TEST = 5000, 1000
TYPICAL_NOISE = 0.3  # norm of the noise added to a typical sample (prototypes have norm 1)
ATYPICAL_SIGNAL = 0.2  # default data.atypical_alignment: an atypical sample keeps this much of its prototype ...
ATYPICAL_NOISE = 2.0  # ... plus noise of this norm


def prototypes(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """C x d random unit vectors: nearly orthogonal when d >> C."""
    p = torch.randn(num_classes, dim, generator=part_generator(seed, "prototypes"), dtype=torch.float64)
    return (p / p.norm(dim=1, keepdim=True)).float()


def sample(n: int, protos: torch.Tensor, atypical: float, seed: int, part: str,
           alignment: float = ATYPICAL_SIGNAL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n samples with uniform random labels; exactly round(atypical * n) of them atypical, each
    ``alignment`` times its prototype plus noise of norm about ATYPICAL_NOISE. Returns (x, y, is_atypical)."""
    g = part_generator(seed, part)
    c, d = protos.shape
    y = torch.randint(c, (n,), generator=g)
    noise = torch.randn(n, d, generator=g) / d ** 0.5
    is_atypical = torch.zeros(n, dtype=torch.bool)
    is_atypical[torch.randperm(n, generator=g)[:int(round(atypical * n))]] = True
    signal = torch.where(is_atypical, alignment, 1.0)[:, None]
    scale = torch.where(is_atypical, ATYPICAL_NOISE, TYPICAL_NOISE)[:, None]
    return signal * protos[y] + scale * noise, y, is_atypical


def info(cfg: DataConfig) -> DatasetInfo:
    if cfg.num_classes < 2:
        raise UserError(f"data.num_classes must be >= 2 for prototypes, got {cfg.num_classes}")
    return DatasetInfo(cfg.n_train or DEFAULT_N_TRAIN, cfg.n_test or DEFAULT_N_TEST, (cfg.dim,), cfg.num_classes)


def load(cfg: DataConfig) -> Dataset:
    """N x dim float32 inputs, cfg.num_classes classes, cfg.atypical of each split atypical."""
    n_train, n_test = info(cfg).n_train, info(cfg).n_test
    protos = prototypes(cfg.num_classes, cfg.dim, cfg.seed)
    x_train, y_train, _ = sample(n_train, protos, cfg.atypical, cfg.seed, "train", cfg.atypical_alignment)
    x_test, y_test, _ = sample(n_test, protos, cfg.atypical, cfg.seed, "test", cfg.atypical_alignment)
    return Dataset("prototypes", x_train, y_train, x_test, y_test, cfg.num_classes)
