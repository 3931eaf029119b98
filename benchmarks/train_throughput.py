"""Training throughput of the engine against a bare hand-written loop and a DataLoader loop.

Workloads (issue 2): cnn1d on mnist1d (batch 100) and lenet_300_100 on 784-dim data (batch 60).
The three loops train the same model with the same optimizer for the same number of steps; they are
timed in interleaved rounds, so machine noise hits all three alike; each loop's best round counts
(as timeit advises: on a shared machine noise only adds time), the medians are printed beside. The engine is
timed end to end through ``execute`` into a fresh store (model build, evaluation at start and end,
resume checkpoints every epoch, metrics written), i.e. what a user pays.

Prints a table, then one JSON line: engine/bare >= 0.9 and engine/DataLoader >= 1.5 pass.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from earlyphase.config import load_run_config
from earlyphase.data import load_dataset
from earlyphase.models import build_model
from earlyphase.store import Store
from earlyphase.train.engine import execute
from earlyphase.train.loop import compute_loss

WORKLOADS = {
    "cnn1d/mnist1d b100": [],
    "lenet_300_100/784-dim b60": ['data.name="prototypes"', "data.dim=784", "data.n_train=12000", "data.n_test=2000",
                                  'model.name="lenet_300_100"', "train.batch_size=60"],
}


def config(extra: list[str], steps: int, threads: int):
    return load_run_config(preset="laptop", overrides=[
        *extra, f'train.steps="{steps}it"', 'train.milestones=[]', 'train.schedule="constant"',
        'observe.eval_every=""', "observe.eval_train=false", "observe.progress=false", f"observe.threads={threads}"])


def sgd(cfg, model):
    return torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                           weight_decay=cfg.train.weight_decay, foreach=True)


def run_engine(cfg, seed: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        execute(cfg.replace(seed=seed), Store(d), progress=False)
        return time.perf_counter() - t


def timed_steps(cfg, data, steps: int, epoch) -> float:
    """Seconds for ``steps`` plain SGD steps over the batches ``epoch()`` yields, epoch after epoch."""
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.out_dim)
    opt = sgd(cfg, model)
    t = time.perf_counter()
    step = 0
    while step < steps:
        for xb, yb in epoch():
            loss = compute_loss("cross_entropy", model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return time.perf_counter() - t


def run_bare(cfg, data, steps: int) -> float:
    """What one would write by hand: a permutation per epoch, slices of in-memory tensors."""
    x, y, b = data.x_train, data.y_train, cfg.train.batch_size

    def epoch():
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], b):
            idx = perm[i:i + b]
            yield x[idx], y[idx]

    return timed_steps(cfg, data, steps, epoch)


def run_dataloader(cfg, data, steps: int) -> float:
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=cfg.train.batch_size, shuffle=True)
    return timed_steps(cfg, data, steps, lambda: loader)


def flops_per_step(cfg, data) -> float:
    model = build_model(cfg.model, data.input_shape, data.out_dim)
    xb, yb = data.x_train[:cfg.train.batch_size], data.y_train[:cfg.train.batch_size]
    with FlopCounterMode(display=False) as counter:
        compute_loss("cross_entropy", model(xb), yb).backward()
    return float(counter.get_total_flops())


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000, help="steps per run (3000: the laptop preset)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    results = {"threads": args.threads, "steps": args.steps, "matmul_gflops": round(peak, 2), "workloads": {}}
    ok = True
    print(f"matmul peak ({args.threads} thread(s)): {peak:.1f} GFLOP/s")
    print(f"{'workload':<28}{'engine it/s':>12}{'bare it/s':>11}{'loader it/s':>12}{'eng/bare':>10}"
          f"{'eng/loader':>11}{'GFLOP/s':>9}{'of peak':>9}")
    for name, extra in WORKLOADS.items():
        cfg = config(extra, args.steps, args.threads)
        data = load_dataset(cfg.data)
        run_engine(cfg, seed=999)  # warm-up: caches the dataset, loads kernels
        times = {"engine": [], "bare": [], "loader": []}
        for r in range(args.rounds):
            times["engine"].append(run_engine(cfg, seed=r))
            torch.set_num_threads(args.threads)
            times["bare"].append(run_bare(cfg, data, args.steps))
            times["loader"].append(run_dataloader(cfg, data, args.steps))
        # best of the rounds, as timeit advises: on a shared machine noise only ever adds time
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: args.steps / v for k, v in best.items()}
        flops = flops_per_step(cfg, data)
        gflops = flops * rate["engine"] / 1e9
        # the most any loop could gain over the DataLoader loop: running every FLOP at the matmul peak
        ceiling = (best["loader"] / args.steps) / (flops / (peak * 1e9))
        w = {"engine_it_s": round(rate["engine"], 1), "bare_it_s": round(rate["bare"], 1),
             "dataloader_it_s": round(rate["loader"], 1), "engine_vs_bare": round(rate["engine"] / rate["bare"], 3),
             "engine_vs_dataloader": round(rate["engine"] / rate["loader"], 3), "engine_gflops": round(gflops, 3),
             "fraction_of_matmul_peak": round(gflops / peak, 4),
             "dataloader_ratio_ceiling_at_matmul_peak": round(ceiling, 2),
             "median_engine_vs_bare": round(med["bare"] / med["engine"], 3),
             "median_engine_vs_dataloader": round(med["loader"] / med["engine"], 3)}
        results["workloads"][name] = w
        ok &= w["engine_vs_bare"] >= 0.9 and w["engine_vs_dataloader"] >= 1.5
        print(f"{name:<28}{w['engine_it_s']:>12}{w['bare_it_s']:>11}{w['dataloader_it_s']:>12}"
              f"{w['engine_vs_bare']:>10}{w['engine_vs_dataloader']:>11}{w['engine_gflops']:>9}"
              f"{w['fraction_of_matmul_peak']:>9.1%}")
    print("medians of the rounds: " + ", ".join(f"{k} eng/bare {w['median_engine_vs_bare']} eng/loader "
                                                 f"{w['median_engine_vs_dataloader']}" for k, w in results["workloads"].items()))
    print("ceiling: the engine/DataLoader ratio if every FLOP of a step ran at the matmul peak: "
          + ", ".join(f"{k} {w['dataloader_ratio_ceiling_at_matmul_peak']}" for k, w in results["workloads"].items()))
    results["targets"] = {"engine_vs_bare": ">= 0.9", "engine_vs_dataloader": ">= 1.5"}
    results["pass"] = bool(ok)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
