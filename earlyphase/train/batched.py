"""Batched runs: a group of runs of one architecture, data and schedule trained as one batched model
(docs/scale.md). The runs' parameters, buffers (BatchNorm statistics per run), masks and momentum
buffers are stacked along a leading run axis (torch.func ``stack_module_state``); each step gathers
every run's own batch (its own data order and augmentation), evaluates the network once per run
under ``vmap`` of ``functional_call``, and takes one SGD step on the stacked tensors, which is each
run's own step because SGD with momentum and weight decay is elementwise. Each run keeps its own
directory, resume points, checkpoints and metrics, in exactly the format of a run trained alone (a
killed group resumes batched, or singly), and its provenance records the mode and the group.

Supported: SGD with cross-entropy, fp32, no recorders, no per-parameter learning rates; starting
states of any kind (seeds, stored weights, masks, perturbations), resolved per run as alone. Other
runs train alone, and their provenance says why."""
from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..config import RunConfig, canonical_json, run_id, to_dict, with_current_data
from ..data import load_dataset
from ..data.transforms import crop_flip
from ..devices import resolve_device
from ..errors import NonFiniteLoss, UserError
from ..store import Store
from ..store.metrics import Row
from ..store.writer import RunWriter
from ..threads import pinned_threads
from . import mode
from .budget import check_fits
from .data_order import DataOrder
from .engine import execute, stored_complete
from .optim import load_optimizer_state, make_optimizer, no_dynamo, optimizer_state, step_function
from .provenance import provenance
from .resume import restore
from .schedules import RunSchedule, run_schedule
from .start import StartState, resolve_start


def refusal(cfg: RunConfig) -> str | None:
    """Why ``cfg`` cannot train batched (None: it can)."""
    t = cfg.train
    reasons = [(t.optimizer != "sgd", f"optimizer {t.optimizer} (batched runs use SGD)"),
               (bool(t.lr_scales), "per-parameter learning rates"), (t.loss != "cross_entropy", f"loss {t.loss}"),
               (t.precision != "fp32" or t.channels_last, "bf16 or channels_last (batched runs are fp32)"),
               (bool(cfg.observe.recorders), "recorders observe one model at a time")]
    return next((why for bad, why in reasons if bad), None)


def batch_key(cfg: RunConfig) -> str | None:
    """Runs with equal keys can share a batched model: same data, architecture, optimizer and
    schedule, observations and starting step; they may differ in seeds, start weights, masks and
    perturbations. None: this run trains alone."""
    if refusal(cfg) is not None:
        return None
    return canonical_json({"data": to_dict(cfg.data), "model": to_dict(cfg.model), "train": to_dict(cfg.train),
                           "observe": to_dict(cfg.observe), "start": [str(cfg.start_step), cfg.restart_schedule,
                                                                      cfg.start_run is None]})


def train_group(cfgs: list[RunConfig], store: Store) -> dict[str, str | None]:
    """Train a planned group batched (an error fails every run of it); runs the group cannot take
    train alone, one after another, saying why: returns each run's error or None."""
    cfgs = [with_current_data(c) for c in cfgs]  # a file-backed dataset's content is in the run id
    todo = [c for c in cfgs if not stored_complete(c, store)]
    reason = _group_refusal(todo, store)
    if reason is None:
        errors = _Group(todo, store).run() if todo else {}
        return {run_id(c): errors.get(run_id(c)) for c in cfgs}
    errors: dict[str, str | None] = {run_id(c): None for c in cfgs}
    for cfg in todo:
        try:
            execute(cfg, store, progress=False, execution={"mode": "single", "batch_refused": reason})
        except UserError as e:  # the others still train
            errors[run_id(cfg)] = str(e)
        except Exception as e:
            errors[run_id(cfg)] = f"{type(e).__name__}: {e}"
    return errors


def _group_refusal(cfgs: list[RunConfig], store: Store) -> str | None:
    """Why these runs cannot train as one group now (a lone run still trains batched, as a group of
    one, so every run of a batched sweep that can be batched is computed the same way)."""
    if not cfgs:
        return None
    if len({batch_key(c) for c in cfgs}) != 1 or batch_key(cfgs[0]) is None:
        return refusal(cfgs[0]) or refusal(cfgs[-1]) or "runs of different shapes"
    rds = [store.run(run_id(c)) for c in cfgs]
    if any(rd.exists() and rd.status()["status"] == "done" for rd in rds):
        return "a finished run re-run to add observations"
    steps = {int(rd.resume_path.is_file() and _resume_step(rd.resume_path)) for rd in rds}
    return None if len(steps) == 1 else f"its runs resume from different steps {sorted(steps)}"


