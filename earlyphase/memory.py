"""How much memory this machine can give, so a size claimed by a file header or a config is checked
before anything that large is allocated."""
from __future__ import annotations

import os


def available_bytes() -> int:
    """Memory available to allocate now (physical pages not in use; at least 1 GiB is assumed where
    the platform cannot say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
