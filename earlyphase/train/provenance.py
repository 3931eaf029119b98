"""Where and with what a run was trained: versions, loaded plug-ins, data fingerprint, device, host."""
from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import socket
import sys

import torch

from .._version import __version__
from ..data.base import Dataset
from ..registry import load_plugins


def _version(dist: str) -> str | None:
    """The installed version, from the package metadata: importing mnist1d to ask it cost ~1 s a run."""
    with contextlib.suppress(Exception):
        return importlib.metadata.version(dist)
    return None


def provenance(data: Dataset, device: torch.device, threads: int, execution: dict | None = None) -> dict:
    """``execution``: how the run was computed (train/mode.py: precision, layout, determinism, batching)."""
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": _version("numpy"),
            "mnist1d": _version("mnist1d"), "earlyphase": __version__, "plugins": load_plugins(),
            "data_fingerprint": data.fingerprint(), "device": str(device), "threads": threads,
            "host": socket.gethostname(), "platform": platform.platform(),
            **({"execution": execution} if execution is not None else {})}
