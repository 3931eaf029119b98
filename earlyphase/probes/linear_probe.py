"""Linear probes: how well a layer's frozen activations predict a label (docs/experiments/learning_phases.md).

The default, ridge regression on one-hot targets in closed form, is streamed with the
reconstruction (:mod:`.checkpoint_probes`). The iterative probes here work on activations held in
memory (:func:`.activations.collect`): softmax regression by L-BFGS (*ours*: the convex optimum, no
schedule to tune) and the paper code's SGD, lr 0.01 for 20 epochs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint_probes import holdout_mask
from .ridge import Moments, fit_ridge

PROBES = ("ridge", "lbfgs", "sgd")


def _standardize(a_train: torch.Tensor, a_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = a_train.mean(0), a_train.std(0).clamp_min(1e-6)
    return (a_train - mean) / std, (a_test - mean) / std


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def ridge_probe(a_train: torch.Tensor, y_train: torch.Tensor, a_test: torch.Tensor, y_test: torch.Tensor,
                num_classes: int, holdout: float = 0.2, seed: int = 0) -> float:
    """Test accuracy of ridge regression on one-hot targets, λ chosen on a held-out part."""
    onehot = F.one_hot(y_train.long(), num_classes).double()
    hold = holdout_mask(a_train.shape[0], holdout, seed)
    fit, held = Moments.zeros(a_train.shape[1], num_classes), Moments.zeros(a_train.shape[1], num_classes)
    fit.add(a_train[~hold], onehot[~hold])
    held.add(a_train[hold], onehot[hold])
    (r,) = fit_ridge([fit], [held] if hold.any() else None, [slice(0, num_classes)])
    return _accuracy(r.predict(a_test), y_test)


def lbfgs_probe(a_train: torch.Tensor, y_train: torch.Tensor, a_test: torch.Tensor, y_test: torch.Tensor,
                num_classes: int, *, weight_decay: float = 1e-4, max_iter: int = 200) -> float:
    """Test accuracy of multinomial logistic regression (full batch, L-BFGS with strong Wolfe line
    search) on standardized activations, with a small L2 penalty so separable data has an optimum."""
    a_train, a_test = _standardize(a_train.float(), a_test.float())
    probe = nn.Linear(a_train.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(a_train), y_train) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return _accuracy(probe(a_test), y_test)


def sgd_probe(a_train: torch.Tensor, y_train: torch.Tensor, a_test: torch.Tensor, y_test: torch.Tensor,
              num_classes: int, *, lr: float = 0.01, epochs: int = 20, batch: int = 128, seed: int = 0) -> float:
    """The paper code's probe: one linear layer, cross-entropy, plain SGD lr 0.01, 20 epochs."""
    torch.manual_seed(seed)
    probe = nn.Linear(a_train.shape[1], num_classes)
    opt = torch.optim.SGD(probe.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(a_train.shape[0], generator=g).split(batch):
            loss = F.cross_entropy(probe(a_train[idx].float()), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return _accuracy(probe(a_test.float()), y_test)


def fine_tune(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
              y_test: torch.Tensor, num_classes: int, *, steps: int, lr: float, batch: int = 128,
              seed: int = 0) -> float:
    """An option (docs/experiments/learning_phases.md): replace the output layer with a fresh one for the target classes and train the
    whole network for a fixed budget of ``steps`` (SGD, momentum 0.9); the target test accuracy."""
    import copy

    net = copy.deepcopy(model)
    out_name = net.output_layer
    old = net.get_submodule(out_name)
    torch.manual_seed(seed)
    setattr(net, out_name, nn.Linear(old.in_features, num_classes))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    net.train()
    perm = torch.randperm(x_train.shape[0], generator=g)
    for t in range(steps):
        start = (t * batch) % x_train.shape[0]
        if start + batch > x_train.shape[0]:
            perm = torch.randperm(x_train.shape[0], generator=g)
            start = 0
        idx = perm[start:start + batch]
        loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, x_test.shape[0], 1000):
            hits += int((net(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
    return hits / x_test.shape[0]
