"""The linearization lens: a network trained side by side with its first-order Taylor model in the
parameters around its starting point theta0 (see docs/lenses/linearization.md),

    f_lin(x; theta) = f(x; theta0) + J_theta f(x; theta0) (theta - theta0),

on the same batches, with the same optimizer, schedule and masks, from the same theta0. The step at
which the relative test-output gap RMS(f_net - f_lin) / RMS(f_lin) first exceeds a threshold (0.15)
is the lens's "end of the early phase": until then the network trains as its linearization would.

How f_lin is computed: one ``torch.func.jvp`` per batch of ``functional_call`` at theta0 in the
direction theta - theta0 gives the primal output f(x; theta0) and the tangent J (theta - theta0)
together; no Jacobian is ever materialized. f_lin is linear in theta, so its gradient is J^T at theta0
applied to dL/df_lin; ordinary autograd through the tangent gives exactly that (the tangent is a
linear function of theta - theta0), and ``benchmarks/linearized.py`` measured it faster than a
separate ``torch.func.vjp`` at theta0 per batch.

Batch norm: the network trains with batch statistics, and so does its Taylor model: the statistics of
each batch are part of the function being expanded, so their derivatives in theta enter J. The
expansion runs on a copy of the network whose BatchNorm layers keep no running statistics
(``torch.func.replace_all_batch_norm_modules_``): a jvp may not update buffers in place, and the
network's own running statistics must see only the network's batches. At evaluation the network's
test loss and accuracy are its usual eval-mode ones (running statistics), while the Taylor model, and
the network in the gap, use the statistics of each evaluation batch: the Taylor model at theta0 with
theta0's running buffers would be a different function from the one trained (freshly built buffers
are placeholders, mean 0 and variance 1), so the gap would measure the running averages catching up,
not nonlinearity. For a network without batch norm all these coincide with plain eval mode.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, jvp, replace_all_batch_norm_modules_

from ..config import TrainConfig
from ..data.base import Dataset
from ..data.transforms import crop_flip
from ..errors import UserError
from ..store.metrics import COLUMNS, Row
from ..train.data_order import DataOrder
from ..train.loop import compute_loss, correct, make_optimizer, step_function
from ..train.schedules import lr_table
from .batchnorm import has_batchnorm

GAP_THRESHOLD = 0.15  # relative test-output gap whose first crossing the lens reports


@dataclass
class TaylorModel:
    """What f_lin needs: the trainable parameters at theta0, the frozen ones (never differentiated)
    and ``shell``, a copy of the network that computes BatchNorm from batch statistics only."""

    theta0: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]
    shell: nn.Module
    names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = list(self.theta0)


def taylor_model(model: nn.Module) -> TaylorModel:
    """The Taylor model of ``model`` around its current parameters; those with requires_grad off
    (frozen) stay at theta0. A network with dropout is refused: its Taylor model would need the
    network's random masks."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        raise UserError(f"{type(model).__name__} has dropout; the Taylor model needs a deterministic network "
                        "(set the dropout probability to 0)")
    shell = copy.deepcopy(model).train()
    replace_all_batch_norm_modules_(shell)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return TaylorModel({n: t for n, t in params.items() if n in trainable},
                       {n: t for n, t in params.items() if n not in trainable}, shell)


