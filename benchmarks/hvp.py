"""Cost of a Hessian-vector product and of the top-K eigensolve (docs/experiments/gradient_subspace.md).

Workloads, on the CPU with one torch thread: (a) cnn1d on a 2000-sample mnist1d training subset (the
gradient_subspace laptop preset), at initialization and after 300 SGD steps; (b) resnet_cifar_20 in eval
mode on 128 CIFAR-shaped random images (3x32x32, 10 classes).

For each: one full gradient of the mean loss against one Hessian-vector product on the same samples,
both HVP modes (forward-over-reverse: jvp of grad; reverse-over-reverse: grad of grad . v); the time
is the median CPU time (the process's, one torch thread: robust to a loaded machine) of ``--repeats``
calls after one warm-up. Then the top-K eigenpairs (K = 10) by our
Lanczos and by scipy's eigsh (ARPACK) at the same tolerance: CPU and wall time, products used, and
the CPU time against K products (the floor for any method that needs one product per eigenvector). The
eigenvalues of the two solvers are compared.

Prints a table, then as its last line one JSON object; pass: an HVP (the faster mode) costs at most 4
gradients on both models.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from earlyphase.config import load_run_config
from earlyphase.data import load_dataset
from earlyphase.models import build_model
from earlyphase.probes.hessian import LossFunction, arpack, lanczos

TARGET = 4.0


def clock() -> float:
    """This process's CPU time: with one torch thread it is the work done, whatever the machine's load
    (a shared machine's wall clock swings by multiples)."""
    return time.process_time()


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def cnn1d(trained: bool) -> LossFunction:
    cfg = load_run_config(preset="laptop")
    data = load_dataset(cfg.data)
    idx = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(0))[:2000]
    x, y = data.x_train[idx], data.y_train[idx]
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.out_dim)
    if trained:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        for _ in range(300):
            b = torch.randint(0, data.n_train, (100,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data.x_train[b]), data.y_train[b]).backward()
            opt.step()
    return LossFunction(model.eval(), x, y)


def resnet20() -> LossFunction:
    cfg = load_run_config(preset="laptop", overrides=['model.name="resnet_cifar_20"'])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)
    torch.manual_seed(0)
    return LossFunction(build_model(cfg.model, (3, 32, 32), 10).eval(), x, y)


def products(lf: LossFunction, repeats: int) -> dict:
    v = torch.randn(lf.dim, generator=torch.Generator().manual_seed(2))
    out = {"params": lf.dim, "grad_s": timed(lf.gradient, repeats)}
    for mode in ("fwd_rev", "rev_rev"):
        lf.mode = mode
        out[f"hvp_{mode}_s"] = timed(lambda: lf.hvp(v), repeats)
    out["best_mode"] = min(("fwd_rev", "rev_rev"), key=lambda m: out[f"hvp_{m}_s"])
    out["hvp_per_grad"] = out[f"hvp_{out['best_mode']}_s"] / out["grad_s"]
    lf.mode = out["best_mode"]
    return out


def eigensolves(lf: LossFunction, hvp_s: float, k: int, tol: float) -> dict:
    out = {}
    for name, solver in (("lanczos", lanczos), ("eigsh", arpack)):
        t, w = clock(), time.perf_counter()
        pairs = solver(lf.hvp, lf.dim, k, tol=tol, max_iter=600)
        wall, real = clock() - t, time.perf_counter() - w
        out[name] = {"cpu_s": wall, "wall_s": real, "matvecs": pairs.matvecs, "per_k_hvps": wall / (k * hvp_s),
                     "top": float(pairs.values[0]), "kth": float(pairs.values[-1]), "values": pairs.values}
    diff = np.abs(out["lanczos"].pop("values") - out["eigsh"].pop("values")).max()
    out["max_eigenvalue_difference"] = float(diff)
    out["faster"] = min(("lanczos", "eigsh"), key=lambda n: out[n]["cpu_s"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {}
    for name, make in (("cnn1d_init", lambda: cnn1d(False)), ("cnn1d_300_steps", lambda: cnn1d(True)),
                       ("resnet_cifar_20", resnet20)):
        lf = make()
        cost = products(lf, args.repeats if name != "resnet_cifar_20" else max(2, args.repeats // 2))
        solves = eigensolves(lf, cost[f"hvp_{cost['best_mode']}_s"], args.k, args.tol) if name.startswith("cnn1d") else {}
        report[name] = {**cost, **({"eigensolve": solves} if solves else {})}
        print(f"{name:>16}: {cost['params']} params; gradient {1e3 * cost['grad_s']:.1f} ms, HVP fwd-rev "
              f"{1e3 * cost['hvp_fwd_rev_s']:.1f} ms, rev-rev {1e3 * cost['hvp_rev_rev_s']:.1f} ms "
              f"-> {cost['hvp_per_grad']:.2f} gradients ({cost['best_mode']})")
        for solver in ("lanczos", "eigsh"):
            if solves:
                s = solves[solver]
                print(f"{'':>16}  top-{args.k} by {solver:<7}: {s['cpu_s']:.2f} s CPU ({s['wall_s']:.2f} s wall), {s['matvecs']} HVPs, "
                      f"{s['per_k_hvps']:.1f}x the time of {args.k} HVPs; λ1 {s['top']:.4g}, λ{args.k} {s['kth']:.4g}")
        if solves:
            print(f"{'':>16}  eigenvalues agree within {solves['max_eigenvalue_difference']:.2e}; faster: {solves['faster']}")
    passed = all(r["hvp_per_grad"] <= TARGET for r in report.values())
    print(json.dumps({"benchmark": "hvp", "target_hvp_per_grad": TARGET, "threads": args.threads, **report,
                      "pass": passed}, default=float))


if __name__ == "__main__":
    main()
