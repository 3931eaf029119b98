"""Train a fixed set of reference runs into a store with whatever earlyphase is importable, so two
code versions can be compared bit for bit (benchmarks/compare_stores.py):

    PYTHONPATH=/path/to/old/checkout python benchmarks/reference_runs.py /tmp/store-old
    PYTHONPATH=/path/to/new/checkout python benchmarks/reference_runs.py /tmp/store-new
    python benchmarks/compare_stores.py /tmp/store-old /tmp/store-new

The set covers every way a run starts: the laptop train preset (a fresh run); a rewinding sweep with
IMP chains of 2 levels and both controls (runs started from another run's step k under masks that
chain); perturbed rewound weights; pre-training on rotation with the head redrawn for the real task;
and a run killed (SIGKILL) after its first resume checkpoint, then run again to the end. It uses only
the public API and the command line, which both versions share. Last line: JSON with the wall and
CPU seconds."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SHORT = ['run.train.steps="600it"', 'run.train.milestones=["300it", "450it"]']
RESUMED = ["--set", "seed=7", "--set", 'train.steps="1500it"', "--set", 'train.milestones=["750it"]',
           "--set", "observe.threads=1", "--quiet"]


def resumed_run(store: Path) -> str:
    """Start the run in a subprocess, SIGKILL it once a resume checkpoint exists, run it again."""
    cmd = [sys.executable, "-m", "earlyphase.cli", "train", "--store", str(store), *RESUMED]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(store.glob("runs/*/checkpoints/resume.safetensors")):
            time.sleep(0.5)  # let it write a checkpoint or two more
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the resumed run failed: {done.stderr}")
    return f"killed and resumed: {killed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    args = parser.parse_args()
    import earlyphase

    t0, c0 = time.time(), time.process_time()
    store = str(args.store)
    earlyphase.train(preset="laptop", store=store, overrides=["observe.threads=1"], progress=False)
    earlyphase.run("rewinding", preset="laptop", store=store, seeds=1, levels=2,
                   overrides=['rewind=["0it", "100it"]', *SHORT])
    earlyphase.run("perturbations", preset="laptop", store=store, seeds=1, levels=[2], k="100it", noise=[0.5],
                   overrides=SHORT)
    earlyphase.run("pretraining", preset="laptop", store=store, seeds=1, levels=[2], k="100it", durations=["100it"],
                   tasks=["rotation", "sparse_imp"], overrides=SHORT)
    note = resumed_run(args.store)
    children = os.times()
    cpu = time.process_time() - c0 + children.children_user + children.children_system
    runs = len(list(args.store.glob("runs/*/spec.json")))
    print(f"{runs} runs in {args.store}; {note}")
    print(json.dumps({"store": store, "runs": runs, "wall_seconds": round(time.time() - t0, 1),
                      "cpu_seconds": round(cpu, 1), "earlyphase": earlyphase.__file__}))


if __name__ == "__main__":
    main()
