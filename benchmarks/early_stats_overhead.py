"""Overhead of the early-phase statistics recorder (docs/experiments/early_stats.md) on a training step.

The issue's ratio: step time with every per-step §2.3 statistic (all but evaluation and the
final-weight ones) recorded at every step, to step time with none. Both arms drive the real hot loop,
``earlyphase.train.loop.train_loop``, on the same model, data, optimizer and steps; the only
difference is ``EarlyStatsRecorder()`` in the recorder list of one of them. The loop plan has no
evaluation, checkpoint, resume or progress step, so neither arm pays for them; the recorder's
``start`` (θ0 packing, once per run) runs before the clock starts and its one read-back (``collect``)
after it stops, and the rows it returns are checked: one per statistic for every step.

Workloads: (a) cnn1d on mnist1d, batch 100 (the laptop preset and its data); (b) resnet_cifar_20 on
CIFAR-shaped random data (3x32x32, 10 classes, batch 128, no augmentation), fewer steps since it is
slow on a CPU. torch runs with 1 thread in both arms (``--threads``, set once for the process), and
the process is pinned to one CPU (``--cpu``), so both arms share one core and its neighbours' load.

How the arms are interleaved: a shared machine's load swings by tens of percent from one second to
the next, more than the effect measured. So within a round the two arms train in lockstep: each
runs ``train_loop`` in its own thread, and a turn-taking recorder (the same in both arms, last in the
list) hands over after every step, so only one arm computes at a time and step t of one arm runs
next to step t of the other. A step's time is the wall clock from the end of one hand-over to the
start of the next (the whole loop iteration, recorder included; the hand-over itself in neither).
A round's ratio is (median step time with the recorder) / (median step time without); the judged
ratio is the median over rounds (which arm goes first alternates). CPU time per step (the thread's)
is reported alongside, and the recorder's own cost, ``after_step`` timed call by call in a separate
solo run (so its calls are unwrapped in the judged rounds).

Prints a table, then as its last line one JSON object; pass: both ratios <= 1.05.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

from earlyphase.config import load_run_config
from earlyphase.data import load_dataset
from earlyphase.data.base import Dataset
from earlyphase.models import build_model, prunable_names
from earlyphase.probes.early_stats import EarlyStatsRecorder
from earlyphase.train.data_order import DataOrder
from earlyphase.train.loop import LoopHooks, LoopPlan, make_optimizer, train_loop
from earlyphase.train.recorders import RecordContext, Recorder

TARGET = 1.05
STATS = ("grad_norm", "weight_magnitude", "sign_change", "dist_init", "cos_init", "weight_traj")


def cnn1d_workload():
    cfg = load_run_config(preset="laptop")
    return cfg, load_dataset(cfg.data)


def resnet20_workload(n_train: int = 1280):
    cfg = load_run_config(preset="laptop", overrides=['model.name="resnet_cifar_20"', "train.batch_size=128"])
    g = torch.Generator().manual_seed(0)
    data = Dataset("cifar-shaped-random", torch.randn(n_train, 3, 32, 32, generator=g),
                   torch.randint(0, 10, (n_train,), generator=g), torch.randn(256, 3, 32, 32, generator=g),
                   torch.randint(0, 10, (256,), generator=g), num_classes=10, augment=False)
    return cfg, data


class Arm:
    """One run of the real loop: model, optimizer, data order, a plan with no observation steps."""

    def __init__(self, cfg, data: Dataset, steps: int, with_stats: bool, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.data, self.steps = cfg, data, steps
        self.model = build_model(cfg.model, data.input_shape, data.out_dim)
        self.optimizer = make_optimizer(cfg.train, self.model)
        self.order = DataOrder(data.n_train, cfg.train.batch_size, cfg.data_seed, augment=data.augment,
                               shuffle=True, device=torch.device("cpu"))
        self.order.batch_slice(0)  # the first epoch's permutation, drawn before any clock starts
        self.plan = LoopPlan(start=0, end=steps, checkpoints=set(), evals=set(), resume_every=10 ** 9,
                             progress_every=0, lrs=[cfg.train.lr] * steps)
        self.hooks = LoopHooks(checkpoint=lambda step: None, resume=lambda step, rows: None)
        theta0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ctx = RecordContext(model=self.model, start=0, end=steps, evals=[steps],
                                 prunable=prunable_names(self.model, cfg.model.prune_output),
                                 initial_state=lambda: theta0)
        self.recorder = EarlyStatsRecorder() if with_stats else None

    def run(self, extra: list[Recorder]) -> None:
        recorders = ([self.recorder] if self.recorder is not None else []) + extra
        train_loop(self.model, self.optimizer, self.data, self.order, self.cfg.train, self.plan, self.hooks,
                   recorders, None, [], eval_train=False, eval_batch=self.cfg.observe.eval_batch,
                   record_ctx=self.ctx)

    def check(self) -> None:
        """Outside the clock: the recorder has one value of each statistic for every step."""
        if self.recorder is None:
            return
        rows = self.recorder.collect(self.model, self.steps)
        for name in STATS:
            layer = self.recorder.traj_layers[0] if name == "weight_traj" else ""
            got = sorted(r[0] for r in rows if r[1] == name and r[2] == layer)
            want = list(range(1 if name == "grad_norm" else 0, self.steps + 1))
            assert got == want, f"{name}: recorded steps {got[:5]}... not {want[:5]}..."


class Turns:
    """Two threads that take turns, one training step each."""

    def __init__(self, first: int) -> None:
        self.cond = threading.Condition()
        self.turn = first
        self.done = [False, False]

    def wait_for(self, me: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == me or self.done[1 - me])

    def hand_over(self, me: int) -> None:
        with self.cond:
            self.turn = 1 - me
            self.cond.notify_all()

    def finish(self, me: int) -> None:
        with self.cond:
            self.done[me] = True
            self.turn = 1 - me
            self.cond.notify_all()


class TakeTurns(Recorder):
    """Last recorder of an arm: times the arm's steps and hands over to the other arm after each."""

    name = "take_turns"

    def __init__(self, turns: Turns, me: int) -> None:
        self.turns, self.me = turns, me
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def start(self, ctx: RecordContext) -> None:
        self.turns.wait_for(self.me)
        self.t, self.c = time.perf_counter(), time.thread_time()

    def after_step(self, model: torch.nn.Module, step: int, loss: torch.Tensor) -> None:
        self.wall.append(time.perf_counter() - self.t)
        self.cpu.append(time.thread_time() - self.c)
        self.turns.hand_over(self.me)
        self.turns.wait_for(self.me)
        self.t, self.c = time.perf_counter(), time.thread_time()


