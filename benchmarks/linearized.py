"""Cost of the linearization lens: one side-by-side step (the network and its first-order Taylor model
in the parameters, each updated on the same batch) against one plain step of the same network.

Workload: the laptop lottery preset's network and data (cnn1d on mnist1d, 8000 training samples,
batch 100, SGD momentum 0.9, weight decay 1e-4), on the CPU with one thread. The plain step is the
engine's own loop (``train_loop``, no evaluations); the side-by-side step is
``earlyphase.probes.linearize.SideBySide.step``. Both keep training across rounds (steady state) and
are timed in interleaved rounds, so machine noise hits both alike; best-of and median are printed,
wall clock and process CPU time.

Beside it, the ways to get the Taylor model's loss gradient on a batch (the part the lens adds), each
checked against the others: ``jvp+backward`` (what the lens uses: torch.func.jvp, autograd through
the tangent), ``jvp+vjp`` (the tangent without autograd, then torch.func.vjp at theta0 for J^T g),
``dual+backward`` (torch.autograd.forward_ad dual tensors instead of torch.func.jvp: no functorch
wrapping, but they cannot be nested inside another forward-mode transform) and
``linearize`` (torch.func.linearize at theta0 per batch, autograd through its jvp function).

Prints a table, then one JSON line; ``"pass": true`` when the best side-by-side / plain ratio is at most 4.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.autograd.forward_ad as fwad
from torch.func import functional_call, linearize, vjp

from earlyphase.config import load_run_config
from earlyphase.data import load_dataset
from earlyphase.models import build_model
from earlyphase.probes.linearize import Batches, SideBySide, taylor_outputs
from earlyphase.train.data_order import DataOrder
from earlyphase.train.loop import LoopHooks, LoopPlan, compute_loss, make_optimizer, train_loop
from earlyphase.train.schedules import lr_table

LIMIT = 4.0


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float], steps: int) -> tuple[float, float]:
    """Milliseconds per step since ``t0``: (wall, CPU)."""
    wall, cpu = clock()
    return (wall - t0[0]) / steps * 1e3, (cpu - t0[1]) / steps * 1e3


class Plain:
    """The engine's loop on the network, continued from round to round."""

    def __init__(self, model, data, cfg, total: int) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.opt = make_optimizer(cfg.train, model)
        self.order = DataOrder(data.n_train, cfg.train.batch_size, cfg.data_seed, augment=False, shuffle=True,
                               device=torch.device("cpu"))
        self.lrs = lr_table(cfg.train, 0, total, self.order.steps_per_epoch)
        self.hooks = LoopHooks(checkpoint=lambda s: None, resume=lambda s, r: None)

    def run(self, start: int, end: int) -> None:
        plan = LoopPlan(start=start, end=end, checkpoints=set(), evals=set(), resume_every=10**9,
                        lrs=self.lrs[start:end])
        train_loop(self.model, self.opt, self.data, self.order, self.cfg.train, plan, self.hooks, [], None, [], False,
                   2000)


def gradient_methods(sbs: SideBySide, loss_kind: str) -> dict[str, Callable[[torch.Tensor, torch.Tensor], list]]:
    """Each method returns the Taylor model's loss gradient on (x, y) in ``sbs.tm.names`` order."""
    tm, params = sbs.tm, sbs.lin_params
    full = {**tm.frozen}

    def f(x):
        return lambda p: functional_call(tm.shell, ({**full, **p},), (x,))

    def jvp_backward(x, y):  # the lens's own pass
        f0, tangent = taylor_outputs(tm, params, x)
        return list(torch.autograd.grad(compute_loss(loss_kind, f0 + tangent, y), params))

    def jvp_vjp(x, y):
        with torch.no_grad():
            f0, tangent = taylor_outputs(tm, [p.detach() for p in params], x)
        out = (f0 + tangent).requires_grad_()
        g, = torch.autograd.grad(compute_loss(loss_kind, out, y), out)
        grads = vjp(f(x), tm.theta0)[1](g)[0]
        return [grads[n] for n in tm.names]

    def dual_backward(x, y):
        with fwad.dual_level():
            duals = {n: fwad.make_dual(tm.theta0[n], p - tm.theta0[n]) for n, p in zip(tm.names, params)}
            f0, tangent = fwad.unpack_dual(f(x)(duals))
        return list(torch.autograd.grad(compute_loss(loss_kind, f0 + tangent, y), params))

    def linearized(x, y):
        with warnings.catch_warnings():  # its graph tracing warns about constants it folds
            warnings.simplefilter("ignore")
            f0, jvp_fn = linearize(f(x), tm.theta0)
        tangent = jvp_fn({n: p - tm.theta0[n] for n, p in zip(tm.names, params)})
        return list(torch.autograd.grad(compute_loss(loss_kind, f0 + tangent, y), params))

    return {"jvp+backward": jvp_backward, "jvp+vjp": jvp_vjp, "dual+backward": dual_backward, "linearize": linearized}


