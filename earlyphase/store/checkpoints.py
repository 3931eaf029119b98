"""Checkpoints as safetensors (never pickle): model tensors, optionally optimizer state, a step."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .atomic import write_atomic


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint; a missing, truncated or malformed file is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; list a run's checkpoints with `earlyphase show RUN`")
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is corrupt ({str(e).splitlines()[0][:120]}); "
                        "delete it and run again to retrain from the last good checkpoint") from None
    return tensors, metadata


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights and buffers, refusing a checkpoint that belongs to another model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {wrong[:3]}")
        raise UserError(f"checkpoint {source} belongs to another model ({detail}); "
                        "check the run's model config or point at the right run")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.device, v.dtype))
