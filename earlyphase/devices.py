"""Device names as runs and options give them: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means here; an unknown name or CUDA where there is none is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    return device


_ANALYSIS_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("analysis_device", default=None)


@contextlib.contextmanager
def analysis_on(name: str | None) -> Iterator[None]:
    """Within this block an experiment's analysis computes on ``name`` (``--device``) instead of its
    runs' configured device, so ``run X --device cpu`` never reaches for a GPU afterwards."""
    token = _ANALYSIS_DEVICE.set(name)
    try:
        yield
    finally:
        _ANALYSIS_DEVICE.reset(token)


def analysis_device(run_device: str) -> torch.device:
    """Where an experiment's analysis (HVPs, interpolation paths) computes: ``--device`` when one was
    given for the experiment, else its runs' ``observe.device``."""
    return resolve_device(_ANALYSIS_DEVICE.get() or run_device)
