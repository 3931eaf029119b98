"""Early-phase statistics of every training step (docs/experiments/early_stats.md), computed on the device.

``observe.recorders = ["early_stats"]`` records, for every step the process trains (not only at
evaluation steps), these rows, all with split ``"train"``:

==================  ==============================  ============================================
name                layer                           value
==================  ==============================  ============================================
``grad_norm``       parameter name, or ``""``       L2 norm of the gradient of the update that
                                                    ended at the step; ``""``: over every
                                                    parameter with a gradient
``weight_magnitude`` prunable weight, or ``""``     mean |w|; ``""``: over all prunable weights
``sign_change``     prunable weight, or ``""``      fraction of weights whose sign differs from
                                                    θ0 (``torch.sign``, so 0 is a sign of its own)
``dist_init``       prunable weight, or ``""``      ||w - w0||_2
``cos_init``        prunable weight, or ``""``      <w, w0> / (||w|| ||w0||)
``weight_traj``     ``f"{name}[{i}]"``              one sampled prunable weight; ``i`` indexes the
                                                    parameter flattened row-major
==================  ==============================  ============================================

The sampled weights are the same in every run of one model: ``n_traj`` (16) flat indices into the
concatenation of the prunable weights (in ``ctx.prunable`` order), drawn without replacement by a
``torch.Generator`` seeded with ``traj_seed`` (0).

The step the process starts from (``ctx.start``, step 0 for a fresh run) gets the gradient-free
statistics of its starting weights, emitted at the first ``collect``, so curves start at the
beginning. It has no ``grad_norm``: no gradient exists before the first update. (A resumed run that
already stored its start step, i.e. one whose start is an evaluation step the loop does not observe
again, does not emit it twice.)

**θ0 unknown.** When ``ctx.initial_state()`` returns None (e.g. a run resumed from a later step
with no step-0 checkpoint, in the run or in its ``start_run``), ``sign_change``, ``dist_init`` and
``cos_init`` are not recorded; the other statistics are.

**How it stays cheap.** ``after_step`` only launches device work; it never reads a value back (no
``.item()``, ``float()`` or branching on tensor values), so it does not sync with the host, and it
allocates no tensors. Small models on a CPU are bound by per-op overhead, which is worse than the
hot-loop microbenchmark suggests: between two calls the training step evicts the recorder's code and
data from the caches, so every distinct op pays a cold start (measured on a loaded 2-core machine:
the 8-op per-step version of this recorder cost ~150 us per cnn1d step in the loop against ~30 us
called back to back). So the work is split:

* per step, **one op**: ``torch.cat`` of cached views of the gradients and prunable weights (and
  constant zero pads) into the next slot of a preallocated snapshot block
  ``snap[k] = [gradients (Rg rows) | prunable weights (Rw rows)]`` of rows of ``width`` elements, each
  tensor starting on a new row (when the loop hands in new ``.grad`` tensors each step, as the
  engine's does, only those views are swapped in; a full re-plan only when a layout changes);
* every ``batch`` (64) steps, and at ``collect``, **one batched reduction** over the pending
  snapshots (about 10 ops, whatever the number of steps and layers): row-wise 2-norms of the
  snapshots; ``W - W0`` and its row 2-norms; ``sign(W) != sign(W0)`` as a float 0/1 indicator (the
  bool path is ~10x slower on a CPU) and its row sums; row sums of ``|W|``; the sampled weights by one
  ``index_select``; one ``cat`` of it all into the next rows of the preallocated result buffer
  (rows = steps since the last collect, columns = per-row statistics);
* at ``collect`` (one sync) the result rows are copied to the host and summed per layer in float64:
  squared row norms give the per-layer gradient, weight and difference norms, row sums the sums of
  |w| and the sign-change counts; cosines come from the norms,
  ``cos = 1 + ((||w|| - ||w0||)^2 - ||w - w0||^2) / (2 ||w|| ||w0||)``, which keeps full precision near 1.

Measured on the loaded 2-core machine: cnn1d (1.9-2.6 ms a step on 1 thread) pays ~45-80 us a step,
reductions included, 2-4 %; resnet_cifar_20 ~0.6 ms of a 650 ms step
(``benchmarks/early_stats_overhead.py``). The snapshot block
holds at most ``batch`` steps and about ``snapshot_elements`` (4M) elements (resnet_cifar_20: 7
steps). The result buffer holds the longest stretch between consecutive ``ctx.evals`` (from
``ctx.start`` to ``ctx.end``), at most ``max_rows`` (4096) to start with; if steps ever outrun it, it
doubles on the device (an allocation, never a sync).

Caveats: do not ask for ``grad_norm`` and ``early_stats`` in one run; both write (step,
``grad_norm``, ``""``, ``train``), the former as a mean since the last evaluation. Steps buffered
since the last evaluation are lost if the process dies; a run resumed from a resume point that was not
an evaluation step has a gap there (its start step's weight statistics are recorded, not its
gradient).
"""
from __future__ import annotations

