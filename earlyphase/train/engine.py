"""One run from config to store: start -> loop -> finish.

The start is resolved from the spec (train/start.py), the loop trains (train/loop.py), and every file
of the run is written by the store's RunWriter. A finished run is never trained again; if it lacks
observations a request asks for (checkpoint or evaluation steps, recorders), it is re-run
deterministically and only the missing ones are added.
"""
from __future__ import annotations

import time

import torch

from ..config import RunConfig, run_id, to_dict, with_current_data
from ..data import load_dataset
from ..data.base import Dataset
from ..devices import resolve_device
from ..execute.base import Work
from ..models import prunable_names
from ..store import RunDir, Store
from ..store.metrics import Row
from ..store.writer import RunWriter, observed
from ..threads import pinned_threads
from . import mode
from .budget import check_fits
from .data_order import DataOrder
from .loop import LoopHooks, LoopPlan, make_optimizer, train_loop
from .progress import ProgressBar
from .provenance import provenance
from .recorders import RecordContext, build_recorders
from .resume import model_tensors, restore, resume_payload
from .schedules import RunSchedule, lr_at, run_schedule
from .start import StartState, initial_state_fn, resolve_start



def stored_complete(cfg: RunConfig, store: Store) -> bool:
    """The store holds ``cfg`` finished, with every observation it asks for (no tensors are loaded)."""
    rd = store.run(run_id(cfg))
    if not rd.exists() or rd.damage() is not None or rd.status()["status"] != "done":
        return False
    return not observed(rd).lacks(run_schedule(cfg).observations(cfg))


def execute(cfg: RunConfig, store: Store, *, progress: bool | None = None, execution: dict | None = None) -> RunDir:
    """Train ``cfg`` into ``store`` unless it is there already; returns its run directory. ``execution``:
    how it was scheduled, for provenance (a run a batched group could not take says why)."""
    cfg = with_current_data(cfg)  # a file-backed dataset's content is in the run id and the spec
    rd = store.run(run_id(cfg))
    if stored_complete(cfg, store):
        return rd
    device = resolve_device(cfg.observe.device)
    check_fits(cfg)
    with pinned_threads(cfg.observe.threads), mode.deterministic(cfg):
        data = load_dataset(cfg.data, device)
        session = _Session(cfg, store, data, run_schedule(cfg, data.n_train), device, progress)
        session.execution = mode.describe(cfg, execution)
        start: StartState | None = session.start()
        with RunWriter.open(rd, {"kind": "train", "run_id": rd.id, "config": to_dict(cfg, trajectory=True)}) as w:
            if w.status != "done":
                with w.attempt():
                    session.train(w, start)
                start = None  # trained: a second pass starts afresh
            if w.observed().lacks(session.schedule.observations(cfg)):  # e.g. evaluations before a resume point
                session.add_missing(w, start or session.start())
    return rd


def train_one(cfg: RunConfig, store: Store) -> None:
    """A sweep's run: trained (or found) without a progress bar of its own."""
    execute(cfg, store, progress=False)


WORK = Work(train=train_one, complete=stored_complete)  # one run at a time (train/work.py adds batched groups)


class _Session:
    """Training one run in this process: what every pass over its schedule shares."""

    def __init__(self, cfg: RunConfig, store: Store, data: Dataset, schedule: RunSchedule, device: torch.device,
                 progress: bool | None) -> None:
        self.cfg, self.store, self.data, self.schedule, self.device = cfg, store, data, schedule, device
        self.progress = cfg.observe.progress if progress is None else progress

    def start(self) -> StartState:
        start = resolve_start(self.cfg, self.data, self.store, self.device, self.schedule.start)
        mode.prepare_model(self.cfg, start.model)
        return start

    def train(self, writer: RunWriter, start: StartState) -> None:
        """The run itself, from its start or its last resume point, to status done."""
        t0 = time.time()
        optimizer = make_optimizer(self.cfg.train, start.model)
        first, rows = self.schedule.start, list(start.rows)
        point = writer.resume_point()
        if point is not None:
            restore(point, start.model, optimizer, writer.rd.resume_path)
            first, rows = point.step, point.rows
        writer.begin(provenance(self.data, self.device, torch.get_num_threads(), self.execution),
                     resumed_from=first if point is not None else None)

        def resume(step: int, rows_so_far: list[Row]) -> None:
            writer.save_resume(step, *resume_payload(start.model, optimizer, step, writer.rd.id), rows_so_far)

        self._loop(writer, start, optimizer, first, rows, resume)
        writer.finish(rows, self.schedule.observations(self.cfg), time.time() - t0)

    def add_missing(self, writer: RunWriter, start: StartState) -> None:
        """A finished run again, deterministically, adding only the observations it lacks."""
        rows = list(start.rows)
        self._loop(writer, start, make_optimizer(self.cfg.train, start.model), self.schedule.start, rows,
                   lambda step, rows_so_far: None)
        writer.add(rows, self.schedule.observations(self.cfg))

    def _loop(self, writer: RunWriter, start: StartState, optimizer: torch.optim.Optimizer, first: int,
              rows: list[Row], resume) -> None:
        cfg, model, sched, data = self.cfg, start.model, self.schedule, self.data
        recorders = build_recorders(cfg.observe.recorders)
        parent = self.store.run(cfg.start_run) if cfg.start_run else None
        ctx = RecordContext(model=model, start=first, end=sched.total, evals=sched.evals,
                            prunable=prunable_names(model, cfg.model.prune_output),
                            initial_state=initial_state_fn(model, first, writer.rd, parent, self.device, bool(recorders)),
                            lr_at=lambda s: lr_at(cfg.train, s, sched.spe), data=data, config=cfg)
        meta = {"run_id": writer.rd.id, "model": cfg.model.name}
        hooks = LoopHooks(checkpoint=lambda s: writer.checkpoint(s, model_tensors(model), {"step": str(s), **meta}),
                          resume=resume)
        bar = ProgressBar(enabled=self.progress, total=sched.total, start=first, label=writer.rd.id[:8])
        hooks.progress = bar.update if bar.enabled else None
        order = DataOrder(data.n_train, data.n_train if cfg.train.full_batch else cfg.train.batch_size,
                          cfg.data_seed, augment=data.augment, shuffle=not cfg.train.full_batch, device=self.device)
        plan = LoopPlan(start=first, end=sched.total, checkpoints=set(sched.checkpoints), evals=set(sched.evals),
                        resume_every=max(sched.spe, 20), progress_every=bar.every, lrs=sched.lrs(cfg.train, first))
        with bar, mode.autocast(cfg, self.device):
            train_loop(model, optimizer, data, order, cfg.train, plan, hooks, recorders, start.mask, rows,
                       cfg.observe.eval_train, cfg.observe.eval_batch, ctx)


__all__ = ["execute", "stored_complete", "train_one", "WORK", "resolve_device", "RunSchedule"]
