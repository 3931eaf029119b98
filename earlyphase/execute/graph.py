"""A plan is a graph of run configs: a run depends on the run it starts from and the runs its mask
is derived from. The same run asked for twice is one node, with the union of the observations.

The graph carries what it knows about IMP chains: a magnitude mask derived from a run in the graph
gets its level and its parent's mask filled in (fields outside the run id), so nothing downstream
re-derives them from the store."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

from ..config import MaskConfig, ObserveConfig, RunConfig, run_id
from ..steps import parse_step


def parents(cfg: RunConfig) -> set[str]:
    """Run ids this run needs finished before it can start."""
    out = {cfg.start_run} if cfg.start_run else set()
    stack: list[MaskConfig | None] = [cfg.mask]
    while stack:
        m = stack.pop()
        if m is None:
            continue
        if m.from_run:
            out.add(m.from_run)
        stack.append(m.like)
    return out


def _level(mask: MaskConfig | None) -> int | None:
    """IMP level of a mask whose lineage is known (None when it is not)."""
    if mask is None or mask.kind == "stored":
        return 0
    if mask.kind == "random":
        return _level(mask.like)
    return mask.level


def with_lineage(mask: MaskConfig | None, nodes: dict[str, RunConfig]) -> MaskConfig | None:
    """``mask`` with the level and parent mask of every magnitude mask the graph can tell."""
    if mask is None:
        return None
    if mask.kind == "random":
        like = with_lineage(mask.like, nodes)
        return mask if like is mask.like else dataclasses.replace(mask, like=like)
    if mask.kind != "magnitude" or mask.level is not None or mask.from_run not in nodes:
        return mask
    parent = nodes[mask.from_run].mask
    level = _level(parent)
    return mask if level is None else dataclasses.replace(mask, level=level + 1, parent=parent)


def merge_observe(a: ObserveConfig, b: ObserveConfig) -> ObserveConfig:
    """Observations that satisfy both requests."""
    schedules = sorted({s for o in (a, b) for s in o.schedule.split("+") if s != "none"}) or ["none"]
    return dataclasses.replace(
        a,
        checkpoints=tuple(sorted(set(a.checkpoints) | set(b.checkpoints), key=_step_key)),
        schedule="+".join(schedules),
        eval_every=_merge_every(a.eval_every, b.eval_every),
        eval_dense_until=max(a.eval_dense_until, b.eval_dense_until, key=lambda s: _step_key(s) if s else (-1, -1)),
        eval_train=a.eval_train or b.eval_train,
        recorders=tuple(sorted(set(a.recorders) | set(b.recorders))),
    )


def _step_key(s: str) -> tuple[int, int]:
    st = parse_step(s)
    return (st.epochs, st.iterations)


def _merge_every(a: str, b: str) -> str:
    if not a or not b or a == b:
        return a or b
    sa, sb = parse_step(a), parse_step(b)
    if sa.epochs == 0 and sb.epochs == 0:
        return f"{math.gcd(sa.iterations, sb.iterations)}it"
    if sa.iterations == 0 and sb.iterations == 0:
        return f"{math.gcd(sa.epochs, sb.epochs)}ep"
    return a


class RunGraph:
    """Run configs by id, with their dependencies."""

    def __init__(self) -> None:
        self.nodes: dict[str, RunConfig] = {}

    def add(self, cfg: RunConfig) -> str:
        rid = run_id(cfg)
        mask = with_lineage(cfg.mask, self.nodes)
        if mask is not cfg.mask:
            cfg = cfg.replace(mask=mask)
        if rid in self.nodes:
            old = self.nodes[rid]
            cfg = old.replace(observe=merge_observe(old.observe, cfg.observe))
        self.nodes[rid] = cfg
        return rid

    def update(self, other: "RunGraph") -> None:
        for cfg in other.nodes.values():
            self.add(cfg)

    def parents(self, rid: str) -> set[str]:
        return parents(self.nodes[rid])

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def topological(self) -> list[str]:
        """Every run after the runs it depends on (stable: insertion order otherwise)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(rid: str) -> None:
            if rid in seen:
                return
            seen.add(rid)
            for p in sorted(self.parents(rid)):
                if p in self.nodes:
                    visit(p)
            order.append(rid)

        for rid in self.nodes:
            visit(rid)
        return order
