"""Checkpoints as safetensors (never pickle): model tensors, optionally optimizer state, a step."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .atomic import write_atomic


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, with its metadata in sorted order, so the same tensors and
    metadata always give the same bytes (safetensors itself writes metadata in hash-map order)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(flat, str(tmp), metadata=metadata)
        _sort_metadata(tmp)

    write_atomic(path, write)


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header in place with its ``__metadata__`` keys sorted (same length)."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) <= n:
            f.seek(8)
            f.write(raw.ljust(n, b" "))


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