import math
from operator import is_

import numpy as np
import torch

from ..store.metrics import Row
from ..train.recorders import Recorder, RecordContext, register_recorder

NAMES = ("grad_norm", "weight_magnitude", "sign_change", "dist_init", "cos_init", "weight_traj")


def _memory_order(t: torch.Tensor) -> list[int] | None:
    """A permutation of ``t``'s dims under which it is contiguous (its memory order), or None."""
    dims = list(range(t.dim()))
    if t.is_contiguous():
        return dims
    perm = sorted(dims, key=lambda d: t.stride(d), reverse=True)
    return perm if t.permute(perm).is_contiguous() else None


def _flat(t: torch.Tensor, perm: list[int] | None) -> torch.Tensor:
    """``t`` flattened in memory order (a view of its storage), or logically (a copy) if perm is None."""
    return t.permute(perm).reshape(-1) if perm is not None else t.reshape(-1)


def _position(j: int, shape: tuple[int, ...], perm: list[int] | None) -> int:
    """Where logical (row-major) flat index ``j`` of a tensor lands in ``_flat(t, perm)``."""
    if perm is None or not shape:
        return j
    coords = np.unravel_index(j, shape)
    return int(np.ravel_multi_index([coords[d] for d in perm], [shape[d] for d in perm]))