def agreement(methods: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest absolute difference between any method's gradient and the first method's."""
    ref = next(iter(methods.values()))(x, y)
    return max(float((a - b).abs().max()) for fn in methods.values() for a, b in zip(fn(x, y), ref))


def time_rounds(args, cfg, data) -> dict[str, list[tuple[float, float]]]:
    """Interleaved rounds of plain steps, side-by-side steps and each gradient method."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.out_dim)
    total = args.rounds * args.steps + args.steps
    order = DataOrder(data.n_train, cfg.train.batch_size, cfg.data_seed, augment=False, shuffle=True,
                      device=torch.device("cpu"))
    sbs = SideBySide(model, data, cfg.train, order, total)
    plain = Plain(copy.deepcopy(model), data, cfg, total)
    methods = gradient_methods(sbs, cfg.train.loss)
    batches = Batches(data, order)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "side_by_side": [], **{k: [] for k in methods}}
    for t in range(args.steps):  # warm-up: kernels, first-call overheads of torch.func
        sbs.step(t)
    plain.run(0, args.steps)
    for r in range(args.rounds):
        start, end = (r + 1) * args.steps, (r + 2) * args.steps
        t0 = clock()
        plain.run(start, end)
        times["plain"].append(since(t0, args.steps))
        t0 = clock()
        for t in range(start, end):
            sbs.step(t)
        times["side_by_side"].append(since(t0, args.steps))
        for name, fn in methods.items():
            n = args.steps if name != "linearize" else max(1, args.steps // 10)  # it traces a graph per batch
            t0 = clock()
            for t in range(start, start + n):
                fn(*batches(t))
            times[name].append(since(t0, n))
    return times


def summarize(times: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, v in times.items():
        wall, cpu = [w for w, _ in v], [c for _, c in v]
        out[name] = {"wall_ms_best": round(min(wall), 3), "wall_ms_median": round(statistics.median(wall), 3),
                     "cpu_ms_best": round(min(cpu), 3), "cpu_ms_median": round(statistics.median(cpu), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="steps per round and loop")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_run_config(preset="laptop", overrides=[f"observe.threads={args.threads}"])
    data = load_dataset(cfg.data)
    times = time_rounds(args, cfg, data)
    s = summarize(times)
    print(f"cnn1d on mnist1d, batch {cfg.train.batch_size}, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.steps} steps (ms per step)")
    print(f"{'loop / method':<16}{'wall best':>11}{'wall med':>10}{'CPU best':>10}{'CPU med':>9}")
    for name, v in s.items():
        print(f"{name:<16}{v['wall_ms_best']:>11.3f}{v['wall_ms_median']:>10.3f}{v['cpu_ms_best']:>10.3f}"
              f"{v['cpu_ms_median']:>9.3f}")
    ratio = lambda key: round(s["side_by_side"][key] / s["plain"][key], 3)  # noqa: E731
    torch.manual_seed(0)
    order = DataOrder(data.n_train, cfg.train.batch_size, 0, augment=False, shuffle=True, device=torch.device("cpu"))
    probe = SideBySide(build_model(cfg.model, data.input_shape, data.out_dim), data, cfg.train, order, 10)
    probe.step(0)
    diff = agreement(gradient_methods(probe, cfg.train.loss), *Batches(data, order)(1))
    result = {"workload": "cnn1d/mnist1d b100", "threads": args.threads, "steps_per_round": args.steps,
              "rounds": args.rounds, "ms_per_step": s, "ratio_wall_best": ratio("wall_ms_best"),
              "ratio_wall_median": ratio("wall_ms_median"), "ratio_cpu_best": ratio("cpu_ms_best"),
              "ratio_cpu_median": ratio("cpu_ms_median"), "gradient_methods_max_abs_diff": diff,
              "target": f"ratio_wall_best <= {LIMIT}"}
    print(f"side-by-side / plain: wall best {result['ratio_wall_best']}, median {result['ratio_wall_median']}; "
          f"CPU best {result['ratio_cpu_best']}, median {result['ratio_cpu_median']}; "
          f"gradient methods agree to {diff:.2e}")
    result["pass"] = bool(result["ratio_wall_best"] <= LIMIT)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
