"""Batched runs against single runs: N = 1, 4, 8, 16 cnn1d runs of the laptop preset (seeds 0..N-1, so
each its own initialization and data order), trained by the local executor into a fresh store, once
singly and once batched, on the same cores, in each of the executor's two ways of using them:

* ``pool``: one worker process per core, each run (or group) on one thread: how ``earlyphase demo``
  and ``run --workers <cores>`` train; batched groups hold ceil(N / cores) runs, so every core has one;
* ``inproc``: one run (or one group of N) at a time in this process, on all the cores' threads.

Runs per second, CPU seconds (this process and its workers), and the per-operation floor: one
run-step's forward and backward alone against the same work for N runs as one vmapped call, per
run, on one thread and on all (what batching can save at best is the work around those operations).

The default rule (execute/base.py) trains singly on a CPU; the benchmark passes when that rule never
picks the slower mode: for each way of using the cores and each N > 1, single runs are at least 0.95x
as fast as batched (0.95 allows for timing noise). ``best_single_vs_best_batched`` compares the
fastest configuration of each mode. Last line JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from earlyphase.config import load_run_config
from earlyphase.data import load_dataset
from earlyphase.execute import ExecOptions, LocalExecutor, RunGraph
from earlyphase.models import build_model
from earlyphase.store import Store
from earlyphase.train.work import WORK

TOLERANCE = 0.95


def configs(n: int, steps: int, threads: int, device: str) -> list:
    base = load_run_config(preset="laptop", overrides=[
        f'train.steps="{steps}it"', "train.milestones=[]", 'observe.eval_every=""', "observe.progress=false",
        f"observe.threads={threads}", f'observe.device="{device}"'])
    return [base.replace(seed=s, data_seed=s) for s in range(n)]


def cpu_seconds() -> float:
    """User + system time of this process and of its finished (joined) children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_sweep(cfgs: list, batch_runs: int, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of training ``cfgs`` into a fresh store; the pool's workers are
    started inside the timing, as a sweep pays for them."""
    graph = RunGraph()
    for cfg in cfgs:
        graph.add(cfg)
    with tempfile.TemporaryDirectory() as d:
        executor = LocalExecutor(workers, progress=False, options=ExecOptions(batch_runs=batch_runs))
        t, c = time.perf_counter(), cpu_seconds()
        report = executor.run(graph, Store(d), work=WORK)
        wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    assert report.ok and len(report.trained) == len(cfgs), report
    return wall, cpu


def floor_ms(cfg, n: int, device: torch.device, reps: int = 30) -> tuple[float, float]:
    """ms per run-step of forward + backward: one run alone, and n runs as one vmapped call (per run)."""
    data = load_dataset(cfg.data, device)
    models = [build_model(cfg.model, data.input_shape, data.out_dim).to(device) for _ in range(n)]
    x, y = data.x_train[:cfg.train.batch_size], data.y_train[:cfg.train.batch_size]
    params, buffers = stack_module_state(models)

    def one() -> None:
        F.cross_entropy(models[0](x), y).backward()

    def batched() -> None:
        out = vmap(lambda p, b: functional_call(models[0], (p, b), (x,)))(params, buffers)
        F.cross_entropy(out.flatten(0, 1), y.repeat(n)).backward()

    return _best_ms(one, reps, device), _best_ms(batched, reps, device) / n


def _best_ms(fn, reps: int, device: torch.device) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1e3


def measure(n: int, steps: int, cores: int, device: str) -> dict:
    """One N: both modes in both ways of using the cores, and the floors."""
    row: dict = {"n": n}
    for way, workers, threads in (("pool", cores, 1), ("inproc", 1, cores)):
        cfgs = configs(n, steps, threads, device)
        load_dataset(cfgs[0].data)  # generated once for this process, before anything is timed
        single, single_cpu = timed_sweep(cfgs, 1, workers)
        group, group_cpu = timed_sweep(cfgs, math.ceil(n / workers), workers)
        row[way] = {"single_runs_per_s": round(n / single, 3), "batched_runs_per_s": round(n / group, 3),
                    "single_vs_batched": round(group / single, 3), "single_cpu_s": round(single_cpu, 2),
                    "batched_cpu_s": round(group_cpu, 2)}
    torch_device = torch.device(device)
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        alone, vmapped = floor_ms(configs(1, steps, threads, device)[0], n, torch_device)
        row[f"floor_ms_{threads}_thread"] = {"alone": round(alone, 3), "vmapped_per_run": round(vmapped, 3)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,8,16")
    ap.add_argument("--steps", type=int, default=1000,
                    help="steps per run (the preset's 3000 take long on a CPU; fewer make the pool's start weigh more)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rule_batched = _rule_pick(args.device) > 1
    rows, slower = [], []
    for n in [int(s) for s in args.sizes.split(",")]:
        r = measure(n, args.steps, args.cores, args.device)
        rows.append(r)
        for way in ("pool", "inproc"):
            m = r[way]
            print(f"N={n:2d} {way:6s}: single {m['single_runs_per_s']:.3f} runs/s, batched "
                  f"{m['batched_runs_per_s']:.3f} runs/s, single/batched {m['single_vs_batched']:.2f} "
                  f"(CPU s {m['single_cpu_s']:.1f} / {m['batched_cpu_s']:.1f})", flush=True)
            ratio = m["single_vs_batched"]
            if n > 1 and (ratio > 1 / TOLERANCE if rule_batched else ratio < TOLERANCE):
                slower.append({"n": n, "way": way})
        print("       floor, fwd+bwd ms per run-step alone / vmapped: " + ", ".join(
            f"{k[9:]} {v['alone']:.3f} / {v['vmapped_per_run']:.3f}" for k, v in r.items() if k.startswith("floor")),
            flush=True)
    best = {n["n"]: round(max(n[w]["single_runs_per_s"] for w in ("pool", "inproc")) /
                          max(n[w]["batched_runs_per_s"] for w in ("pool", "inproc")), 3) for n in rows}
    print(json.dumps({"benchmark": "batched_runs", "device": args.device, "steps": args.steps, "cores": args.cores,
                      "rule_picks": "batched" if rule_batched else "single", "rows": rows,
                      "best_single_vs_best_batched": best, "rule_slower_at": slower, "pass": not slower}))


def _rule_pick(device: str) -> int:
    """The group size the default rule gives the laptop preset's runs on ``device``."""
    graph = RunGraph()
    graph.add(load_run_config(preset="laptop", overrides=[f'observe.device="{device}"']))
    return ExecOptions(device=device, batch_runs=None).batch_runs_for(graph)


if __name__ == "__main__":
    main()
