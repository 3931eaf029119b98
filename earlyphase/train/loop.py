"""The hot loop: readable top to bottom, no host syncs except at evaluation, checkpoint and
progress steps, masks applied with fused foreach ops."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data.base import Dataset
from ..data.transforms import crop_flip
from ..errors import NonFiniteLoss, UserError
from ..store.metrics import Row
from .data_order import DataOrder
from .optim import make_optimizer, step_function
from .recorders import RecordContext, Recorder


def compute_loss(kind: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy, or the square loss (1/2n) sum_i ||f(x_i) - y_i||^2 (one-hot for class labels)."""
    if kind == "cross_entropy":
        return F.cross_entropy(out, y, reduction=reduction)
    target = y.to(out.dtype).unsqueeze(-1) if y.is_floating_point() else F.one_hot(y, out.shape[-1]).to(out.dtype)
    per_sample = 0.5 * (out.reshape(target.shape) - target).pow(2).sum(-1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.is_floating_point():
        return (torch.sign(out.reshape(y.shape)) == torch.sign(y)).sum()
    return (out.argmax(-1) == y).sum()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_kind: str,
             batch: int) -> tuple[float, float]:
    """Mean loss and accuracy on a split, in eval mode; one host sync at the end."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    hits = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, x.shape[0], batch):
        out = model(x[i:i + batch])
        loss_sum += compute_loss(loss_kind, out, y[i:i + batch], reduction="sum").double()
        hits += correct(out, y[i:i + batch])
    model.train(was_training)
    n = max(1, x.shape[0])
    return float(loss_sum) / n, float(hits) / n


@dataclass
class LoopHooks:
    """What the loop calls at observation points; the engine supplies these."""

    checkpoint: Callable[[int], None]  # save weights at this step
    resume: Callable[[int, list[Row]], None]  # save a resume point with the rows so far
    progress: Callable[[int, torch.Tensor, int, float | None], None] | None = None  # step, loss sum, count, acc


@dataclass
class LoopPlan:
    start: int
    end: int
    checkpoints: set[int]
    evals: set[int]
    resume_every: int  # steps between resume checkpoints (one epoch)
    progress_every: int = 0  # 0 = no progress reads
    lrs: list[float] = field(default_factory=list)  # lr for steps start..end-1


class _Observer:
    """Evaluation and checkpoints at observation steps (the only host syncs besides progress)."""

    def __init__(self, model: torch.nn.Module, data: Dataset, loss: str, plan: LoopPlan, hooks: LoopHooks,
                 recorders: list[Recorder], rows: list[Row], eval_train: bool, eval_batch: int) -> None:
        self.model, self.data, self.loss, self.plan, self.hooks = model, data, loss, plan, hooks
        self.recorders, self.rows, self.eval_train, self.eval_batch = recorders, rows, eval_train, eval_batch
        self.last_acc: float | None = None

    def __call__(self, step: int) -> None:
        model, data, rows = self.model, self.data, self.rows
        if step in self.plan.evals:
            loss, acc = evaluate(model, data.x_test, data.y_test, self.loss, self.eval_batch)
            rows.extend([(step, "loss", "", "test", loss), (step, "accuracy", "", "test", acc)])
            self.last_acc = acc
            if self.eval_train:
                loss, acc = evaluate(model, data.x_train, data.y_train, self.loss, self.eval_batch)
                rows.extend([(step, "loss", "", "train", loss), (step, "accuracy", "", "train", acc)])
            for r in self.recorders:
                rows.extend(r.collect(model, step))
        if step in self.plan.checkpoints:
            self.hooks.checkpoint(step)


class _Batches:
    """The batch of step t, gathered into buffers allocated once (the last batch of an epoch may be
    shorter); full-batch gradient descent uses the data itself."""

    def __init__(self, data: Dataset, order: DataOrder) -> None:
        self.x, self.y, self.order = data.x_train, data.y_train, order
        self.whole = not order.shuffle and order.batch == order.n
        n = 0 if self.whole else order.batch
        self.x_buf = self.x.new_empty((n, *self.x.shape[1:]))
        self.y_buf = self.y.new_empty((n, *self.y.shape[1:]))

    def __call__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = self.order
        window = order.batch_slice(t)
        if self.whole:
            xb, yb = self.x, self.y
        else:
            idx = order.perm[window]
            n = window.stop - window.start
            xb = torch.index_select(self.x, 0, idx, out=self.x_buf[:n])
            yb = torch.index_select(self.y, 0, idx, out=self.y_buf[:n])
        if order.augment:
            xb = crop_flip(xb, order.dx[window], order.dy[window], order.flip[window], pad=order.pad)
        return xb, yb


class _Update:
    """Backward, the gradient mask, the optimizer step and the weight mask, with fused foreach ops."""

    def __init__(self, optimizer: torch.optim.Optimizer, mask: dict[torch.nn.Parameter, torch.Tensor] | None) -> None:
        self.params = list(mask) if mask else []
        self.masks = [mask[p] for p in self.params] if mask else []
        trained = [(p, m) for p, m in zip(self.params, self.masks) if p.requires_grad]  # frozen ones have no grad
        self.grad_params, self.grad_masks = [p for p, _ in trained], [m for _, m in trained]
        self.optimized = [p for group in optimizer.param_groups for p in group["params"]]
        self.step = step_function(optimizer)

    def __call__(self, loss: torch.Tensor) -> None:
        for p in self.optimized:  # zero_grad(set_to_none=True) without its wrappers; backward writes fresh grads
            p.grad = None
        loss.backward()
        if self.grad_masks:
            torch._foreach_mul_([p.grad for p in self.grad_params], self.grad_masks)
        self.step()
        if self.masks:
            with torch.no_grad():
                torch._foreach_mul_(self.params, self.masks)


class FiniteGuard:
    """The first step whose loss was NaN or infinite, tracked on the device in four in-place ops a step
    (no host sync, no allocation): ``alive`` stays 1 while every loss so far was finite, ``good``
    counts those steps. :meth:`check` reads it back where the loop reads values anyway (evaluation,
    checkpoint, resume point, progress, the end) and raises :class:`NonFiniteLoss` with the step."""

    def __init__(self, device: torch.device, start: int) -> None:
        self.start = start
        self.bad = torch.zeros((), device=device)  # this step: 0 finite, 1 not
        self.alive = torch.ones((), device=device)
        self.good = torch.zeros((), device=device, dtype=torch.float64)

    def update(self, loss: torch.Tensor) -> None:
        torch.mul(loss.detach(), 0, out=self.bad)  # 0, or NaN for a NaN or infinite loss
        self.bad.nan_to_num_(nan=1.0)
        self.alive.addcmul_(self.alive, self.bad, value=-1.0)
        self.good.add_(self.alive)

    def check(self) -> None:
        if float(self.alive) == 0.0:
            raise NonFiniteLoss(self.start + int(self.good))


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, order: DataOrder,
               cfg: TrainConfig, plan: LoopPlan, hooks: LoopHooks, recorders: list[Recorder],
               mask: dict[torch.nn.Parameter, torch.Tensor] | None, rows: list[Row], eval_train: bool,
               eval_batch: int, record_ctx: RecordContext | None = None) -> None:
    """Steps plan.start..plan.end: observe, checkpoint and save resume points where the plan says."""
    update, batches = _Update(optimizer, mask), _Batches(data, order)
    observe = _Observer(model, data, cfg.loss, plan, hooks, recorders, rows, eval_train, eval_batch)
    loss_sum = torch.zeros((), device=data.x_train.device)
    loss_count, guard = 0, FiniteGuard(data.x_train.device, plan.start)
    model.train()
    for r in recorders:
        r.start(record_ctx)
    if plan.start not in {int(r[0]) for r in rows if r[1] == "loss"}:
        observe(plan.start)
    for t in range(plan.start, plan.end):
        xb, yb = batches(t)
        lr = plan.lrs[t - plan.start]
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = compute_loss(cfg.loss, model(xb), yb)
        update(loss)
        loss_sum.add_(loss.detach())
        guard.update(loss)
        loss_count += 1
        step = t + 1
        for r in recorders:
            r.after_step(model, step, loss)
        if step in plan.evals or step in plan.checkpoints:
            guard.check()
            observe(step)
        if hooks.progress is not None and plan.progress_every and (step % plan.progress_every == 0 or step == plan.end):
            guard.check()
            hooks.progress(step, loss_sum, loss_count, observe.last_acc)
            loss_sum.zero_()
            loss_count = 0
        if step % plan.resume_every == 0 and step < plan.end:
            guard.check()
            hooks.resume(step, rows)
    guard.check()
