"""Gaussian inputs labelled by a teacher with a linear and a quadratic part (docs/experiments/linear_dynamics.md): the data of the
linear-dynamics experiments, whose input covariance the linear model needs to know."""
from __future__ import annotations

import zlib

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from .base import Dataset, DatasetInfo

DEFAULT_N_TRAIN, DEFAULT_N_TEST = 20000, 2000
QUADRATIC = 1.5  # weight of the teacher's nonlinear part


def part_generator(seed: int, part: str) -> torch.Generator:
    """An independent stream per part (teacher, train, test): the test set does not change with
    n_train, and a larger n_train extends the training set rather than redrawing it."""
    state = np.random.SeedSequence([seed % 2**64, zlib.crc32(part.encode())]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def eigenvalues(dim: int, spectrum: str) -> torch.Tensor:
    """The covariance's eigenvalues (axis-aligned), summing to ``dim``: 'isotropic' or 'power:ALPHA'
    (proportional to i^-ALPHA, i = 1..dim)."""
    if spectrum == "isotropic":
        return torch.ones(dim, dtype=torch.float64)
    if spectrum.startswith("power:"):
        try:
            alpha = float(spectrum[len("power:"):])
        except ValueError:
            alpha = float("nan")
        if np.isfinite(alpha):
            lam = torch.arange(1, dim + 1, dtype=torch.float64) ** -alpha
            return lam * (dim / lam.sum())
    raise UserError(f"data.spectrum must be 'isotropic' or 'power:ALPHA' (e.g. 'power:1.0'), got {spectrum!r}")


def teacher(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's unit vectors a (linear part) and b (quadratic part), float64."""
    g = part_generator(seed, "teacher")
    a = torch.randn(dim, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    return a / a.norm(), b / b.norm()


def teacher_labels(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Class 1 where <a,x> + 1.5 (<b,x>^2 - 1) > 0, else 0 (targets='pm1' maps them to -1/+1)."""
    x = x.double()
    score = x @ a + QUADRATIC * ((x @ b) ** 2 - 1.0)
    return (score > 0).to(torch.int64)


def sample(n: int, dim: int, spectrum: str, seed: int, part: str) -> torch.Tensor:
    """n inputs x ~ N(0, diag(eigenvalues)), float32."""
    z = torch.randn(n, dim, generator=part_generator(seed, part), dtype=torch.float64)
    return (z * eigenvalues(dim, spectrum).sqrt()).float()


def info(cfg: DataConfig) -> DatasetInfo:
    eigenvalues(1, cfg.spectrum)  # a malformed spectrum is an error here already
    return DatasetInfo(cfg.n_train or DEFAULT_N_TRAIN, cfg.n_test or DEFAULT_N_TEST, (cfg.dim,), 2)


def load(cfg: DataConfig) -> Dataset:
    """N x dim float32 inputs, two classes {0, 1} from the teacher drawn from cfg.seed."""
    n_train, n_test = info(cfg).n_train, info(cfg).n_test
    a, b = teacher(cfg.dim, cfg.seed)
    x_train = sample(n_train, cfg.dim, cfg.spectrum, cfg.seed, "train")
    x_test = sample(n_test, cfg.dim, cfg.spectrum, cfg.seed, "test")
    return Dataset("gaussian", x_train, teacher_labels(x_train, a, b), x_test, teacher_labels(x_test, a, b), 2)
