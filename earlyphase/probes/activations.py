"""Frozen activations of named layers (docs/experiments/learning_phases.md): computed in eval mode with forward hooks and
streamed in chunks, so a probe over 50000 CIFAR images never holds more than one chunk of them."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import UserError

DEFAULT_CHUNK = 1000


def layer_names(model: nn.Module) -> list[str]:
    """Every named module of ``model`` (the names a probe accepts), in definition order."""
    return [name for name, _ in model.named_modules() if name]


def default_layers(model: nn.Module) -> list[str]:
    """Every block and the penultimate features: the children of ``blocks`` where the model has one
    (vgg8_phases), else the output of every ReLU, then ``model.penultimate``. A ReLU whose output the
    penultimate module returns unchanged (up to a Flatten) is left out, so no curve is drawn twice."""
    penultimate = getattr(model, "penultimate", None)
    names: list[str] = []
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        names = [f"blocks.{i}" for i in range(len(blocks))]
    else:
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.Tanh))]
        if penultimate is not None:
            pen = model.get_submodule(penultimate)
            if isinstance(pen, nn.Sequential):
                tail = [f"{penultimate}.{n}" for n, m in pen.named_children() if not isinstance(m, nn.Flatten)]
                if tail:
                    names = [n for n in names if n != tail[-1]]
    if penultimate is not None and penultimate not in names:
        names.append(penultimate)
    return names


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """The layers to probe: ``layers`` checked against the model (an unknown name is a UserError that
    lists the names it has), or :func:`default_layers` when ``layers`` is empty or None."""
    if not layers:
        return default_layers(model)
    have = layer_names(model)
    for name in layers:
        if name not in have:
            raise UserError(f"layer {name!r} is not a module of {type(model).__name__}; it has: {', '.join(have)}")
    return list(dict.fromkeys(layers))


def stream(model: nn.Module, x: torch.Tensor, layers: Sequence[str], chunk: int = DEFAULT_CHUNK,
           device: torch.device | str | None = None) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """Yield ``(rows, {layer: activations})`` per chunk of ``x``, activations flattened to
    (chunk, features) float32, computed in eval mode without gradients. The model's train/eval
    state is restored afterwards. Only the layers asked for are kept, so memory is one chunk's worth."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modules = {name: model.get_submodule(name) for name in layers}
    got: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            got[name] = output.detach().flatten(1).float()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], chunk):
                got.clear()
                model(x[i:i + chunk].to(device))
                yield slice(i, min(i + chunk, x.shape[0])), {n: got[n] for n in layers}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def collect(model: nn.Module, x: torch.Tensor, layers: Sequence[str], chunk: int = DEFAULT_CHUNK,
            device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """All of ``x``'s activations at ``layers`` on the CPU (for the iterative probes that need them in
    memory); the closed-form probes use :func:`stream` instead."""
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    for _, acts in stream(model, x, layers, chunk, device):
        for n, a in acts.items():
            parts[n].append(a.cpu())
    return {n: torch.cat(p) for n, p in parts.items()}