def _resume_step(path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return int(f.metadata()["step"])


class _Stack:
    """The group's state along a leading run axis: parameters (leaf tensors), buffers, masks."""

    def __init__(self, starts: list[StartState]) -> None:
        self.template = starts[0].model
        self.params, self.buffers = stack_module_state([s.model for s in starts])
        names = [{p: n for n, p in s.model.named_parameters()} for s in starts]
        masked = {names[i][p] for i, s in enumerate(starts) for p in (s.mask or {})}
        self.masks = {n: torch.stack([_mask_of(s, names[i], n) for i, s in enumerate(starts)]) for n in sorted(masked)}
        self.keys = list(self.template.state_dict())

    def forward(self, x: torch.Tensor, stacked_x: bool = True) -> torch.Tensor:
        """Every run's output: x is runs x batch x ..., or one batch for all runs."""
        def one(p, b, xi):
            return functional_call(self.template, (p, b), (xi,))
        return vmap(one, in_dims=(0, 0, 0 if stacked_x else None))(self.params, self.buffers, x)

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Run i's ``model.state_dict()``, as checkpoints hold it."""
        both = {**self.params, **self.buffers}
        return {f"model.{k}": both[k][i].detach() for k in self.keys}


def _mask_of(start: StartState, names: dict, name: str) -> torch.Tensor:
    mask = {names[p]: m for p, m in (start.mask or {}).items()}
    param = dict(start.model.named_parameters())[name]
    return mask.get(name, torch.ones_like(param))


class _Group:
    """One batched training of a group's runs, into each run's own directory."""

    def __init__(self, cfgs: list[RunConfig], store: Store) -> None:
        self.cfgs, self.store, self.cfg = cfgs, store, cfgs[0]
        self.rids = [run_id(c) for c in cfgs]

    def run(self) -> dict[str, str]:
        """Train the group; returns the errors of runs whose loss became NaN or infinite."""
        cfg = self.cfg
        self.device = resolve_device(cfg.observe.device)
        check_fits(cfg)
        with pinned_threads(cfg.observe.threads), mode.deterministic(cfg):
            self.data = load_dataset(cfg.data, self.device)
            self.sched = run_schedule(cfg, self.data.n_train)
            starts = [resolve_start(c, self.data, self.store, self.device, self.sched.start) for c in self.cfgs]
            with contextlib.ExitStack() as stack:
                writers = [stack.enter_context(RunWriter.open(self.store.run(rid), {
                    "kind": "train", "run_id": rid, "config": to_dict(c, trajectory=True)}))
                    for rid, c in zip(self.rids, self.cfgs)]
                for w in writers:
                    stack.enter_context(w.attempt())
                return self._train(writers, starts)

    def _train(self, writers: list[RunWriter], starts: list[StartState]) -> dict[str, str]:
        """Restore resume points (each through the single-run path), stack, train, finish each run:
        done, or failed at the first evaluation whose loss is not finite (the values the loop reads
        back anyway; the single-run loop also flags the training loss on the device)."""
        t0 = time.time()
        first, rows = self.sched.start, [list(s.rows) for s in starts]
        momentum = []
        for i, (w, s) in enumerate(zip(writers, starts)):
            opt = make_optimizer(self.cfg.train, s.model)
            point = w.resume_point()
            if point is not None:
                restore(point, s.model, opt, w.rd.resume_path)
                first, rows[i] = point.step, point.rows
            momentum.append(optimizer_state(opt))
            group = {"mode": "batched", "group": self.rids, "group_index": i}
            w.begin(provenance(self.data, self.device, torch.get_num_threads(), mode.describe(self.cfgs[i], group)),
                    resumed_from=first if point is not None else None)
        stack = _Stack(starts)
        opt = _stacked_optimizer(self.cfg, stack, momentum)
        _Loop(self, writers, stack, opt, rows).run(first)
        errors = {}
        for w, cfg, r in zip(writers, self.cfgs, rows):
            bad = min((row[0] for row in r if row[1] == "loss" and not math.isfinite(row[4])), default=None)
            if bad is None:
                w.finish(r, self.sched.observations(cfg), time.time() - t0)
            else:
                error = NonFiniteLoss(bad)
                w.fail(f"NonFiniteLoss: {error}", step=bad)
                errors[w.rd.id] = str(error)
        return errors


def _stacked_optimizer(cfg: RunConfig, stack: _Stack, momentum: list[dict]) -> torch.optim.SGD:
    """SGD over the stacked parameters, with each run's momentum buffers (if resumed) stacked."""
    t = cfg.train
    params = list(stack.params.values())
    with no_dynamo():
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                              weight_decay=t.weight_decay, foreach=True)
    if all(momentum):
        state = {j: {"momentum_buffer": torch.stack([m[j]["momentum_buffer"] for m in momentum])}
                 for j in range(len(params))}
        load_optimizer_state(opt, state)
    return opt


