"""Pool workers die with their parent: a sweep killed with ``kill PID`` must not leave its workers
training (and holding memory) with nobody to report to. The killed run resumes next time, as after
any kill."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Ask the kernel for SIGKILL when the parent dies (Linux); elsewhere a daemon thread polls
    ``os.getppid()``. Either way, a parent already gone when this runs ends the worker now."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch, args=(parent_pid, poll_seconds), daemon=True, name="orphan-watch").start()


def _watch(parent_pid: int, poll_seconds: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_seconds)
    os._exit(1)
