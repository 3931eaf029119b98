"""Where and with what a run was trained: versions, loaded plug-ins, data fingerprint, device, host."""
from __future__ import annotations

import contextlib
import platform
import socket
import sys

import torch

from .._version import __version__
from ..data.base import Dataset
from ..registry import load_plugins


def _version(module: str) -> str | None:
    with contextlib.suppress(Exception):
        return __import__(module).__version__
    return None


def provenance(data: Dataset, device: torch.device, threads: int) -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": _version("numpy"),
            "mnist1d": _version("mnist1d"), "earlyphase": __version__, "plugins": load_plugins(),
            "data_fingerprint": data.fingerprint(), "device": str(device), "threads": threads,
            "host": socket.gethostname(), "platform": platform.platform()}
