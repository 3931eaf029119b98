"""Ctrl-C during training leaves the run as a kill does: resumable, not failed; the next identical
command resumes it from its last resume point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from earlyphase.config import load_run_config, run_id
from earlyphase.store import Store

TINY = ["data.n_train=400", "data.n_test=200", "train.batch_size=50", "train.steps=1500it",
        "observe.progress=false", 'observe.eval_every="500it"', "observe.threads=1"]


def _cmd(store):
    return [sys.executable, "-m", "earlyphase.cli", "train", "--preset", "laptop", "--store", str(store), "--quiet",
            *[a for o in TINY for a in ("--set", o)]]


def test_ctrl_c_leaves_the_run_resumable_and_the_same_command_resumes_it(tmp_path):
    env = {**os.environ, "EARLYPHASE_HOME": str(tmp_path / "home")}
    rid = run_id(load_run_config(preset="laptop", overrides=TINY))
    # a shell without job control starts background jobs with SIGINT ignored, and Python then installs
    # no Ctrl-C handler: give the child the default disposition, as a terminal would
    proc = subprocess.Popen(_cmd(tmp_path / "s"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    resume = tmp_path / "s" / "runs" / rid / "checkpoints" / "resume.safetensors"
    deadline = time.time() + 120
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err and "Traceback" not in err
    rd = Store(tmp_path / "s").run(rid)
    assert rd.status()["status"] == "running" and not rd.is_locked()  # as after kill -9: stale, resumable
    again = subprocess.run(_cmd(tmp_path / "s"), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert rd.status()["status"] == "done"
    assert rd.provenance()["resumed_from"][0] > 0


def test_temporaries_a_killed_writer_left_in_a_run_are_removed_when_it_is_opened(tmp_path):
    from earlyphase.store.writer import RunWriter

    rd = Store(tmp_path).run("0123456789abcdef")
    for d in (rd.path, rd.metrics_dir, rd.checkpoints_dir):
        d.mkdir(parents=True, exist_ok=True)
    stale = [rd.metrics_dir / ".partial.parquet.abc123.tmp", rd.checkpoints_dir / ".resume.safetensors.x9.tmp",
             rd.path / ".status.json.q1.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (rd.metrics_dir / "keep.txt").write_text("not a temporary of ours")
    with RunWriter.open(rd, {"kind": "train", "run_id": rd.id, "config": {}}):
        pass
    assert not any(p.exists() for p in stale)
    assert (rd.metrics_dir / "keep.txt").exists() and (rd.path / "spec.json").is_file()
