"""What a resume point holds (weights, optimizer state, step) and how a run picks up from one, so a
killed run finishes with exactly the weights of an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..store import load_model_state
from ..store.checkpoints import split_prefix
from ..store.writer import ResumePoint
from .optim import load_optimizer_state, optimizer_state


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def resume_payload(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                   run_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a resume checkpoint: the weights, the optimizer's tensors, and its
    scalar state as JSON."""
    state = optimizer_state(optimizer)
    tensors = model_tensors(model)
    tensors.update({f"optim.{idx}.{key}": value for idx, s in state.items() for key, value in s.items()
                    if torch.is_tensor(value)})
    scalars = {str(idx): {k: v for k, v in s.items() if not torch.is_tensor(v)} for idx, s in state.items()}
    return tensors, {"step": str(step), "run_id": run_id, "optimizer": json.dumps(scalars)}


def restore(point: ResumePoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load a resume point into the model and optimizer; one that does not fit is a UserError."""
    load_model_state(model, split_prefix(point.tensors, "model."), path)
    state: dict[int, dict] = {}
    for key, value in split_prefix(point.tensors, "optim.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, scalars in json.loads(point.meta.get("optimizer", "{}")).items():
        state.setdefault(int(idx), {}).update(scalars)
    try:
        load_optimizer_state(optimizer, state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"resume checkpoint {path} does not fit this run's optimizer ({e}); "
                        "delete it to retrain the run from the start") from None
