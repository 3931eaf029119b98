"""An example earlyphase plug-in: a model, a dataset and presets, registered by ``register()``, the
entry point this package declares in the group ``earlyphase.plugins`` (see its pyproject.toml).

    pip install -e examples/plugin
    earlyphase list models                     # tiny_mlp   plugin tinyplug (earlyphase-tinyplug 0.1.0)
    earlyphase run rewinding --preset tinyplug --workers 2
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

import earlyphase
from earlyphase import DataConfig, Dataset, DatasetInfo, ModelConfig

CLASSES = 4


class TinyMLP(nn.Module):
    """One hidden layer. ``output_layer`` names the final layer: IMP leaves it dense unless
    ``model.prune_output``; the Linear weights are the prunable parameters."""

    output_layer = "out"

    def __init__(self, d: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(d, hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def build_tiny_mlp(cfg: ModelConfig, input_shape: tuple[int, ...], out_dim: int) -> TinyMLP:
    return TinyMLP(math.prod(input_shape), cfg.widths[0], out_dim)


def blobs_info(cfg: DataConfig) -> DatasetInfo:
    """Sizes without generating anything: the engine plans with these."""
    return DatasetInfo(cfg.n_train or 512, cfg.n_test or 256, (cfg.dim,), CLASSES)


def load_blobs(cfg: DataConfig) -> Dataset:
    """Four Gaussian blobs in ``data.dim`` dimensions, drawn from ``data.seed``: a pure function of the config."""
    info = blobs_info(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    centers = 0.6 * torch.randn(CLASSES, cfg.dim, generator=g)  # close enough that pruning shows

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(CLASSES, (n,), generator=g)
        return centers[y] + torch.randn(n, cfg.dim, generator=g), y

    (x_train, y_train), (x_test, y_test) = split(info.n_train), split(info.n_test)
    return Dataset("blobs", x_train, y_train, x_test, y_test, CLASSES)


def register() -> None:
    earlyphase.register_model("tiny_mlp", build_tiny_mlp, example_input=(16,))
    earlyphase.register_dataset("blobs", load_blobs, info=blobs_info, generated=True,
                                example={"n_train": 64, "n_test": 32, "dim": 8})
    earlyphase.register_preset_dir(Path(__file__).parent / "presets")
