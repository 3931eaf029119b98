"""A run's starting state, resolved from its spec in one place: the network (drawn from ``seed``, or
another run's weights at a step, with the output layer redrawn when the task changed), its pruning
mask, and the perturbation of its surviving weights. It is resolved before anything is written, so
bad input (a missing parent checkpoint, a mask made for another model) leaves the store as it was."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import perturb as P
from ..config import RunConfig, from_dict
from ..data import dataset_info
from ..data.base import Dataset
from ..errors import UserError
from ..models import build_model, prunable_names
from ..sparsity import resolve_mask
from ..steps import steps_per_epoch
from ..store import RunDir, Store, load_model_state
from ..store.checkpoints import split_prefix
from ..store.metrics import Row

Mask = dict[torch.nn.Parameter, torch.Tensor]


@dataclass
class StartState:
    """The network at the run's first step, its mask (parameter -> 0/1 tensor, already applied), and
    the rows that describe the start (per-layer density, the perturbation's effective std)."""

    model: torch.nn.Module
    mask: Mask | None
    rows: list[Row] = field(default_factory=list)


def resolve_start(cfg: RunConfig, data: Dataset, store: Store, device: torch.device, start: int) -> StartState:
    """The starting state of ``cfg`` at step ``start`` of its schedule, on ``device``."""
    model = initial_model(cfg, data, store).to(device)
    mask = load_mask(cfg, model, store)
    rows: list[Row] = []
    if cfg.perturb is not None:
        rows.append((start, "effective_std", "", "", perturb(cfg, model, mask, data, store)))
    if mask:
        with torch.no_grad():
            torch._foreach_mul_(list(mask), list(mask.values()))
        rows[:0] = [(start, "density", layer, "", value) for layer, value in sorted(_densities(model, mask).items())]
    return StartState(model, mask, rows)


def initial_model(cfg: RunConfig, data: Dataset, store: Store) -> torch.nn.Module:
    """The network drawn from ``seed``, or loaded from ``start_run`` at ``start_step`` (keeping this
    run's freshly drawn output layer when ``start_reinit_head``: a new task's head)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.out_dim)
    if cfg.start_run is not None:
        parent = store.run(cfg.start_run)
        step = parent_step(cfg, parent)
        if step not in parent.checkpoint_steps():
            raise UserError(f"run {cfg.start_run} has no checkpoint at step {step}; train it with that "
                            "checkpoint first (observe.checkpoints)")
        state = split_prefix(parent.load(step)[0], "model.")
        if cfg.start_reinit_head:
            head = model.output_layer
            own = model.state_dict()
            state = {k: (own[k] if k == head or k.startswith(f"{head}.") else state.get(k)) for k in own}
        load_model_state(model, state, parent.checkpoint_path(step))
    return model


def parent_step(cfg: RunConfig, parent: RunDir) -> int:
    """``start_step`` in the start run's own steps (its data may differ: pre-training)."""
    if cfg.start_step.epochs == 0:
        return cfg.start_step.iterations
    pcfg = from_dict(RunConfig, parent.spec()["config"])
    n = dataset_info(pcfg.data).n_train
    return cfg.start_step.to_iterations(steps_per_epoch(n, n if pcfg.train.full_batch else pcfg.train.batch_size))


def load_mask(cfg: RunConfig, model: torch.nn.Module, store: Store) -> Mask | None:
    """The run's mask as parameter -> 0/1 tensor, resolved through the store (IMP parents)."""
    if cfg.mask is None:
        return None
    params = dict(model.named_parameters())
    names = prunable_names(model, prune_output=cfg.model.prune_output)
    if cfg.mask.kind == "stored":
        allowed = set(prunable_names(model, prune_output=True))
        stored = store.load_mask(cfg.mask.id)
        extra = [n for n in stored if n not in allowed]
        if extra:
            raise UserError(f"mask {cfg.mask.id} does not fit model {cfg.model.name} (parameter {extra[0]!r}); "
                            "use a mask made for this model")
        names = list(stored) or names
    resolved = resolve_mask(cfg.mask, store, {n: params[n].shape for n in names})
    return {params[n]: m.to(params[n].device, params[n].dtype) for n, m in resolved.items()}


def _densities(model: torch.nn.Module, mask: Mask) -> dict[str, float]:
    names = {p: n for n, p in model.named_parameters()}
    dens = {names[p]: float(m.mean()) for p, m in mask.items()}
    dens[""] = sum(float(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    return dens


def perturb(cfg: RunConfig, model: torch.nn.Module, mask: Mask | None, data: Dataset, store: Store) -> float:
    """Perturb the starting weights' survivors in place (docs/experiments/perturbations.md); returns
    the effective std, std(theta_perturbed - theta_k) over the survivors."""
    p = cfg.perturb
    params = dict(model.named_parameters())
    names = {id(t): n for n, t in params.items()}
    survivors = ({names[id(t)]: m.bool().cpu() for t, m in mask.items()} if mask else
                 {n: torch.ones_like(params[n], dtype=torch.bool).cpu()
                  for n in prunable_names(model, cfg.model.prune_output)})
    weights = {n: params[n].detach().cpu().clone() for n in survivors}
    parent = store.run(cfg.start_run) if cfg.start_run is not None else None
    theta0 = split_prefix(parent.load(0)[0], "model.") if parent and 0 in parent.checkpoint_steps() else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1_000_003 + p.seed)
        fresh = dict(build_model(cfg.model, data.input_shape, data.out_dim).named_parameters())
    new = P.apply(p.kind, weights, survivors, theta0=theta0, fresh={n: t.detach() for n, t in fresh.items()},
                  scope=p.scope, same_sign=p.same_sign, scale=p.scale, seed=p.seed)
    with torch.no_grad():
        for n, t in new.items():
            params[n].copy_(t.to(params[n].device))
    return P.effective_std(new, weights, survivors)


def initial_state_fn(model: torch.nn.Module, start: int, rd: RunDir, parent: RunDir | None, device: torch.device,
                     keep: bool) -> Callable[[], dict[str, torch.Tensor] | None]:
    """theta_0 for recorders that compare with it: the model itself when training starts at step 0
    (cloned now, when ``keep``), else step 0 of this run or of its start run, if checkpointed."""
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()} if start == 0 and keep else None

    def initial_state() -> dict[str, torch.Tensor] | None:
        if theta0 is not None:
            return theta0
        for source in (rd, parent):
            if source is not None and 0 in source.checkpoint_steps():
                return {k: v.to(device) for k, v in split_prefix(source.load(0)[0], "model.").items()}
        return None

    return initial_state
