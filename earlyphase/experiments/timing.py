"""A quick measure of a config's step time, for ``--dry-run`` estimates."""
from __future__ import annotations

import time

import torch

from ..config import RunConfig
from ..data.base import Dataset
from ..models import build_model
from ..threads import pinned_threads
from ..train.loop import compute_loss, make_optimizer


def seconds_per_step(cfg: RunConfig, data: Dataset, steps: int = 20) -> float:
    with pinned_threads(cfg.observe.threads):
        torch.manual_seed(0)
        model = build_model(cfg.model, data.input_shape, data.out_dim)
        opt = make_optimizer(cfg.train, model)
        b = data.n_train if cfg.train.full_batch else min(cfg.train.batch_size, data.n_train)
        xb, yb = data.x_train[:b], data.y_train[:b]
        for i in range(steps + 3):
            if i == 3:
                t = time.perf_counter()
            loss = compute_loss(cfg.train.loss, model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t) / steps
