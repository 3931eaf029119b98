"""Device names as runs and options give them: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
from __future__ import annotations

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
