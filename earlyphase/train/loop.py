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
from ..errors import UserError
from ..store.metrics import Row
from .data_order import DataOrder
from .recorders import RecordContext, Recorder


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """With ``cfg.lr_scales`` each parameter gets its own group whose lr is the schedule's times its
    factor (the loop reads ``lr_scale``); a factor of 0 freezes the parameter (requires_grad off, so
    its gradient is never computed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.lr_scales:
        named = list(model.named_parameters())
        if len(named) != len(cfg.lr_scales):
            raise UserError(f"train.lr_scales has {len(cfg.lr_scales)} factors but the model has {len(named)} "
                            f"parameters ({', '.join(n for n, _ in named)}); give one per parameter, in that order")
        for (_, p), scale in zip(named, cfg.lr_scales):
            if scale == 0:
                p.requires_grad_(False)
        params = [{"params": [p], "lr_scale": s} for (_, p), s in zip(named, cfg.lr_scales) if s > 0 and p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay, foreach=True)


def step_function(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``optimizer.step`` without the wrappers every call of it pays (hooks, a profiler range, the
    dynamo guard: ~0.07 ms a step on a CPU, 3 % of a small model's step). SGD goes straight to
    ``torch.optim.sgd.sgd``, the function SGD.step itself calls with the same arguments, so the
    arithmetic and the optimizer's state are exactly those of ``optimizer.step()``; other optimizers
    keep their own step."""
    if type(optimizer) is not torch.optim.SGD or any(g.get("differentiable") for g in optimizer.param_groups):
        return optimizer.step
    from torch.optim.sgd import sgd

    state = optimizer.state

    @torch.no_grad()
    def step() -> None:
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bufs = [state[p].get("momentum_buffer") if group["momentum"] != 0 else None for p in params]
            sgd(params, [p.grad for p in params], bufs, weight_decay=group["weight_decay"],
                momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                nesterov=group["nesterov"], maximize=group["maximize"], foreach=group["foreach"],
                fused=group["fused"])
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs):
                    state[p]["momentum_buffer"] = buf

    return step


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


def train_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, order: DataOrder,
               cfg: TrainConfig, plan: LoopPlan, hooks: LoopHooks, recorders: list[Recorder],
               mask: dict[torch.nn.Parameter, torch.Tensor] | None, rows: list[Row], eval_train: bool,
               eval_batch: int, record_ctx: RecordContext | None = None) -> None:
    masked_params = list(mask) if mask else []
    masks = [mask[p] for p in masked_params] if mask else []
    trained = [(p, m) for p, m in zip(masked_params, masks) if p.requires_grad]  # frozen ones have no grad
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer_step = step_function(optimizer)
    grad_masked, grad_masks = [p for p, _ in trained], [m for _, m in trained]
    x_train, y_train = data.x_train, data.y_train
    loss_sum = torch.zeros((), device=x_train.device)
    loss_count = 0
    last_acc: float | None = None

    def observe(step: int) -> None:
        nonlocal last_acc
        if step in plan.evals:
            loss, acc = evaluate(model, data.x_test, data.y_test, cfg.loss, eval_batch)
            rows.extend([(step, "loss", "", "test", loss), (step, "accuracy", "", "test", acc)])
            last_acc = acc
            if eval_train:
                loss, acc = evaluate(model, x_train, y_train, cfg.loss, eval_batch)
                rows.extend([(step, "loss", "", "train", loss), (step, "accuracy", "", "train", acc)])
            for r in recorders:
                rows.extend(r.collect(model, step))
        if step in plan.checkpoints:
            hooks.checkpoint(step)

    model.train()
    for r in recorders:
        r.start(record_ctx)
    if plan.start not in {int(r[0]) for r in rows if r[1] == "loss"}:
        observe(plan.start)
    # batches are gathered into buffers allocated once (the last batch of an epoch may be shorter)
    whole_batch = not order.shuffle and order.batch == order.n
    x_buf = x_train.new_empty((0 if whole_batch else order.batch, *x_train.shape[1:]))
    y_buf = y_train.new_empty((0 if whole_batch else order.batch, *y_train.shape[1:]))
    for t in range(plan.start, plan.end):
        window = order.batch_slice(t)
        idx = order.perm[window]
        n = window.stop - window.start
        if whole_batch:  # full-batch gradient descent: the data itself, no gather
            xb, yb = x_train, y_train
        else:
            xb = torch.index_select(x_train, 0, idx, out=x_buf[:n])
            yb = torch.index_select(y_train, 0, idx, out=y_buf[:n])
        if order.augment:
            xb = crop_flip(xb, order.dx[window], order.dy[window], order.flip[window], pad=order.pad)
        lr = plan.lrs[t - plan.start]
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = compute_loss(cfg.loss, model(xb), yb)
        for p in optimized:  # zero_grad(set_to_none=True) without its wrappers; backward writes fresh grads
            p.grad = None
        loss.backward()
        if grad_masks:
            torch._foreach_mul_([p.grad for p in grad_masked], grad_masks)
        optimizer_step()
        if masks:
            with torch.no_grad():
                torch._foreach_mul_(masked_params, masks)
        loss_sum.add_(loss.detach())
        loss_count += 1
        step = t + 1
        for r in recorders:
            r.after_step(model, step, loss)
        if step in plan.evals or step in plan.checkpoints:
            observe(step)
        if hooks.progress is not None and plan.progress_every and (step % plan.progress_every == 0 or step == plan.end):
            hooks.progress(step, loss_sum, loss_count, last_acc)
            loss_sum.zero_()
            loss_count = 0
        if step % plan.resume_every == 0 and step < plan.end:
            hooks.resume(step, rows)
