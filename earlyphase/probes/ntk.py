"""The empirical NTK Theta(x_i, x_j) = sum_p s_p <df(x_i)/dp, df(x_j)/dp> of a scalar-output network
(docs/experiments/linear_dynamics.md), computed from structured Grams instead of per-sample Jacobians.

Why structured: for a layer y = s W a, the per-sample weight gradient is s g a^T (g = df/dy), so the
Gram of those gradients over samples is s^2 (G G^T) ⊙ (A A^T): O(n^2 (in + out)) instead of
O(n^2 in out) for the contraction of materialized Jacobians. G for every sample comes from one
backward pass of sum_i f(x_i), since samples do not interact (the network is put in eval mode).
Convolutions use the conv-as-matmul unfold: per-sample gradients G_i U_i^T (cheaper than the sum over
pairs of positions for the 3x3 layers used here), then their Gram. Parameters of any other layer fall
back to per-sample Jacobians from ``torch.func`` (vmap of jacrev). ``two_layer`` keeps its weights as
bare parameters, so it has its own factorization (both of its layers are linear layers).

Memory: samples are processed in chunks; the factors of one row chunk are kept while those of each
later column chunk are recomputed, so what is held beyond the n x n result is a few chunks' worth,
whatever n is. The n x n result itself is checked against a memory budget first.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError


def default_budget_bytes() -> int:
    """Half the machine's physical memory: the n x n result must fit with room to spare."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_budget(n: int, dtype: torch.dtype = torch.float64, budget_bytes: int | None = None,
                 hint: str = "use fewer samples") -> None:
    """A clear error, naming the size, when an n x n matrix of ``dtype`` would exceed the budget."""
    budget = default_budget_bytes() if budget_bytes is None else budget_bytes
    need = n * n * torch.empty((), dtype=dtype).element_size()
    if need > budget:
        raise UserError(f"the empirical NTK on n = {n} samples is an {n} x {n} matrix of {_size(need)}, "
                        f"more than the memory budget of {_size(budget)}; {hint}")


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


