"""BatchNorm running statistics re-estimated on data, so a checkpoint is evaluated with the
statistics of its own weights rather than with running averages still warming up (with momentum
0.1 they lag the weights by ~10 steps: most of the early phase)."""
from __future__ import annotations

import torch
from torch.optim.swa_utils import update_bn


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reestimate_bn(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.nn.Module:
    """Reset every BatchNorm's running mean and variance and set them to the average over ``x`` in
    batches of ``batch`` (equal-weight batches: torch's cumulative average); the model's train/eval
    mode is kept. A network without BatchNorm is returned unchanged."""
    if has_batchnorm(model):
        update_bn((x[i:i + batch] for i in range(0, x.shape[0], batch)), model)
    return model