def network_batch_stats(tm: TaylorModel, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The network at ``params`` with BatchNorm on the statistics of ``x`` (no running stats touched)."""
    return functional_call(tm.shell, ({**tm.frozen, **params},), (x,))


def taylor_outputs(tm: TaylorModel, params: list[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; theta0), J (theta - theta0)) from one ``torch.func.jvp``; ``params`` are theta in
    ``tm.names`` order. The tangent carries autograd to ``params`` when they require grad, and the
    whole composes with further torch.func transforms (forward-mode dual tensors used directly were
    ~20 % faster on cnn1d but cannot be nested, see benchmarks/linearized.py)."""
    delta = dict(zip(tm.names, torch._foreach_sub(params, [tm.theta0[n] for n in tm.names])))

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(tm.shell, ({**tm.frozen, **p},), (x,))

    return jvp(f, (tm.theta0,), (delta,))


def taylor_forward(tm: TaylorModel, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f_lin(x; theta) = f(x; theta0) + J_theta f(x; theta0) (theta - theta0)."""
    f0, tangent = taylor_outputs(tm, params, x)
    return f0 + tangent


class Batches:
    """The engine loop's batches: ``order``'s indices gathered into buffers allocated once (the last
    batch of an epoch may be shorter), augmented with the order's parameters."""

    def __init__(self, data: Dataset, order: DataOrder) -> None:
        self.x, self.y, self.order = data.x_train, data.y_train, order
        self.whole = not order.shuffle and order.batch == order.n  # full batch: the data itself
        size = 0 if self.whole else order.batch
        self.x_buf = self.x.new_empty((size, *self.x.shape[1:]))
        self.y_buf = self.y.new_empty((size, *self.y.shape[1:]))

    def __call__(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.order.batch_slice(t)
        if self.whole:
            xb, yb = self.x, self.y
        else:
            idx, n = self.order.perm[window], window.stop - window.start
            xb = torch.index_select(self.x, 0, idx, out=self.x_buf[:n])
            yb = torch.index_select(self.y, 0, idx, out=self.y_buf[:n])
        if self.order.augment:
            o = self.order
            xb = crop_flip(xb, o.dx[window], o.dy[window], o.flip[window], pad=o.pad)
        return xb, yb


def _named_mask(model: nn.Module, mask: dict[str, torch.Tensor] | None) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """``mask`` (parameter name -> 0/1 tensor) as (parameter, mask) pairs of ``model``."""
    if not mask:
        return []
    params = dict(model.named_parameters())
    bad = [n for n in mask if n not in params or mask[n].shape != params[n].shape]
    if bad:
        raise UserError(f"mask entry {bad[0]!r} names no parameter of {type(model).__name__} of that shape; "
                        "give masks by named_parameters() name with the parameter's shape")
    return [(params[n], m.to(params[n].device, params[n].dtype)) for n, m in mask.items()]


class _Trained:
    """One model's optimizer state and the masked update both sides apply."""

    def __init__(self, module: nn.Module, cfg: TrainConfig, mask: dict[str, torch.Tensor] | None) -> None:
        self.module = module
        pairs = _named_mask(module, mask)
        self.masked, self.masks = [p for p, _ in pairs], [m for _, m in pairs]
        with torch.no_grad():
            if pairs:
                torch._foreach_mul_(self.masked, self.masks)
        self.optimizer = make_optimizer(cfg, module)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.grad_pairs = [(p, m) for p, m in pairs if p.requires_grad]
        self._step = step_function(self.optimizer)

    def update(self, loss: torch.Tensor, lr: float) -> None:
        """Backward, masked gradients, the optimizer step at ``lr``, masked weights: as the loop does."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for p in self.params:
            p.grad = None
        loss.backward()
        if self.grad_pairs:
            torch._foreach_mul_([p.grad for p, _ in self.grad_pairs], [m for _, m in self.grad_pairs])
        self._step()
        if self.masks:
            with torch.no_grad():
                torch._foreach_mul_(self.masked, self.masks)


class SideBySide:
    """The network and its Taylor model around the same theta0, one update each per batch.

    ``net`` and ``lin`` hold copies of ``model`` (left untouched); ``lin``'s parameters are theta of
    the Taylor model. ``step`` syncs nothing with the host; ``observe`` reads back once."""

    def __init__(self, model: nn.Module, data: Dataset, cfg: TrainConfig, order: DataOrder, steps: int, *,
                 mask: dict[str, torch.Tensor] | None = None, eval_batch: int = 2000,
                 threshold: float = GAP_THRESHOLD) -> None:
        if eval_batch < 1 or not threshold > 0:
            raise UserError(f"eval_batch must be >= 1 and threshold > 0, got {eval_batch} and {threshold}")
        self.cfg, self.data, self.eval_batch, self.threshold = cfg, data, eval_batch, threshold
        self.net = _Trained(copy.deepcopy(model).train(), cfg, mask)
        self.lin = _Trained(copy.deepcopy(model).train(), cfg, mask)
        self.tm = taylor_model(self.lin.module)  # after masking and freezing: theta0 as both start
        named = dict(self.lin.module.named_parameters())
        self.lin_params = [named[n] for n in self.tm.names]
        self.batches = Batches(data, order)
        self.lrs = lr_table(cfg, 0, steps, order.steps_per_epoch)
        self.bn = has_batchnorm(model)
        self.crossed = False

    def step(self, t: int) -> None:
        """The update of step t (0-based) for both models, on the same batch at the same lr."""
        xb, yb = self.batches(t)
        lr = self.lrs[t]
        self.net.update(compute_loss(self.cfg.loss, self.net.module(xb), yb), lr)
        self.lin.update(compute_loss(self.cfg.loss, taylor_forward(self.tm, self.lin_params, xb), yb), lr)

    @torch.no_grad()
    def test_outputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """On the test split: the network in eval mode, the network on batch statistics (the same
        tensor without batch norm), f_lin, and f_lin - f0; in chunks of ``eval_batch``."""
        net = self.net.module
        params = dict(net.named_parameters())
        parts: list[tuple[torch.Tensor, ...]] = []
        x = self.data.x_test
        for i in range(0, x.shape[0], self.eval_batch):
            xc = x[i:i + self.eval_batch]
            net.eval()
            out = net(xc)
            net.train()
            batch = network_batch_stats(self.tm, params, xc) if self.bn else out
            f0, tangent = taylor_outputs(self.tm, self.lin_params, xc)
            parts.append((out, batch, f0 + tangent, tangent))
        return tuple(torch.cat(p) for p in zip(*parts))  # type: ignore[return-value]

    def observe(self, step: int) -> list[Row]:
        """Both models' test loss and accuracy, the output gap, and the crossing once it happens."""
        rows = comparison_rows(step, self.data.y_test, self.cfg.loss, *self.test_outputs())
        gap = next(r[4] for r in rows if r[1] == "lin_gap_rel")
        if not self.crossed and step > 0 and gap > self.threshold:
            self.crossed = True
            rows.append((step, "lin_gap_crossing", f"{self.threshold:g}", "test", gap))
        return rows


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.double().pow(2).mean().sqrt()


def _predict(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sign(out.reshape(y.shape)) if y.is_floating_point() else out.argmax(-1)


def comparison_rows(step: int, y: torch.Tensor, loss: str, net_eval: torch.Tensor, net_batch: torch.Tensor,
                    f_lin: torch.Tensor, tangent: torch.Tensor) -> list[Row]:
    """Rows (step, name, "", "test", value): ``loss``/``accuracy`` of the network (eval mode),
    ``lin_loss``/``lin_accuracy`` of the Taylor model, ``lin_gap_rel`` = RMS(f_net - f_lin) / RMS(f_lin)
    (the linear-dynamics experiment's gap_rel), ``lin_gap_rel_delta`` = RMS(f_net - f_lin) / RMS(f_lin - f0)
    (the gap against how far f_lin has moved), ``lin_gap_mse`` and ``lin_agreement`` (fraction of equal
    predictions). A ratio with a zero denominator is NaN (at theta0, RMS(f_lin - f0) = 0)."""
    n = max(1, y.shape[0])
    diff = net_batch - f_lin
    values = torch.stack([compute_loss(loss, net_eval, y, reduction="sum").double() / n,
                          correct(net_eval, y).double() / n,
                          compute_loss(loss, f_lin, y, reduction="sum").double() / n,
                          correct(f_lin, y).double() / n,
                          _rms(diff), _rms(f_lin), _rms(tangent), diff.double().pow(2).mean(),
                          (_predict(net_batch, y) == _predict(f_lin, y)).double().mean()]).tolist()
    net_loss, net_acc, lin_loss, lin_acc, rms_diff, rms_lin, rms_tan, mse, agree = values

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    named = {"loss": net_loss, "accuracy": net_acc, "lin_loss": lin_loss, "lin_accuracy": lin_acc,
             "lin_gap_rel": ratio(rms_diff, rms_lin), "lin_gap_rel_delta": ratio(rms_diff, rms_tan),
             "lin_gap_mse": mse, "lin_agreement": agree}
    return [(step, name, "", "test", value) for name, value in named.items()]


def _eval_steps(evals: Iterable[int], steps: int) -> set[int]:
    wanted = {int(s) for s in evals}
    bad = sorted(s for s in wanted if not 0 <= s <= steps)
    if bad:
        raise UserError(f"evaluation step {bad[0]} is outside 0..{steps}; evaluate within the training length")
    return wanted


def train_side_by_side(model: nn.Module, data: Dataset, cfg: TrainConfig, order: DataOrder, steps: int,
                       evals: Iterable[int], *, mask: dict[str, torch.Tensor] | None = None, eval_batch: int = 2000,
                       threshold: float = GAP_THRESHOLD) -> pd.DataFrame:
    """Train copies of ``model`` and of its Taylor model around ``model``'s parameters for ``steps``
    steps on ``order``'s batches with ``cfg``'s optimizer and schedule (``mask``: parameter name ->
    0/1, applied to both); rows (step, name, layer, split, value) at the steps in ``evals``, see
    ``comparison_rows``, plus ``lin_gap_crossing`` (layer: the threshold) at the first evaluation step
    > 0 whose ``lin_gap_rel`` exceeds ``threshold``, if any. Trains from theta0 (step 0) only."""
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    wanted = _eval_steps(evals, steps)
    sbs = SideBySide(model, data, cfg, order, steps, mask=mask, eval_batch=eval_batch, threshold=threshold)
    rows: list[Row] = sbs.observe(0) if 0 in wanted else []
    for t in range(steps):
        sbs.step(t)
        if t + 1 in wanted:
            rows += sbs.observe(t + 1)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"step": "int64", "value": "float64"})


def crossing_step(frame: pd.DataFrame, threshold: float = GAP_THRESHOLD) -> int | None:
    """The first step > 0 whose ``lin_gap_rel`` exceeds ``threshold`` in rows like
    ``train_side_by_side``'s (one run); None when the gap never does (or was never measured)."""
    gap = frame[(frame["name"] == "lin_gap_rel") & (frame["step"] > 0)].sort_values("step")
    over = gap[gap["value"] > threshold]
    return int(over["step"].iloc[0]) if len(over) else None
