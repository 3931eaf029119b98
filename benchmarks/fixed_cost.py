"""Fixed cost per run: a 3-epoch LeNet-300-100 run on MNIST-shaped data (60000 x 784 from fake IDX
files, normalized), timed end to end through ``execute`` in a fresh process, against the time spent
in its training loop alone (``train_loop``: the steps and the evaluations at start and end).

Everything outside the loop is fixed cost: reading and normalizing the data, building the model and
the optimizer (importing whatever they import), the store's files. The run is timed in a child
process so nothing is cached or imported beforehand. Prints the breakdown, then one JSON line:
in-run / loop <= 1.25 (wall time) passes; the same ratio in CPU
time is printed beside (steadier on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 1.25
FILES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
         "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}


def write_fake_mnist(root: Path, seed: int = 0) -> None:
    """Random pixels and labels in the IDX format MNIST is distributed in."""
    rng = np.random.default_rng(seed)
    for name, dims in FILES.items():
        high = 10 if len(dims) == 1 else 256
        payload = rng.integers(0, high, size=dims, dtype=np.uint8)
        header = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
        (root / name).write_bytes(header + payload.tobytes())


def child(root: str, store: str, threads: int) -> dict:
    """One run in this (fresh) process: the seconds of execute() and of train_loop inside it."""
    t_import = time.perf_counter()
    import torch

    from earlyphase.config import load_run_config
    from earlyphase.store import Store
    from earlyphase.train import engine

    imported = time.perf_counter() - t_import
    spent = {"loop": 0.0, "data": 0.0, "loop_cpu": 0.0}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
                if name == "loop":
                    spent["loop_cpu"] += time.process_time() - c
        return wrapper

    engine.train_loop = timed("loop", engine.train_loop)
    engine.load_dataset = timed("data", engine.load_dataset)
    cfg = load_run_config(preset="laptop", overrides=[
        'data.name="mnist"', f"data.root={json.dumps(root)}", "data.normalize=true", "data.n_train=60000",
        "data.n_test=10000", 'model.name="lenet_300_100"', "train.batch_size=60", 'train.steps="3ep"',
        'train.schedule="constant"', "train.milestones=[]", 'observe.eval_every=""', "observe.eval_train=false",
        "observe.progress=false", f"observe.threads={threads}", 'observe.device="cpu"'])
    t, c = time.perf_counter(), time.process_time()
    engine.execute(cfg, Store(store), progress=False)
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    return {"in_run_s": total, "loop_s": spent["loop"], "data_s": spent["data"], "import_s": imported,
            "in_run_cpu_s": total_cpu, "loop_cpu_s": spent["loop_cpu"],
            "dynamo_imported": "torch._dynamo" in sys.modules, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("ROOT", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.threads)))
        return
    with tempfile.TemporaryDirectory() as d:
        root, store = Path(d) / "mnist", Path(d) / "store"
        root.mkdir()
        write_fake_mnist(root)
        t = time.process_time()
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", str(root),
                              str(store)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = r["in_run_s"] / r["loop_s"]
    print(f"in-run {r['in_run_s']:.2f} s, training loop {r['loop_s']:.2f} s, data loading {r['data_s']:.2f} s, "
          f"outside the loop {r['in_run_s'] - r['loop_s']:.2f} s; torch._dynamo imported: {r['dynamo_imported']}")
    print(json.dumps({"benchmark": "fixed_cost", "in_run_s": round(r["in_run_s"], 3), "loop_s": round(r["loop_s"], 3),
                      "data_s": round(r["data_s"], 3), "outside_loop_s": round(r["in_run_s"] - r["loop_s"], 3),
                      "ratio": round(ratio, 3), "cpu_ratio": round(r["in_run_cpu_s"] / r["loop_cpu_s"], 3),
                      "target": TARGET, "dynamo_imported": r["dynamo_imported"],
                      "threads": r["threads"], "pass": ratio <= TARGET}))


if __name__ == "__main__":
    main()
