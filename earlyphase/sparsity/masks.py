"""Masks are dicts of parameter name -> bool tensor over the prunable weights (True = kept)."""
from __future__ import annotations

import hashlib

import torch

from ..config import MaskConfig, RunConfig, canonical_json, from_dict, to_dict
from ..errors import UserError
from ..store import Store
from ..store.checkpoints import split_prefix

Mask = dict[str, torch.Tensor]


def densities(mask: Mask) -> dict[str, float]:
    """Fraction kept per layer, and overall under the key ''."""
    out = {name: float(m.float().mean()) for name, m in mask.items()}
    total = sum(m.numel() for m in mask.values())
    out[""] = sum(float(m.sum()) for m in mask.values()) / max(1, total)
    return out


def keep_count(n: int, fraction: float, level: int) -> int:
    """Level L keeps round((1 - fraction)^L * n) (docs/index.md "Vocabulary")."""
    return int(round((1.0 - fraction) ** level * n))


def magnitude_prune(weights: dict[str, torch.Tensor], mask: Mask, fraction: float, level: int,
                    scope: str = "global") -> Mask:
    """Keep the largest-magnitude survivors so that ``level`` keeps round((1-f)^L N) weights,
    ranked across all layers (global) or within each layer (layerwise). Ties break by position."""
    names = list(mask)
    if scope == "layerwise":
        return {n: _top(weights[n].abs().flatten(), mask[n].flatten(), keep_count(mask[n].numel(), fraction, level))
                .view_as(mask[n]) for n in names}
    scores = torch.cat([weights[n].abs().flatten().float() for n in names])
    alive = torch.cat([mask[n].flatten() for n in names])
    kept = _top(scores, alive, keep_count(alive.numel(), fraction, level))
    out, i = {}, 0
    for n in names:
        k = mask[n].numel()
        out[n] = kept[i:i + k].view_as(mask[n])
        i += k
    return out


def _top(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    keep = min(keep, int(alive.sum()))
    ranked = torch.where(alive, scores.double(), torch.tensor(-1.0, dtype=torch.float64))
    order = torch.argsort(ranked, descending=True, stable=True)
    kept = torch.zeros_like(alive)
    kept[order[:keep]] = True
    return kept


def random_like(mask: Mask, seed: int) -> Mask:
    """A random mask with exactly the per-layer survivor counts of ``mask``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in mask.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[: int(m.sum())]] = True
        out[name] = flat.view_as(m)
    return out


def _finished(store: Store, rid: str):
    rd = store.run(rid)
    if not rd.exists() or rd.status()["status"] != "done":
        raise UserError(f"the mask needs run {rid}, which is not finished in {store.root}; "
                        "run the experiment's plan (its parents train first)")
    return rd


def _run_config(store: Store, rid: str) -> RunConfig:
    return from_dict(RunConfig, _finished(store, rid).spec()["config"])


def level_of(mcfg: MaskConfig | None, store: Store) -> int:
    """IMP level of a mask: 0 for none, parent level + 1 for magnitude, that of ``like`` for random.
    The plan carries it (``mcfg.level``); a hand-written mask is traced through the store."""
    if mcfg is None:
        return 0
    if mcfg.kind == "magnitude":
        return mcfg.level if mcfg.level is not None else 1 + level_of(_run_config(store, mcfg.from_run).mask, store)
    if mcfg.kind == "random":
        return level_of(mcfg.like, store)
    return 0


def _parent_mask(mcfg: MaskConfig, store: Store) -> MaskConfig | None:
    """The mask ``from_run`` trained under: carried by the plan, else read from the store's record."""
    return mcfg.parent if mcfg.level is not None else _run_config(store, mcfg.from_run).mask


def _key(mcfg: MaskConfig) -> str:
    """A mask config as canonical JSON, without what the plan derives (level, parent): as it always was."""
    return canonical_json(to_dict(mcfg, trajectory=True))


def resolve_mask(mcfg: MaskConfig, store: Store, shapes: dict[str, torch.Size]) -> Mask:
    """The bool tensors a MaskConfig stands for, for prunable weights of the given shapes.
    Derived masks are cached in the store under a hash of their config."""
    if mcfg.dense:
        return _with_dense(mcfg, store, shapes)
    if mcfg.kind == "stored":
        mask = store.load_mask(mcfg.id)
        _check_fits(mask, shapes, mcfg.id)
        return mask
    key = hashlib.sha256((_key(mcfg) + canonical_json(sorted(shapes))).encode()).hexdigest()[:16]
    cached = store.root / "masks" / f"derived-{key}.safetensors"
    if cached.is_file():
        from ..store.checkpoints import load_checkpoint

        return load_checkpoint(cached)[0]
    if mcfg.kind == "magnitude":
        parent = _parent_mask(mcfg, store)
        prev = resolve_mask(parent, store, shapes) if parent else {
            n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
        rd = _finished(store, mcfg.from_run)
        final = max(rd.checkpoint_steps())
        weights = split_prefix(rd.load(final)[0], "model.")
        missing = [n for n in shapes if n not in weights]
        if missing:
            raise UserError(f"run {mcfg.from_run} has no weight {missing[0]!r}; the mask's parent is another model")
        mask = magnitude_prune(weights, prev, mcfg.fraction, level_of(mcfg, store), mcfg.scope)
    else:
        mask = random_like(resolve_mask(mcfg.like, store, shapes), mcfg.seed)
    from ..store.checkpoints import save_checkpoint

    save_checkpoint(cached, mask, {"kind": "mask", "config": _key(mcfg)})
    return mask


def _with_dense(mcfg: MaskConfig, store: Store, shapes: dict[str, torch.Size]) -> Mask:
    """The source mask (resolved at its own shapes) with ``mcfg.dense`` parameters all kept."""
    import dataclasses

    inner = dataclasses.replace(mcfg, dense=())
    source = source_shapes(inner, store)
    full = resolve_mask(inner, store, {n: (source[n] if n in mcfg.dense and n in source else s)
                                       for n, s in shapes.items()})
    return {n: (torch.ones(shapes[n], dtype=torch.bool) if n in mcfg.dense else m) for n, m in full.items()}


def source_shapes(mcfg: MaskConfig, store: Store) -> dict[str, torch.Size]:
    """Shapes of the weights a mask was derived from: its IMP parent's final weights, or a stored mask."""
    if mcfg.kind == "stored":
        return {n: m.shape for n, m in store.load_mask(mcfg.id).items()}
    if mcfg.kind == "random":
        return source_shapes(mcfg.like, store)
    rd = store.run(mcfg.from_run)
    _run_config(store, mcfg.from_run)
    return {n: t.shape for n, t in split_prefix(rd.load(max(rd.checkpoint_steps()))[0], "model.").items()}


def _check_fits(mask: Mask, shapes: dict[str, torch.Size], mask_id: str) -> None:
    for name, m in mask.items():
        if name not in shapes or tuple(shapes[name]) != tuple(m.shape):
            raise UserError(f"mask {mask_id} does not fit this model (parameter {name!r}); "
                            "use a mask made for this model")
