"""Where and with what a run was trained: versions, loaded plug-ins, data fingerprint, device, host."""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

from .._version import __version__
from ..data.base import Dataset
from ..registry import load_plugins


def _version(dist: str) -> str | None:
    """The installed version, from the package metadata: importing mnist1d to ask it cost ~1 s a run."""
    with contextlib.suppress(Exception):
        return importlib.metadata.version(dist)
    return None


@functools.lru_cache(maxsize=1)
def git_state(root: Path = Path(__file__).resolve().parents[2]) -> dict:
    """The commit (and whether tracked files differ from it) of the git checkout the package runs
    from; empty when it is not run from one, or git is absent or slow (2 s at most, once a process)."""
    if not (root / ".git").exists():
        return {}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=2, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=2, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": head, "git_dirty": bool(dirty)}


def provenance(data: Dataset, device: torch.device, threads: int, execution: dict | None = None) -> dict:
    """``execution``: how the run was computed (train/mode.py: precision, layout, determinism, batching)."""
    return {**git_state(), "python": sys.version.split()[0], "torch": torch.__version__, "numpy": _version("numpy"),
            "mnist1d": _version("mnist1d"), "earlyphase": __version__, "plugins": load_plugins(),
            "data_fingerprint": data.fingerprint(), "device": str(device), "threads": threads,
            "host": socket.gethostname(), "platform": platform.platform(),
            **({"execution": execution} if execution is not None else {})}