class _Loop:
    """The batched steps, evaluations, checkpoints and resume points (the single loop's plan)."""

    def __init__(self, group: _Group, writers: list[RunWriter], stack: _Stack, opt: torch.optim.SGD,
                 rows: list[list[Row]]) -> None:
        self.g, self.writers, self.stack, self.opt, self.rows = group, writers, stack, opt, rows
        data, cfg = group.data, group.cfg
        batch = data.n_train if cfg.train.full_batch else cfg.train.batch_size
        self.orders = [DataOrder(data.n_train, batch, c.data_seed, augment=data.augment,
                                 shuffle=not cfg.train.full_batch, device=group.device) for c in group.cfgs]
        self.step_fn = step_function(opt)
        rows_max = len(self.orders) * self.orders[0].batch
        self.idx_buf = torch.empty(rows_max, dtype=torch.int64, device=group.device)
        self.x_buf = data.x_train.new_empty((rows_max, *data.x_train.shape[1:]))
        self.y_buf = data.y_train.new_empty((rows_max, *data.y_train.shape[1:]))
        self.mask_params = [stack.params[n] for n in stack.masks]
        self.mask_values = list(stack.masks.values())

    def run(self, first: int) -> None:
        sched: RunSchedule = self.g.sched
        lrs = sched.lrs(self.g.cfg.train, first)
        evals, ckpts, every = set(sched.evals), set(sched.checkpoints), max(sched.spe, 20)
        if first not in {int(r[0]) for r in self.rows[0] if r[1] == "loss"}:
            self.observe(first, evals, ckpts)
        for t in range(first, sched.total):
            for group in self.opt.param_groups:
                group["lr"] = lrs[t - first]
            self.update(*self.batch(t))
            step = t + 1
            if step in evals or step in ckpts:
                self.observe(step, evals, ckpts)
            if step % every == 0 and step < sched.total:
                self.save_resume(step)

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every run's batch of step t, runs x batch x ...: its own order and augmentation, gathered
        into buffers allocated once."""
        data, runs = self.g.data, len(self.orders)
        windows = [o.batch_slice(t) for o in self.orders]
        n = runs * (windows[0].stop - windows[0].start)
        idx = torch.cat([o.perm[w] for o, w in zip(self.orders, windows)], out=self.idx_buf[:n])
        xb = torch.index_select(data.x_train, 0, idx, out=self.x_buf[:n])
        yb = torch.index_select(data.y_train, 0, idx, out=self.y_buf[:n])
        if data.augment:
            dx, dy, flip = (torch.cat([getattr(o, a)[w] for o, w in zip(self.orders, windows)])
                            for a in ("dx", "dy", "flip"))
            xb = crop_flip(xb, dx, dy, flip, pad=self.orders[0].pad)
        return xb.view(runs, -1, *xb.shape[1:]), yb.view(runs, -1)

    def update(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Each run's mean loss; their sum's gradient is every run's own gradient."""
        for p in self.opt.param_groups[0]["params"]:
            p.grad = None
        out = self.stack.forward(xb)
        loss = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape).mean(1)
        loss.sum().backward()
        if self.mask_params:
            torch._foreach_mul_([p.grad for p in self.mask_params], self.mask_values)
        self.step_fn()
        if self.mask_params:
            with torch.no_grad():
                torch._foreach_mul_(self.mask_params, self.mask_values)

    def observe(self, step: int, evals: set[int], ckpts: set[int]) -> None:
        cfg = self.g.cfg
        if step in evals:
            splits = [("test", self.g.data.x_test, self.g.data.y_test)]
            if cfg.observe.eval_train:
                splits.append(("train", self.g.data.x_train, self.g.data.y_train))
            for split, x, y in splits:
                for i, (loss, acc) in enumerate(evaluate(self.stack, x, y, cfg.observe.eval_batch)):
                    self.rows[i].extend([(step, "loss", "", split, loss), (step, "accuracy", "", split, acc)])
        if step in ckpts:
            for i, w in enumerate(self.writers):
                w.checkpoint(step, self.stack.state(i), {"step": str(step), "run_id": w.rd.id, "model": cfg.model.name})

    def save_resume(self, step: int) -> None:
        """Each run's resume point, as a run trained alone writes it (so it can resume either way)."""
        state = optimizer_state(self.opt)
        for i, w in enumerate(self.writers):
            tensors = self.stack.state(i)
            tensors.update({f"optim.{j}.momentum_buffer": s["momentum_buffer"][i] for j, s in state.items()})
            meta = {"step": str(step), "run_id": w.rd.id, "optimizer": canonical_json({str(j): {} for j in state})}
            w.save_resume(step, tensors, meta, self.rows[i])


@torch.no_grad()
def evaluate(stack: _Stack, x: torch.Tensor, y: torch.Tensor, batch: int) -> list[tuple[float, float]]:
    """Every run's mean loss and accuracy on a split, in eval mode; one host sync at the end."""
    stack.template.eval()
    runs = next(iter(stack.params.values())).shape[0]
    loss_sum = torch.zeros(runs, device=x.device, dtype=torch.float64)
    hits = torch.zeros(runs, device=x.device, dtype=torch.int64)
    for i in range(0, x.shape[0], batch):
        out = stack.forward(x[i:i + batch], stacked_x=False)
        yi = y[i:i + batch].expand(runs, -1)
        loss_sum += F.cross_entropy(out.flatten(0, 1), yi.flatten(), reduction="none").view(runs, -1).sum(1).double()
        hits += (out.argmax(-1) == yi).sum(1)
    stack.template.train()
    n = max(1, x.shape[0])
    return [(ls / n, h / n) for ls, h in zip(loss_sum.tolist(), hits.tolist())]


__all__ = ["batch_key", "train_group", "refusal"]
