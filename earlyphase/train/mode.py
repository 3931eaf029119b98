"""A run's execution mode: precision (bf16 autocast), memory layout (channels-last conv weights) and
deterministic kernels. Precision and layout change the trajectory, so they live in ``train`` and
enter the run id when not at their defaults; determinism only restricts kernels (``observe``). All
of it is recorded in the run's provenance (docs/scale.md)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from ..config import RunConfig

CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for reproducible results (CUDA >= 10.2)


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast of forward passes and losses (the backward follows the forward's dtypes); fp32:
    nothing. The context spans the whole loop, so autocast's cache of bf16 weight copies is off: it
    lives until the context exits and would serve the first step's weights to every later step."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def prepare_model(cfg: RunConfig, model: torch.nn.Module) -> torch.nn.Module:
    """Conv weights in channels-last layout when asked (parameters keep their identity, so masks
    keyed by them stay valid); the first conv then gives channels-last activations."""
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def deterministic(cfg: RunConfig) -> Iterator[None]:
    """Deterministic kernels for the block (an op without one raises), with cuBLAS's workspace set
    if it is not; the previous setting is restored after."""
    if not cfg.observe.deterministic:
        yield
        return
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def describe(cfg: RunConfig, batched: dict | None = None) -> dict:
    """The provenance entry of the execution mode: how this run was computed."""
    return {"precision": cfg.train.precision, "channels_last": cfg.train.channels_last,
            "deterministic": cfg.observe.deterministic,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if cfg.observe.deterministic else None,
            **(batched or {"mode": "single"})}
