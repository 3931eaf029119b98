"""The Python API's view of one stored run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .config import RunConfig, from_dict
from .errors import UserError
from .store import RunDir, load_model_state
from .store.checkpoints import split_prefix


class Run:
    """A run in the store: its config, status, metrics (a DataFrame) and checkpoints."""

    def __init__(self, run_dir: RunDir) -> None:
        self._rd = run_dir

    @property
    def id(self) -> str:
        return self._rd.id

    @property
    def path(self) -> Path:
        return self._rd.path

    @property
    def config(self) -> RunConfig:
        return from_dict(RunConfig, self._rd.spec()["config"])

    @property
    def status(self) -> str:
        return self._rd.status()["status"]

    def metrics(self) -> pd.DataFrame:
        """Long format: step, name, layer, split, value."""
        return self._rd.metrics()

    def curve(self, name: str = "accuracy", split: str = "test", layer: str = "") -> pd.Series:
        """One metric against step, e.g. ``run.curve("loss", "train")``."""
        df = self.metrics()
        df = df[(df.name == name) & (df.split == split) & (df.layer == layer)]
        return df.set_index("step")["value"]

    @property
    def final_accuracy(self) -> float:
        curve = self.curve("accuracy", "test")
        if curve.empty:
            raise UserError(f"run {self.id} has no test accuracy recorded")
        return float(curve.iloc[-1])

    def checkpoint_steps(self) -> list[int]:
        return self._rd.checkpoint_steps()

    def state_dict(self, step: int) -> dict[str, torch.Tensor]:
        tensors, _ = self._rd.load(step)
        return split_prefix(tensors, "model.")

    def model(self, step: int | None = None) -> torch.nn.Module:
        """The network at a checkpoint step (default: the last), on the CPU, in eval mode."""
        from .data import dataset_info
        from .models import build_model

        steps = self.checkpoint_steps()
        if not steps:
            raise UserError(f"run {self.id} has no checkpoints")
        step = steps[-1] if step is None else step
        cfg = self.config
        info = dataset_info(cfg.data)  # the shapes, without loading the data
        model = build_model(cfg.model, info.input_shape, info.out_dim)
        load_model_state(model, self.state_dict(step), self._rd.checkpoint_path(step))
        return model.eval()

    def __repr__(self) -> str:
        return f"Run({self.id}, status={self.status}, path={str(self.path)!r})"

    def _repr_html_(self) -> str:
        from .report.notebook import run_html

        return run_html(self)
