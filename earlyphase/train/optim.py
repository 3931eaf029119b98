"""Optimizers built and used without torch's compiler machinery: ``Optimizer.add_param_group``,
``state_dict`` and ``load_state_dict`` are wrapped by ``torch._disable_dynamo``, whose first call
imports ``torch._dynamo`` (1.5-2 s, as long as a small run's whole training). earlyphase never
compiles, so those calls go to the unwrapped methods while an optimizer is built or restored, and a
run's optimizer state is read straight from ``optimizer.state`` (the same indexing as ``state_dict``)."""
from __future__ import annotations

import contextlib
import inspect
import itertools
from typing import Any, Callable, Iterator

import torch

from ..config import TrainConfig
from ..errors import UserError

_WRAPPED = ("add_param_group", "load_state_dict")


@contextlib.contextmanager
def no_dynamo() -> Iterator[None]:
    """For this block, the dynamo-disabling wrappers of the optimizer methods call the plain methods
    (the wrapper looks up a cached ``__dynamo_disable`` on the plain function before importing
    dynamo); the cache is removed after, so code that compiles later gets the usual wrappers."""
    plain = [getattr(torch.optim.Optimizer, name).__wrapped__ for name in _WRAPPED]
    fresh = [f for f in plain if "__dynamo_disable" not in f.__dict__]
    for f in fresh:
        f.__dynamo_disable = f
    try:
        yield
    finally:
        for f in fresh:
            f.__dict__.pop("__dynamo_disable", None)


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
    with no_dynamo():
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, foreach=True)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, foreach=True)


def step_function(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``optimizer.step`` without the wrappers every call of it pays (hooks, a profiler range, the
    dynamo guard: ~0.07 ms a step on a CPU, 3 % of a small model's step). SGD goes straight to
    ``torch.optim.sgd.sgd``, the function SGD.step itself calls with the same arguments, so the
    arithmetic and the optimizer's state are exactly those of ``optimizer.step()``. Other optimizers
    (Adam) call their class's own ``step`` unwrapped, under ``no_grad`` as the wrapper would: the
    wrapper imports ``torch._dynamo`` on its first call (1.5-2 s), the step itself does not."""
    if any(g.get("differentiable") for g in optimizer.param_groups):
        return optimizer.step
    if type(optimizer) is not torch.optim.SGD:
        plain = inspect.unwrap(type(optimizer).step)

        @torch.no_grad()
        def own_step() -> None:
            plain(optimizer)

        return own_step
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


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    """``optimizer.state_dict()["state"]`` without its wrapper: per-parameter state keyed by the
    parameter's position over the param groups."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: dict(optimizer.state[p]) for i, p in enumerate(params) if p in optimizer.state}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[int, dict[str, Any]]) -> None:
    """``load_state_dict`` with the optimizer's own param groups (casting and checks as torch does)."""
    index = itertools.count()
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [next(index) for _ in g["params"]]}
              for g in optimizer.param_groups]
    with no_dynamo():
        optimizer.load_state_dict({"state": state, "param_groups": groups})