class _Packing:
    """Tensors of the given sizes laid out on rows of ``width``, each starting on a new row."""

    def __init__(self, numels: list[int], width: int) -> None:
        self.numels = numels
        self.rows = [-(-n // width) for n in numels]
        self.starts = np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64) if numels else \
            np.zeros(0, np.int64)
        self.n_rows = int(sum(self.rows))
        self.width = width

    def parts(self, flats: list[torch.Tensor], zeros: torch.Tensor) -> list[torch.Tensor]:
        """``flats`` interleaved with zero pads (views of ``zeros``), ready for ``torch.cat(out=...)``."""
        out = []
        for f, n, r in zip(flats, self.numels, self.rows):
            out.append(f)
            if r * self.width > n:
                out.append(zeros[:r * self.width - n])
        return out

    def per_layer(self, row_values: np.ndarray) -> np.ndarray:
        """Sum (steps x rows) row values per tensor: (steps x tensors)."""
        return np.add.reduceat(row_values, self.starts, axis=1) if self.numels else row_values[:, :0]


def _width(numels: list[int]) -> int:
    """Row width: a power of two near total / (8 * tensors), so padding adds at most about an eighth."""
    if not numels:
        return 64
    target = sum(numels) / (8 * len(numels))
    return int(min(1 << 16, max(64, 1 << max(0, math.ceil(math.log2(max(target, 1)))))))


class EarlyStatsRecorder(Recorder):
    """Per-step gradient norms, weight magnitude, sign changes, distance and cosine to θ0, and
    weight trajectories (docs/experiments/early_stats.md); see the module docstring for names, layers and design."""

    name = "early_stats"

    def __init__(self, n_traj: int = 16, traj_seed: int = 0, max_rows: int = 4096, batch: int = 64,
                 snapshot_elements: int = 1 << 22) -> None:
        self.n_traj = n_traj
        self.traj_seed = traj_seed
        self.max_rows = max_rows  # result rows allocated up front (more are added by doubling)
        self.batch = batch  # at most this many snapshots between batched reductions ...
        self.snapshot_elements = snapshot_elements  # ... and at most about this many elements held

    # ----------------------------------------------------------------------------------------- setup
    def start(self, ctx: RecordContext) -> None:
        named = dict(ctx.model.named_parameters())
        self.ctx = ctx
        self.gnames = [n for n, p in named.items() if p.requires_grad and p.numel() > 0]
        self.gparams = [named[n] for n in self.gnames]
        self.wnames = [n for n in ctx.prunable if n in named and named[n].numel() > 0]
        wparams = [named[n] for n in self.wnames]
        tracked = self.gparams + wparams
        self.device = tracked[0].device if tracked else torch.device("cpu")
        self.dtype = torch.float32
        for p in tracked:
            self.dtype = torch.promote_types(self.dtype, p.dtype)
        dev, dt = self.device, self.dtype

        width = _width([p.numel() for p in tracked])
        self.gpack = _Packing([p.numel() for p in self.gparams], width)
        self.wpack = _Packing([p.numel() for p in wparams], width)
        self.wnumel = np.array(self.wpack.numels, dtype=np.float64)
        rg, rw = self.gpack.n_rows, self.wpack.n_rows
        self.zeros = torch.zeros(width, device=dev, dtype=dt)

        # snapshots: one (rg + rw) x width block per step, [gradients | prunable weights]
        self.k_max = max(1, min(self.batch, self.snapshot_elements // max(1, (rg + rw) * width)))
        self.snap = torch.zeros(self.k_max, rg + rw, width, device=dev, dtype=dt)
        self.snap_flat = [self.snap[k].view(-1) for k in range(self.k_max)]
        self.k = 0  # snapshots taken since the last reduction

        # weights: cached views of the parameters' storage, in memory order
        self.wperms = [_memory_order(p) for p in wparams]
        self.wparams = [p.detach() for p in wparams]
        self.w_dynamic = any(perm is None for perm in self.wperms)
        self.wparts = self.wpack.parts([_flat(p, perm) for p, perm in zip(self.wparams, self.wperms)], self.zeros)
        self.g_dynamic = False
        self._plan([p.grad for p in self.gparams])
        self._start_theta0(ctx, wparams, rw, width)
        self._start_trajectory(wparams, rg, width)
        self._start_results(ctx, rg, rw)

    def _start_theta0(self, ctx: RecordContext, wparams: list, rw: int, width: int) -> None:
        """theta_0 packed like the weights (when known), and the scratch blocks of the reduction."""
        dev, dt = self.device, self.dtype
        theta0 = ctx.initial_state() if wparams else None
        self.has_init = theta0 is not None and all(n in theta0 for n in self.wnames)
        if self.has_init:
            flats0 = [_flat(theta0[n].detach().to(dev, dt), perm) for n, perm in zip(self.wnames, self.wperms)]
            self.z0 = torch.zeros(rw, width, device=dev, dtype=dt)
            torch.cat(self.wpack.parts(flats0, self.zeros), out=self.z0.view(-1))
            self.s0 = torch.sign(self.z0)
            w0_rows = torch.linalg.vector_norm(self.z0, 2, dim=1).to("cpu", torch.float64).numpy()[None]
            self.w0_norm2 = self.wpack.per_layer(w0_rows ** 2)[0]  # same kernels as the per-step norms
        self.tmp_a = torch.zeros(self.k_max, rw, width, device=dev, dtype=dt)  # w - w0, sign(w), sign change
        self.tmp_b = torch.zeros(self.k_max, rw, width, device=dev, dtype=dt)  # |w|

    def _start_trajectory(self, wparams: list, rg: int, width: int) -> None:
        """The sampled weights' positions in a snapshot."""
        # trajectory sample: global flat indices over the prunable weights, same for every run of a model
        total = int(sum(self.wpack.numels))
        k = min(self.n_traj, total)
        g = torch.Generator().manual_seed(self.traj_seed)
        picks = sorted(torch.randperm(total, generator=g)[:k].tolist()) if k else []
        offsets = np.concatenate([[0], np.cumsum(self.wpack.numels)]) if self.wnames else np.zeros(1)
        self.traj_layers: list[str] = []
        positions = []
        for j in picks:
            li = int(np.searchsorted(offsets, j, side="right") - 1)
            local = j - int(offsets[li])
            self.traj_layers.append(f"{self.wnames[li]}[{local}]")
            positions.append(int(self.wpack.starts[li]) * width + _position(local, tuple(wparams[li].shape),
                                                                             self.wperms[li]))
        self.tidx = torch.tensor(positions, dtype=torch.long, device=self.device) + rg * width  # into a snapshot

    def _start_results(self, ctx: RecordContext, rg: int, rw: int) -> None:
        """The result buffer, and the start step's snapshot (its weights, no gradient)."""
        # results: one row per step since the last collect
        #   [2-norms of the G and W rows | (2-norms of the W - W0 rows | sign-change counts) | sums |w| | traj]
        self.c_norm = rg + rw
        self.c_init = self.c_norm + (2 * rw if self.has_init else 0)
        self.c_l1 = self.c_init + rw
        self.n_cols = self.c_l1 + len(self.traj_layers)
        self.cap = self._capacity(ctx)
        self.res = torch.zeros(self.cap, self.n_cols, device=self.device, dtype=self.dtype)
        self.j = 0  # result rows written
        self.steps: list[int] = []
        self.gmeta: list = []
        self.first_collect = True
        # the start step: its weights, no gradient
        self.snap[0, :rg].zero_()
        if rw:
            torch.cat(self.wparts if not self.w_dynamic else self._weight_parts(), out=self.snap[0, rg:].view(-1))
        self.steps.append(ctx.start)
        self.gmeta.append(None)
        self.k = 1

    def _capacity(self, ctx: RecordContext) -> int:
        marks = sorted({ctx.start, ctx.end} | {e for e in ctx.evals if ctx.start <= e <= ctx.end})
        gap = max((b - a for a, b in zip(marks, marks[1:])), default=1)
        return max(2, min(gap + 1, self.max_rows))

    def _weight_parts(self) -> list[torch.Tensor]:
        return self.wpack.parts([_flat(p, perm) for p, perm in zip(self.wparams, self.wperms)], self.zeros)

    def _plan(self, grads: list) -> None:
        """The ``cat`` inputs: views of the current gradients and weights (rebuilt when a ``.grad`` is
        replaced, or every step for tensors that have no flat view)."""
        self.gseen = list(grads)
        self.gpresent = tuple(g is not None for g in grads)
        flats = []
        dynamic = False
        for g, n in zip(grads, self.gpack.numels):
            if g is None:
                flats.append(torch.zeros(n, device=self.device, dtype=self.dtype))
                continue
            perm = _memory_order(g)
            dynamic |= perm is None
            flats.append(_flat(g, perm))
        self.g_dynamic = dynamic
        wparts = self._weight_parts() if self.w_dynamic else self.wparts
        self.parts = self.gpack.parts(flats, self.zeros) + wparts
        # where each gradient sits in ``parts``: a loop that sets .grad to None before each backward
        # hands in new (contiguous) gradient tensors every step, and only those slots need replacing
        self.gslots = np.cumsum([0] + [1 + (r * self.gpack.width > n) for n, r in
                                       zip(self.gpack.numels, self.gpack.rows)][:-1]).tolist()
        self.all_contiguous = all(g is not None and g.is_contiguous() for g in grads)

    # ----------------------------------------------------------------------------------- per step
    def after_step(self, model: torch.nn.Module, step: int, loss: torch.Tensor) -> None:
        grads = [p.grad for p in self.gparams]
        if self.g_dynamic or self.w_dynamic or not all(map(is_, grads, self.gseen)):
            if self.all_contiguous and not self.w_dynamic and all(g is not None and g.is_contiguous() for g in grads):
                for slot, g in zip(self.gslots, grads):  # fresh gradients, same layout: swap the views
                    self.parts[slot] = g.view(-1)
                self.gseen = grads
            else:
                self._plan(grads)
        if self.parts:
            torch.cat(self.parts, out=self.snap_flat[self.k])  # the step's one op: a snapshot
        self.steps.append(step)
        self.gmeta.append(self.gpresent)
        self.k += 1
        if self.k == self.k_max:
            self._reduce()

    def _reduce(self) -> None:
        """Statistics of the pending snapshots, batched, into the result rows (device ops only)."""
        k, j = self.k, self.j
        if k == 0:
            return
        if j + k > self.cap:
            self._grow(j + k)
        x = self.snap[:k]
        w = x[:, self.gpack.n_rows:]
        a, b = self.tmp_a[:k], self.tmp_b[:k]
        out = [torch.linalg.vector_norm(x, 2, dim=2)]  # k x (rg + rw) row norms
        if self.has_init:
            out.append(torch.linalg.vector_norm(torch.sub(w, self.z0, out=a), 2, dim=2))
            torch.sign(w, out=a)
            out.append(torch.ne(a, self.s0, out=a).sum(2))  # float 0/1 indicator: far faster than bool
        out.append(torch.abs(w, out=b).sum(2))
        out.append(x.view(k, -1).index_select(1, self.tidx))
        torch.cat(out, dim=1, out=self.res[j:j + k])
        self.j, self.k = j + k, 0

    def _grow(self, need: int) -> None:
        """More result rows, on the device (no host sync); only when steps outrun ctx.evals."""
        cap = max(need, 2 * self.cap)
        new = torch.zeros(cap, self.n_cols, device=self.device, dtype=self.dtype)
        new[:self.j].copy_(self.res[:self.j])
        self.res, self.cap = new, cap

    # -------------------------------------------------------------------------------- read back
    def collect(self, model: torch.nn.Module, step: int) -> list[Row]:
        first, self.first_collect = self.first_collect, False
        self._reduce()
        n = self.j
        if n == 0:
            return []
        data = self.res[:n].to("cpu", torch.float64).numpy()  # the one host sync
        steps, gmeta = self.steps, self.gmeta
        self.j, self.steps, self.gmeta = 0, [], []
        if first and step != self.ctx.start and self.ctx.start in self.ctx.evals:
            data, steps, gmeta = data[1:], steps[1:], gmeta[1:]  # start step stored by an earlier process
        if not steps:
            return []
        return self._rows(data, steps, gmeta)

    def _rows(self, data: np.ndarray, steps: list[int], gmeta: list) -> list[Row]:
        rg, rw = self.gpack.n_rows, self.wpack.n_rows
        rows: list[Row] = []

        def emit(name: str, layers: list[str], values: np.ndarray) -> None:
            for s, vals in zip(steps, values.tolist()):
                rows.extend([(s, name, layer, "train", v) for layer, v in zip(layers, vals)])

        # gradient norms (absent gradients: skipped; the start step has none)
        if self.gnames:
            g2 = self.gpack.per_layer(data[:, :rg] ** 2)
            present = np.array([m if m is not None else (False,) * len(self.gnames) for m in gmeta], dtype=bool)
            gl = np.sqrt(g2)
            gglob = np.sqrt(np.where(present, g2, 0.0).sum(1))
            for j, (s, vals) in enumerate(zip(steps, gl.tolist())):
                if gmeta[j] is None:
                    continue
                rows.extend([(s, "grad_norm", layer, "train", v) for layer, v, p in
                             zip(self.gnames, vals, present[j]) if p])
                rows.append((s, "grad_norm", "", "train", float(gglob[j])))
        if not self.wnames:
            return rows
        with np.errstate(divide="ignore", invalid="ignore"):
            w2 = self.wpack.per_layer(data[:, rg:rg + rw] ** 2)
            l1 = self.wpack.per_layer(data[:, self.c_init:self.c_l1])
            total = self.wnumel.sum()
            layers = [*self.wnames, ""]
            emit("weight_magnitude", layers, np.hstack([l1 / self.wnumel, l1.sum(1, keepdims=True) / total]))
            if self.has_init:
                d2 = self.wpack.per_layer(data[:, self.c_norm:self.c_norm + rw] ** 2)
                cnt = self.wpack.per_layer(np.rint(data[:, self.c_norm + rw:self.c_init]))
                emit("sign_change", layers, np.hstack([cnt / self.wnumel, cnt.sum(1, keepdims=True) / total]))
                d2a = np.hstack([d2, d2.sum(1, keepdims=True)])
                emit("dist_init", layers, np.sqrt(d2a))
                w = np.sqrt(np.hstack([w2, w2.sum(1, keepdims=True)]))
                w0 = np.sqrt(np.concatenate([self.w0_norm2, [self.w0_norm2.sum()]]))[None]
                emit("cos_init", layers, 1.0 + ((w - w0) ** 2 - d2a) / (2.0 * w * w0))
        emit("weight_traj", self.traj_layers, data[:, self.c_l1:])
        return rows


register_recorder("early_stats", EarlyStatsRecorder)

__all__ = ["EarlyStatsRecorder", "NAMES"]
