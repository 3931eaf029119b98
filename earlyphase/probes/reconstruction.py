"""Decoders from a layer's frozen activations back to the normalized input (docs/experiments/learning_phases.md).

The default is the closed-form linear decoder (ridge, :mod:`.ridge`, driven by
:mod:`.checkpoint_probes`): it is the optimum that the paper's 20 epochs of Adam approach, at a
fraction of the cost (``benchmarks/probes.py``). The two iterative decoders of the paper's code are
here as options, on activations held in memory (:func:`.activations.collect`):

- ``adam_linear_decoder``: one linear layer trained with Adam, lr 3e-4, batch 128, 20 epochs;
- ``conv_decoder``: a 3x3 conv on the activation map, then stride-2 transposed convs up to the
  input's size (flat activations are read as a 1x1 map).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .ridge import Moments, _centred, fit_ridge
from .checkpoint_probes import holdout_mask


@dataclass
class DecoderResult:
    train_mse: float  # per input element, on the rows the decoder was fit on
    test_mse: float  # per input element


def ridge_decoder(a_train: torch.Tensor, x_train: torch.Tensor, a_test: torch.Tensor, x_test: torch.Tensor,
                  holdout: float = 0.2, chunk: int = 4096, seed: int = 0) -> DecoderResult:
    """The closed-form decoder on activations in memory (the same solver the experiment streams):
    λ chosen on a held-out ``holdout`` of the training rows, then refit on all of them."""
    y_train, y_test = x_train.flatten(1), x_test.flatten(1)
    hold = holdout_mask(a_train.shape[0], holdout, seed)
    fit, held = Moments.zeros(a_train.shape[1], y_train.shape[1]), Moments.zeros(a_train.shape[1], y_train.shape[1])
    for i in range(0, a_train.shape[0], chunk):
        h = hold[i:i + chunk]
        a, y = a_train[i:i + chunk], y_train[i:i + chunk]
        fit.add(a[~h], y[~h])
        held.add(a[h], y[h])
    (r,) = fit_ridge([fit], [held] if hold.any() else None, [slice(0, y_train.shape[1])])
    # the training error from the sums, no second pass over the training rows: with centred moments
    # and (Cxx + λ) W = Cxy, Σ residual² = Cyy - Σ W∘Cxy - λ‖W‖² per column
    _, _, _, _, cxy, cyy = _centred([fit + held])
    w = r.weight.to(torch.float64)
    train = float((cyy[0] - (w * cxy[0]).sum(0) - r.lam * (w * w).sum(0)).sum()) / y_train.numel()
    return DecoderResult(train, _mse(r.predict, a_test, y_test, chunk))


def _mse(predict, a: torch.Tensor, y: torch.Tensor, chunk: int) -> float:
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        total += float((predict(a[i:i + chunk]).double() - y[i:i + chunk].double()).pow(2).sum())
    return total / y.numel()


def _train(decoder: nn.Module, a_train: torch.Tensor, y_train: torch.Tensor, *, lr: float, epochs: int,
           batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    decoder.train()
    for _ in range(epochs):
        for idx in torch.randperm(a_train.shape[0], generator=g).split(batch):
            loss = F.mse_loss(decoder(a_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    decoder.eval()


@torch.no_grad()
def _eval(decoder: nn.Module, a: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    return _mse(decoder, a, y, chunk)


def adam_linear_decoder(a_train: torch.Tensor, x_train: torch.Tensor, a_test: torch.Tensor, x_test: torch.Tensor,
                        *, lr: float = 3e-4, epochs: int = 20, batch: int = 128, seed: int = 0) -> DecoderResult:
    """The paper code's linear decoder: flat activations -> flat input, MSE, Adam, minibatches."""
    torch.manual_seed(seed)
    y_train, y_test = x_train.flatten(1), x_test.flatten(1)
    decoder = nn.Linear(a_train.shape[1], y_train.shape[1])
    _train(decoder, a_train, y_train, lr=lr, epochs=epochs, batch=batch, seed=seed)
    return DecoderResult(_eval(decoder, a_train, y_train), _eval(decoder, a_test, y_test))


class ConvDecoder(nn.Module):
    """conv3x3 -> ReLU, then stride-2 transposed convs (each doubling the size) until the map is at
    least the input's size, then a 3x3 conv to the input's channels, cropped to size. Works for
    images (C x H x W) and sequences (C x L); flat activations are reshaped to a 1x1 (or length-1) map."""

    def __init__(self, act_shape: tuple[int, ...], input_shape: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        spatial = len(input_shape) - 1
        if spatial not in (1, 2):
            raise ValueError(f"the conv decoder needs images or sequences, got input shape {input_shape}")
        self.input_shape = tuple(input_shape)
        self.act_shape = tuple(act_shape) if len(act_shape) == spatial + 1 else (math.prod(act_shape),) + (1,) * spatial
        conv = nn.Conv2d if spatial == 2 else nn.Conv1d
        tconv = nn.ConvTranspose2d if spatial == 2 else nn.ConvTranspose1d
        layers: list[nn.Module] = [conv(self.act_shape[0], width, 3, padding=1), nn.ReLU()]
        size = min(self.act_shape[1:])
        while size < max(input_shape[1:]):
            layers += [tconv(width, width, 4, stride=2, padding=1), nn.ReLU()]
            size *= 2
        layers.append(conv(width, input_shape[0], 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        out = self.net(a.reshape(a.shape[0], *self.act_shape))
        for dim, n in enumerate(self.input_shape[1:], start=2):
            out = out.narrow(dim, 0, n)
        return out.flatten(1)


def conv_decoder(a_train: torch.Tensor, x_train: torch.Tensor, a_test: torch.Tensor, x_test: torch.Tensor,
                 act_shape: tuple[int, ...], *, lr: float = 3e-4, epochs: int = 20, batch: int = 128,
                 seed: int = 0) -> DecoderResult:
    """The paper's convolutional decoder trained like the linear one (Adam, MSE); ``act_shape`` is the
    layer's activation shape without the batch dimension (e.g. (64, 8, 8))."""
    torch.manual_seed(seed)
    y_train, y_test = x_train.flatten(1), x_test.flatten(1)
    decoder = ConvDecoder(act_shape, tuple(x_train.shape[1:]))
    _train(decoder, a_train, y_train, lr=lr, epochs=epochs, batch=batch, seed=seed)
    return DecoderResult(_eval(decoder, a_train, y_train), _eval(decoder, a_test, y_test))


DECODERS = ("ridge", "adam_linear", "conv")
