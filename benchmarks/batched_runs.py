"""Batched runs against single runs: N = 1, 4, 8, 16 cnn1d runs of the laptop preset (seeds 0..N-1, so
each its own initialization and data order; ``ratio`` = batched runs/s over single runs/s), trained by the local executor into a fresh store once
with ``batch_runs = N`` and once singly, in this process with the same threads; runs per second and
their ratio. Beside them, the per-operation floor: one run-step's forward and backward alone, and
the same work for N runs as one vmapped call, per run (what batching can save at best is the
overhead around the operations; on a CPU whose cores a single run already keeps busy there is
none, and vmap's batched kernels cost a little more than the plain ones).

The default rule (execute/base.py) trains singly on a CPU; the benchmark passes when that rule
never picks the slower mode here: at every N, single runs are at least 0.95x as fast as batched
(0.95 allows for timing noise; more than 5 % faster batched would prove the rule wrong). Last line JSON.
"""
from __future__ import annotations

import argparse
import json
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


def timed_sweep(cfgs: list, batch_runs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of training ``cfgs`` into a fresh store."""
    graph = RunGraph()
    for cfg in cfgs:
        graph.add(cfg)
    with tempfile.TemporaryDirectory() as d:
        executor = LocalExecutor(1, progress=False, options=ExecOptions(batch_runs=batch_runs))
        t, c = time.perf_counter(), time.process_time()
        report = executor.run(graph, Store(d), work=WORK)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,8,16")
    ap.add_argument("--steps", type=int, default=500, help="steps per run (the preset's 3000 take long on a CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    rule = ExecOptions(device=args.device, batch_runs=None)
    torch.set_num_threads(args.threads)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        cfgs = configs(n, args.steps, args.threads, args.device)
        load_dataset(cfgs[0].data)  # generated once for the process, before either is timed
        single, single_cpu = timed_sweep(cfgs, 1)
        group, group_cpu = timed_sweep(cfgs, n)
        alone, vmapped = floor_ms(cfgs[0], n, device)
        rows.append({"n": n, "single_runs_per_s": round(n / single, 3), "batched_runs_per_s": round(n / group, 3),
                     "ratio": round(single / group, 3), "single_cpu_s": round(single_cpu, 2),
                     "batched_cpu_s": round(group_cpu, 2), "floor_ms_per_run_step_alone": round(alone, 3),
                     "floor_ms_per_run_step_vmapped": round(vmapped, 3)})
        r = rows[-1]
        print(f"N={n:2d}: single {r['single_runs_per_s']:.3f} runs/s, batched {r['batched_runs_per_s']:.3f} runs/s, "
              f"batched/single {r['ratio']:.2f}; fwd+bwd per run-step {alone:.3f} ms alone, {vmapped:.3f} ms vmapped",
              flush=True)
    batched_by_rule = _rule_pick(rule, device) > 1
    slower = [r["n"] for r in rows if r["n"] > 1 and (r["ratio"] < TOLERANCE if batched_by_rule else
                                                      r["ratio"] > 1 / TOLERANCE)]
    print(json.dumps({"benchmark": "batched_runs", "device": str(device), "steps": args.steps, "threads": args.threads,
                      "rule_picks": "batched" if batched_by_rule else "single", "rows": rows,
                      "rule_slower_at": slower, "pass": not slower}))


def _rule_pick(rule: ExecOptions, device: torch.device) -> int:
    """The group size the default rule gives runs on ``device``."""
    graph = RunGraph()
    graph.add(load_run_config(preset="laptop", overrides=[f'observe.device="{device}"']))
    return rule.batch_runs_for(graph)


if __name__ == "__main__":
    main()
