"""Pool workers exit when the process that started them dies (``kill PID`` of a --workers 2 sweep),
instead of training on, holding memory, with nobody to report to."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWEEP = ['levels=3', 'rewind=["0it", "20it"]', 'run.train.steps="3000it"', 'run.data.n_train=400',
         'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']


def children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_pool_workers_exit_when_the_sweep_is_killed(tmp_path):
    env = {**os.environ, "EARLYPHASE_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "earlyphase.cli", "run", "rewinding", "--store", str(tmp_path / "s"), "--quiet",
           "--workers", "2", "--seeds", "1", *sum((["--set", o] for o in SWEEP), [])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs = tmp_path / "s" / "runs"
    deadline = time.time() + 180
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None:  # until both workers train
        workers = {p for p in children(proc.pid) if "spawn_main" in _cmdline(p)}
        if len(workers) == 2 and len(list(runs.glob("*/status.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None and len(workers) == 2, "the sweep ended (or never started two workers)"
    os.kill(proc.pid, signal.SIGTERM)  # `kill PID`: the parent dies without cleaning up
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:  # do not leave them behind even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not left, "pool workers outlived their parent"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
