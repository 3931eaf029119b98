"""GPU throughput: ResNet-20 on CIFAR-shaped data (fake CIFAR-10 binary batches, 50000/10000 random
images) on CUDA, batch 128, SGD with momentum and weight decay, no augmentation:

* the engine (``execute`` into a fresh store: start, evaluations at start and end, resume points,
  metrics) against a plain PyTorch loop over the same data held on the device: target >= 0.95;
* the engine against a ``DataLoader`` loop reading batches from host memory: target >= 1.5x;
* N runs batched (``--batch-runs N``) against the same N runs trained singly by the local executor,
  N = 1, 4, 8, 16: target >= 4x runs per second at the best N.

Without CUDA it says so and ends with ``"pass": null``. ``--device cpu`` runs the same code on the CPU
with tiny sizes, to check the script itself (its numbers judge nothing). Last line JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from earlyphase.config import load_run_config
from earlyphase.data import load_dataset
from earlyphase.execute import ExecOptions, LocalExecutor, RunGraph
from earlyphase.models import build_model
from earlyphase.store import Store
from earlyphase.train.engine import execute
from earlyphase.train.work import WORK

TARGETS = {"engine_vs_plain": 0.95, "engine_vs_dataloader": 1.5, "batched_vs_single": 4.0}


def write_fake_cifar(root: Path, n_train: int, n_test: int) -> None:
    """CIFAR-10's binary layout: five training batches and a test batch of (label byte, 3072 pixel bytes)."""
    rng = np.random.default_rng(0)
    sizes = [n_train // 5] * 5 + [n_test]
    for name, n in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], sizes):
        records = np.concatenate([rng.integers(0, 10, (n, 1), dtype=np.uint8),
                                  rng.integers(0, 256, (n, 3072), dtype=np.uint8)], axis=1)
        (root / f"{name}.bin").write_bytes(records.tobytes())


def config(root: Path, steps: int, device: str, extra: tuple[str, ...] = ()):
    return load_run_config(preset="paper", overrides=[
        f'data.root="{root}"', "data.augment=false", f'train.steps="{steps}it"', "train.milestones=[]",
        'observe.eval_every=""', "observe.progress=false", f'observe.device="{device}"', *extra])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_seconds(cfg) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        execute(cfg, Store(d), progress=False)
        return time.perf_counter() - t


def plain_seconds(cfg, device: torch.device, steps: int, host: bool) -> float:
    """A bare loop: batches indexed from device-resident tensors, or a DataLoader over host tensors."""
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.out_dim).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    b = cfg.train.batch_size
    if host:
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=b, shuffle=True,
                            pin_memory=device.type == "cuda", drop_last=True)
        batches = (batch for _ in range(steps) for batch in loader)  # epoch after epoch
    else:
        x, y = data.x_train.to(device), data.y_train.to(device)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        if host:
            xb, yb = next(batches)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        else:
            idx = torch.randint(0, x.shape[0], (b,), device=device)
            xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t


def sweep_seconds(cfg, n: int, batch_runs: int) -> float:
    graph = RunGraph()
    for s in range(n):
        graph.add(cfg.replace(seed=s, data_seed=s))
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        report = LocalExecutor(1, progress=False, options=ExecOptions(batch_runs=batch_runs)).run(graph, Store(d),
                                                                                                 work=WORK)
        assert report.ok, report
        return time.perf_counter() - t


def measure(root: Path, device: str, steps: int, sizes: list[int]) -> dict:
    dev = torch.device(device)
    cfg = config(root, steps, device)
    load_dataset(cfg.data)  # read once for the process before anything is timed
    engine_seconds(config(root, 20, device))  # warm-up: kernels, allocator
    eng = engine_seconds(cfg)
    plain, loader = plain_seconds(cfg, dev, steps, host=False), plain_seconds(cfg, dev, steps, host=True)
    out = {"steps": steps, "engine_steps_per_s": round(steps / eng, 1), "plain_steps_per_s": round(steps / plain, 1),
           "dataloader_steps_per_s": round(steps / loader, 1), "engine_vs_plain": round(plain / eng, 3),
           "engine_vs_dataloader": round(loader / eng, 3), "batched": []}
    for n in sizes:
        single, group = sweep_seconds(cfg, n, 1), sweep_seconds(cfg, n, n)
        out["batched"].append({"n": n, "single_runs_per_s": round(n / single, 4),
                               "batched_runs_per_s": round(n / group, 4), "ratio": round(single / group, 3)})
        print(f"N={n}: batched/single {single / group:.2f}", flush=True)
    out["batched_vs_single"] = max(r["ratio"] for r in out["batched"])
    out["best_n"] = max(out["batched"], key=lambda r: r["ratio"])["n"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--sizes", default="1,4,8,16")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the GPU targets are judged on a machine with one")
        print(json.dumps({"benchmark": "gpu_throughput", "device": None, "targets": TARGETS, "pass": None}))
        return
    small = not args.device.startswith("cuda")  # a check of the script on the CPU, not a measurement
    n_train, n_test = (640, 128) if small else (50000, 10000)
    with tempfile.TemporaryDirectory() as d:
        write_fake_cifar(Path(d), n_train, n_test)
        out = measure(Path(d), args.device, args.steps, [int(s) for s in args.sizes.split(",")])
    name = torch.cuda.get_device_name() if not small else "cpu (script check only)"
    print(f"{name}: engine {out['engine_steps_per_s']} steps/s, plain {out['plain_steps_per_s']}, "
          f"DataLoader {out['dataloader_steps_per_s']}; batched/single best {out['batched_vs_single']} at N={out['best_n']}")
    verdict = None if small else all(out[k] >= v for k, v in TARGETS.items())
    print(json.dumps({"benchmark": "gpu_throughput", "device": name, **out, "targets": TARGETS, "pass": verdict}))


if __name__ == "__main__":
    main()