def lockstep_round(cfg, data: Dataset, steps: int, stats_first: bool) -> dict[str, TakeTurns]:
    arms = {"with": Arm(cfg, data, steps, True), "without": Arm(cfg, data, steps, False)}
    turns = Turns(first=0 if stats_first else 1)
    takers = {"with": TakeTurns(turns, 0), "without": TakeTurns(turns, 1)}
    errors: list[BaseException] = []

    def body(name: str) -> None:
        try:
            arms[name].run([takers[name]])
        except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
            errors.append(e)
        finally:
            turns.finish(takers[name].me)

    threads = [threading.Thread(target=body, args=(name,)) for name in arms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    arms["with"].check()
    return takers


def solo_after_step_us(cfg, data: Dataset, steps: int) -> float:
    """CPU time inside ``after_step`` per step (reductions included), timed call by call, one arm alone."""
    arm = Arm(cfg, data, steps, True)
    plain, inside = arm.recorder.after_step, [0.0]

    def timed(model, step, loss):
        t0 = time.thread_time()
        plain(model, step, loss)
        inside[0] += time.thread_time() - t0

    arm.recorder.after_step = timed
    arm.run([])
    arm.check()
    return inside[0] / steps * 1e6


def measure(name: str, cfg, data: Dataset, steps: int, rounds: int, warmup: int) -> dict:
    lockstep_round(cfg, data, warmup, True)
    after_us = solo_after_step_us(cfg, data, steps)
    per_round = []
    wall = {"with": [], "without": []}
    cpu = {"with": [], "without": []}
    for r in range(rounds):
        takers = lockstep_round(cfg, data, steps, stats_first=r % 2 == 0)
        med = {k: statistics.median(t.wall) for k, t in takers.items()}
        per_round.append(med["with"] / med["without"])
        for k, t in takers.items():
            wall[k].append(med[k])
            cpu[k].append(statistics.median(t.cpu))
    m = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    return {"workload": name, "steps_per_round": steps, "rounds": rounds,
            "ms_per_step_without": round(m["without"] * 1e3, 4), "ms_per_step_with": round(m["with"] * 1e3, 4),
            "ratio": round(statistics.median(per_round), 4),
            "ratio_rounds_min_max": [round(min(per_round), 4), round(max(per_round), 4)],
            "cpu_ratio": round(c["with"] / c["without"], 4),
            "after_step_us": round(after_us, 1),
            "ratio_from_after_step": round(1 + after_us * 1e-6 / m["without"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cnn1d-steps", type=int, default=400, help="steps per round (cnn1d)")
    ap.add_argument("--rounds", type=int, default=9, help="rounds (cnn1d)")
    ap.add_argument("--resnet-steps", type=int, default=12, help="steps per round (resnet20)")
    ap.add_argument("--resnet-rounds", type=int, default=5, help="rounds (resnet20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)),
                    help="pin this process to one CPU so both arms share a core (-1: do not pin)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the same in both arms; train_loop does not change it
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    load_before = os.getloadavg()[0]

    results = [measure("cnn1d/mnist1d b100", *cnn1d_workload(), args.cnn1d_steps, args.rounds, warmup=50),
               measure("resnet_cifar_20/random 3x32x32 b128", *resnet20_workload(), args.resnet_steps,
                       args.resnet_rounds, warmup=2)]

    load_after = os.getloadavg()[0]
    pinned = f"pinned to CPU {args.cpu}" if args.cpu >= 0 else "not pinned"
    print(f"early_stats recorder overhead: torch {torch.__version__}, {args.threads} thread(s) in both arms, "
          f"{pinned}, lockstep rounds; load average {load_before:.1f} before, {load_after:.1f} after, "
          f"{os.cpu_count()} CPUs")
    print(f"{'workload':<37}{'steps':>6}{'rounds':>7}{'ms/step none':>13}{'ms/step stats':>14}{'ratio':>7}"
          f"{'rounds min-max':>16}{'cpu ratio':>10}{'after_step us':>14}{'1+that':>8}")
    for w in results:
        lo, hi = w["ratio_rounds_min_max"]
        print(f"{w['workload']:<37}{w['steps_per_round']:>6}{w['rounds']:>7}{w['ms_per_step_without']:>13.3f}"
              f"{w['ms_per_step_with']:>14.3f}{w['ratio']:>7.3f}{f'{lo:.3f}-{hi:.3f}':>16}{w['cpu_ratio']:>10.3f}"
              f"{w['after_step_us']:>14.1f}{w['ratio_from_after_step']:>8.4f}")
    print("ratio (judged): median over rounds of (median step time with stats) / (median step time without), the "
          "arms in lockstep; cpu ratio: the same from the threads' CPU time; after_step us: CPU time inside the "
          "recorder per step (batched reductions included), timed call by call in a solo run; 1+that: 1 + it / step")
    cnn, res = results
    ok = cnn["ratio"] <= TARGET and res["ratio"] <= TARGET
    print(json.dumps({"cnn1d_ratio": cnn["ratio"], "resnet20_ratio": res["ratio"], "target": TARGET, "pass": ok,
                      "threads": args.threads, "cpu": args.cpu,
                      "load_average": [round(load_before, 2), round(load_after, 2)],
                      "workloads": results}))


if __name__ == "__main__":
    main()
