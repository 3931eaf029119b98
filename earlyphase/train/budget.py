"""A run's memory, estimated from its config before anything is allocated, and checked against what
this machine has free: a config that cannot fit is a one-line UserError, not a MemoryError (or a
swap storm) minutes in. The estimate counts what grows with the config: the dataset (as loaded, and
a transformed copy), the per-step learning-rate table, and the network's parameters with their
gradients, optimizer state and a checkpoint copy (built on the meta device: shapes, no storage)."""
from __future__ import annotations

import math

import torch

from ..config import RunConfig
from ..data import dataset_info
from ..errors import UserError
from ..memory import available_bytes, gib
from ..registry import MODEL_REGISTRY
from .schedules import run_schedule

BYTES_PER_LR = 32  # a Python float in a list: the pointer and the object
PARAM_COPIES = 5  # weights, gradient, two optimizer buffers (Adam), a checkpoint's copy


def parameter_count(cfg: RunConfig, input_shape: tuple[int, ...], out_dim: int) -> int:
    """The network's parameters, counted without allocating them (0 if the model cannot be built
    on the meta device; it is then built for real, and a failure there is the model's own). Built by
    its builder alone: earlyphase's initialization on meta tensors would import torch's compiler."""
    try:
        build = MODEL_REGISTRY.get(cfg.model.name, key="model.name").value
        with torch.device("meta"):
            model = build(cfg.model, input_shape, out_dim)
    except Exception:  # noqa: BLE001 - an estimate, never a reason to fail
        return 0
    return sum(p.numel() for p in model.parameters())


def estimate_bytes(cfg: RunConfig) -> int:
    """Peak memory of training ``cfg``, roughly (an upper estimate of what grows with the config)."""
    info = dataset_info(cfg.data)
    per_sample = math.prod(info.input_shape) * 4 + 8
    data = 2 * (info.n_train + info.n_test) * per_sample
    schedule = run_schedule(cfg, info.n_train)
    params = parameter_count(cfg, tuple(info.input_shape), info.out_dim) * 4 * PARAM_COPIES
    return data + schedule.total * BYTES_PER_LR + params


def check_fits(cfg: RunConfig) -> None:
    """Refuse a run whose estimate exceeds the memory free now. A config the estimate cannot size
    (bad files, too few samples) is left to the loader, whose error names the exact problem."""
    try:
        need = estimate_bytes(cfg)
    except UserError:
        return
    have = available_bytes()
    if need > have:
        raise UserError(f"this run needs about {gib(need)} of memory (data, schedule, network) but "
                        f"{gib(have)} is free; lower data.n_train/n_test, model sizes or train.steps (docs/bounds.md)")
