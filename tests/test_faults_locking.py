"""Two processes cannot train one run at once: the run's flock makes the second wait, then find the
run done (docs/store.md "Locking" says which file systems honour flock across nodes)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from earlyphase.config import load_run_config, run_id
from earlyphase.store import Store

TINY = ["data.n_train=200", "data.n_test=100", "train.batch_size=50", "train.steps=40it", "observe.progress=false",
        'observe.eval_every="20it"', "observe.threads=1"]


def _cmd(store):
    return [sys.executable, "-m", "earlyphase.cli", "train", "--preset", "laptop", "--store", str(store), "--quiet",
            *[a for o in TINY for a in ("--set", o)]]


def test_a_process_waits_while_another_holds_the_run(tmp_path):
    env = {**os.environ, "EARLYPHASE_HOME": str(tmp_path / "home")}
    rd = Store(tmp_path / "s").run(run_id(load_run_config(preset="laptop", overrides=TINY)))
    with rd.lock():  # as if another process were training it
        proc = subprocess.Popen(_cmd(tmp_path / "s"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(8)  # ample for the process to start and reach the run (a tiny run trains in ~1 s)
        assert proc.poll() is None, proc.communicate()
        assert sorted(p.name for p in rd.path.iterdir()) == [".lock"]  # it wrote nothing
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert rd.status()["status"] == "done"


def test_two_identical_commands_at_once_train_the_run_once(tmp_path):
    env = {**os.environ, "EARLYPHASE_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen(_cmd(tmp_path / "s"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (rd,) = Store(tmp_path / "s").runs()
    assert rd.status()["status"] == "done" and "resumed_from" not in rd.provenance()
    assert sorted(p.name for p in rd.metrics_dir.iterdir()) == ["main.parquet"]  # one training, nothing added