@dataclass
class _Factors:
    """One chunk's factors: (scale, G, A) with Gram scale (G G^T) ⊙ (A A^T); (scale, J) with scale J J^T."""

    products: list[tuple[float, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    jacobians: list[tuple[float, torch.Tensor]] = field(default_factory=list)

    def gram(self, other: "_Factors | None" = None) -> torch.Tensor:
        """The block of Theta between this chunk and ``other`` (None: this chunk with itself, where
        the Jacobian Grams are symmetric and only their lower triangle of blocks is multiplied)."""
        right = self if other is None else other
        out = None
        for (s, g, a), (_, g2, a2) in zip(self.products, right.products):
            term = (g @ g2.T).mul_(a @ a2.T).mul_(s)
            out = term if out is None else out.add_(term)
        for (s, j), (_, j2) in zip(self.jacobians, right.jacobians):
            term = (_self_gram(j) if other is None else j @ j2.T).mul_(s)
            out = term if out is None else out.add_(term)
        return out


def _self_gram(j: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """j j^T from the blocks on and below the diagonal (about 5/8 of the products for 4 parts)."""
    c = j.shape[0]
    step = max(1, -(-c // parts))
    out = j.new_empty(c, c)
    for a in range(0, c, step):
        b = min(c, a + step)
        out[a:, a:b] = j[a:] @ j[a:b].T
        out[a:b, b:] = out[b:, a:b].T
    return out


def _structure(module: nn.Module) -> str | None:
    kind = getattr(module, "ntk_structure", None)
    if kind is not None:
        return kind
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d and module.groups == 1 and isinstance(module.padding, tuple):
        return "conv2d"
    return None


def _two_layer_factors(model: nn.Module, x: torch.Tensor, scales: dict[str, float]) -> _Factors:
    """two_layer: w is a linear layer with input x/sqrt(d) and output gradient v_r phi'(u_r)/sqrt(m);
    v is one with input phi(u)/sqrt(m) and output gradient 1."""
    x = x.flatten(1).to(model.w.dtype)
    d, m = model.d, model.m
    with torch.enable_grad():
        u = (x @ model.w.detach().T / math.sqrt(d)).requires_grad_(True)
        h = model.phi(u)
        (dphi,) = torch.autograd.grad(h.sum(), u)
    out = _Factors()
    if scales.get("w", 1.0):
        out.products.append((scales.get("w", 1.0), dphi * model.v.detach()[0] / math.sqrt(m), x / math.sqrt(d)))
    if scales.get("v", 1.0):
        a = h.detach() / math.sqrt(m)
        out.products.append((scales.get("v", 1.0), torch.ones_like(a[:, :1]), a))
    return out


def _generic_factors(model: nn.Module, x: torch.Tensor, scales: dict[str, float]) -> _Factors:
    """Hooks record each structured layer's input and output; one backward gives every G; the
    remaining parameters get per-sample Jacobians from torch.func."""
    params = {n: p.detach() for n, p in model.named_parameters() if scales.get(n, 1.0)}
    owner: dict[str, tuple[str, nn.Module]] = {}
    for mname, module in model.named_modules():
        kind = _structure(module)
        if kind is None:
            continue
        for pname in ("weight", "bias"):
            full = f"{mname}.{pname}" if mname else pname
            if full in params and getattr(module, pname, None) is not None:
                owner[full] = (kind, module)
    captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    modules = {mod for _, mod in owner.values()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured[module] = (inputs[0].detach(), output)

    handles = [mod.register_forward_hook(hook) for mod in modules]
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)  # so every layer output is part of the graph
            f = torch.func.functional_call(model, params, (xg,))
            _check_scalar(f)
            outs = [captured[mod][1] for mod in modules]
            grads = dict(zip(modules, torch.autograd.grad(f.sum(), outs))) if outs else {}
    finally:
        for h in handles:
            h.remove()
    result = _Factors()
    for name in params:
        if name not in owner:
            continue
        kind, module = owner[name]
        a, g = captured[module][0], grads[module].detach()
        s = scales.get(name, 1.0) * (getattr(module, "weight_scale", 1.0) ** 2 if name.endswith("weight") else 1.0)
        if kind == "linear":
            g2, a2 = g.reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
            if g2.shape[0] != x.shape[0]:  # a linear layer applied at many positions: per-sample gradients
                result.jacobians.append((s, _per_sample_linear(g, a, name.endswith("weight"))))
            elif name.endswith("weight"):
                result.products.append((s, g2, a2))
            else:
                result.products.append((s, g2, torch.ones_like(g2[:, :1])))
        else:  # conv2d
            if name.endswith("weight"):
                result.jacobians.append((s, _conv_weight_grads(a, g, module)))
            else:
                result.jacobians.append((s, g.flatten(2).sum(-1)))
    rest = [n for n in params if n not in owner]
    if rest:
        result.jacobians.extend(_func_jacobians(model, x, params, rest, scales))
    return result


def _conv_weight_grads(a: torch.Tensor, g: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """Per-sample weight gradients of a conv layer (n, C_out C_in k_h k_w; columns in a fixed order of
    their own, which a Gram does not see) from its inputs ``a`` and output gradients ``g``.

    Stride 1: one batched matmul per kernel offset between g and a shifted window of the padded
    input, both laid out on the padded grid's row width, so no im2col copy is made. Other strides
    go through im2col."""
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    kh, kw = conv.weight.shape[-2:]
    if (sh, sw) != (1, 1):
        u = _unfold(a, (kh, kw), conv)
        return torch.bmm(g.flatten(2), u.transpose(1, 2)).flatten(1)
    n, c_in = a.shape[:2]
    ho, wo = g.shape[-2:]
    ap = F.pad(a, (pw, pw, ph, ph))
    wp = ap.shape[-1]
    flat = F.pad(ap.flatten(2), (0, wp - wo))  # room for the last offset's window
    g_rows = F.pad(g, (0, wp - wo)).flatten(2)  # output (h, w) at h * wp + w; zeros past wo
    out = g.new_empty(n, kh * kw, g.shape[1], c_in)
    for i in range(kh):
        for j in range(kw):
            off = i * dh * wp + j * dw
            out[:, i * kw + j] = torch.bmm(g_rows, flat[:, :, off:off + ho * wp].transpose(1, 2))  # out= is slower
    return out.flatten(1)


def _unfold(a: torch.Tensor, k: tuple[int, int], conv: nn.Module) -> torch.Tensor:
    """im2col as (n, C k_h k_w, positions) from shifted strided views: F.unfold is many times
    slower on the CPU."""
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    ap = F.pad(a, (pw, pw, ph, ph))
    ho = (ap.shape[2] - dh * (k[0] - 1) - 1) // sh + 1
    wo = (ap.shape[3] - dw * (k[1] - 1) - 1) // sw + 1
    views = [ap[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
             for i in range(k[0]) for j in range(k[1])]
    return torch.stack(views, dim=2).reshape(a.shape[0], -1, ho * wo)


def _per_sample_linear(g: torch.Tensor, a: torch.Tensor, weight: bool) -> torch.Tensor:
    g, a = g.reshape(g.shape[0], -1, g.shape[-1]), a.reshape(a.shape[0], -1, a.shape[-1])
    return torch.bmm(g.transpose(1, 2), a).flatten(1) if weight else g.sum(1)


def _func_jacobians(model: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor], names: list[str],
                    scales: dict[str, float]) -> list[tuple[float, torch.Tensor]]:
    """Per-sample Jacobians of the parameters without a known structure (torch.func vmap of jacrev)."""
    fixed = {n: p for n, p in params.items() if n not in names}
    free = {n: params[n] for n in names}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),)).reshape(())

    jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))(free, x)
    return [(scales.get(n, 1.0), jac[n].flatten(1)) for n in names]


def _check_scalar(f: torch.Tensor) -> None:
    if f.dim() > 2 or (f.dim() == 2 and f.shape[1] != 1):
        raise UserError(f"the empirical NTK here is that of a scalar output, the network gives {tuple(f.shape[1:])}; "
                        "use a two-class task with data.targets = 'pm1'")


def _factors(model: nn.Module, x: torch.Tensor, scales: dict[str, float]) -> _Factors:
    from ..models.two_layer import TwoLayer

    if isinstance(model, TwoLayer):
        if model.v.shape[0] != 1:
            _check_scalar(torch.empty(1, model.v.shape[0]))
        return _two_layer_factors(model, x, scales)
    return _generic_factors(model, x, scales)


@torch.no_grad()
def empirical_ntk(model: nn.Module, x: torch.Tensor, *, scales: dict[str, float] | None = None,
                  chunk: int = 512, budget_bytes: int | None = None) -> torch.Tensor:
    """Theta (n x n, in the model's dtype) on inputs ``x``, with parameter ``p``'s block weighted by
    ``scales[p]`` (default 1; 0 leaves it out: per-layer learning rates give the kernel of gradient
    descent as sum_p eta_p Theta_p)."""
    n = x.shape[0]
    dtype = next(model.parameters()).dtype
    check_budget(n, dtype, budget_bytes)
    scales = dict(scales or {})
    was_training = model.training
    model.eval()
    try:
        x = x.to(dtype)
        theta = torch.empty(n, n, dtype=dtype, device=x.device)
        size = max(1, chunk)
        starts = list(range(0, n, size))
        # Row chunk i against column chunks j > i, the columns in reverse order so that the last one
        # built is the next row chunk: 1 + b(b-1)/2 factor passes for b chunks, two chunks held.
        nxt: _Factors | None = _factors(model, x[:size], scales)
        for bi, i in enumerate(starts):
            rows, nxt = nxt, None
            theta[i:i + size, i:i + size] = rows.gram()
            for j in reversed(starts[bi + 1:]):
                nxt = None  # the previous column chunk is freed before the next is built
                nxt = _factors(model, x[j:j + size], scales)
                block = rows.gram(nxt)
                theta[i:i + size, j:j + size] = block
                theta[j:j + size, i:i + size] = block.T
    finally:
        model.train(was_training)
    return theta


def naive_ntk(model: nn.Module, x: torch.Tensor, scales: dict[str, float] | None = None) -> torch.Tensor:
    """Reference: one autograd call per sample, then the Gram of the stacked gradients (slow; tests
    and the benchmark compare against it)."""
    scales = dict(scales or {})
    params = [(n, p) for n, p in model.named_parameters() if scales.get(n, 1.0)]
    weights = torch.cat([torch.full((p.numel(),), math.sqrt(scales.get(n, 1.0)), dtype=p.dtype) for n, p in params])
    was_training = model.training
    model.eval()
    rows = []
    try:
        for xi in x:
            with torch.enable_grad():
                f = model(xi.unsqueeze(0)).reshape(())
                grads = torch.autograd.grad(f, [p for _, p in params], allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, (_, p) in zip(grads, params)]))
    finally:
        model.train(was_training)
    jac = torch.stack(rows) * weights
    return jac @ jac.T
