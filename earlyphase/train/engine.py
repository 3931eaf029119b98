"""One run from config to store: find it, lock it, resume or start it, train, write it.

A finished run is never trained again; if it lacks observations a request asks for (checkpoint or
evaluation steps, recorders), it is re-run deterministically and only the missing ones are added.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass

import torch

from .. import __version__
from ..config import RunConfig, canonical_json, run_id, to_dict
from ..data import load_dataset
from ..data.base import Dataset
from ..errors import UserError
from ..models import build_model, prunable_names
from ..steps import parse_step, steps_per_epoch
from ..threads import pinned_threads
from ..store import RunDir, Store, load_checkpoint, load_model_state, save_checkpoint, write_metrics
from ..store.atomic import write_bytes_atomic, write_json_atomic
from ..store.checkpoints import split_prefix
from ..store.metrics import Row, read_rows
from .data_order import DataOrder
from .loop import LoopHooks, LoopPlan, make_optimizer, train_loop
from .progress import ProgressBar
from .recorders import RecordContext, build_recorders
from .schedules import checkpoint_steps, lr_at, lr_table


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    return device


@dataclass
class RunPlan:
    """The numbers a run's loop needs, derived once from its config and data."""

    spe: int
    start: int
    total: int
    checkpoints: list[int]
    evals: list[int]

    @classmethod
    def of(cls, cfg: RunConfig, n_train: int) -> "RunPlan":
        batch = n_train if cfg.train.full_batch else cfg.train.batch_size
        spe = steps_per_epoch(n_train, batch)
        total = parse_step(cfg.train.steps).to_iterations(spe)
        start = 0 if cfg.restart_schedule else parse_step(cfg.start_step).to_iterations(spe)
        if total < 1:
            raise UserError(f"train.steps = {cfg.train.steps!r} is no training at all; ask for at least 1it")
        if start > total:
            raise UserError(f"start step {start} is beyond the training length {total}; "
                            "start earlier or lengthen train.steps")
        ckpts = checkpoint_steps(cfg.observe.checkpoints, cfg.observe.schedule, total, spe, start)
        evals = set(ckpts) | {start, total}
        if cfg.observe.eval_dense_until:
            evals.update(range(start, parse_step(cfg.observe.eval_dense_until).to_iterations(spe) + 1))
        if cfg.observe.eval_every:
            every = parse_step(cfg.observe.eval_every).to_iterations(spe)
            if every < 1:
                raise UserError("observe.eval_every must be at least 1it")
            evals.update(range(start - start % every + every, total, every))
        return cls(spe, start, total, ckpts, sorted(s for s in evals if start <= s <= total))


def _observations(rd: RunDir) -> dict:
    p = rd.path / "observations.json"
    return json.loads(p.read_text()) if p.is_file() else {"checkpoints": [], "evals": [], "recorders": [],
                                                          "eval_train": False}


def _missing(rd: RunDir, cfg: RunConfig, plan: RunPlan) -> bool:
    have = _observations(rd)
    return bool(set(plan.checkpoints) - set(rd.checkpoint_steps())
                or set(plan.evals) - set(have["evals"])
                or set(cfg.observe.recorders) - set(have["recorders"])
                or (cfg.observe.eval_train and not have["eval_train"]))


def _provenance(data: Dataset, device: torch.device, threads: int) -> dict:
    def version(mod: str) -> str | None:
        with contextlib.suppress(Exception):
            return __import__(mod).__version__
        return None

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": version("numpy"),
            "mnist1d": version("mnist1d"), "earlyphase": __version__, "data_fingerprint": data.fingerprint(),
            "device": str(device), "threads": threads, "host": socket.gethostname(),
            "platform": platform.platform()}


def build_initial_model(cfg: RunConfig, data: Dataset, store: Store) -> torch.nn.Module:
    """The network at the run's start: drawn from ``seed``, or loaded from another run at a step."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, data.input_shape, data.out_dim)
    if cfg.start_run is not None:
        parent = store.run(cfg.start_run)
        step = _parent_step(cfg, store)
        if step not in parent.checkpoint_steps():
            raise UserError(f"run {cfg.start_run} has no checkpoint at step {step}; train it with that "
                            "checkpoint first (observe.checkpoints)")
        state = split_prefix(parent.load(step)[0], "model.")
        if cfg.start_reinit_head:  # a new task's head, drawn from the initializer with this run's seed
            head = model.output_layer
            own = model.state_dict()
            state = {k: (own[k] if k == head or k.startswith(f"{head}.") else state.get(k)) for k in own}
        load_model_state(model, state, parent.checkpoint_path(step))
    return model


def _parent_step(cfg: RunConfig, store: Store) -> int:
    """start_step in the start run's own steps-per-epoch (its data may differ: pre-training)."""
    st = parse_step(cfg.start_step)
    if st.epochs == 0:
        return st.iterations
    from ..config import RunConfig as _RC, from_dict

    pcfg = from_dict(_RC, store.run(cfg.start_run).spec()["config"])
    n = load_dataset(pcfg.data).n_train
    return st.to_iterations(steps_per_epoch(n, n if pcfg.train.full_batch else pcfg.train.batch_size))


def load_mask(cfg: RunConfig, model: torch.nn.Module, store: Store) -> dict[torch.nn.Parameter, torch.Tensor] | None:
    """The run's mask as parameter -> 0/1 tensor, resolved through the store (IMP parents)."""
    if cfg.mask is None:
        return None
    from ..sparsity import resolve_mask

    params = dict(model.named_parameters())
    names = prunable_names(model, prune_output=cfg.model.prune_output)
    allowed = set(prunable_names(model, prune_output=True))
    if cfg.mask.kind == "stored":
        names = [n for n in store.load_mask(cfg.mask.id) if n in allowed] or names
        extra = [n for n in store.load_mask(cfg.mask.id) if n not in allowed]
        if extra:
            raise UserError(f"mask {cfg.mask.id} does not fit model {cfg.model.name} (parameter {extra[0]!r}); "
                            "use a mask made for this model")
    stored = resolve_mask(cfg.mask, store, {n: params[n].shape for n in names})
    return {params[n]: m.to(params[n].device, params[n].dtype) for n, m in stored.items()}


def execute(cfg: RunConfig, store: Store, *, progress: bool | None = None) -> RunDir:
    """Train ``cfg`` into ``store`` unless it is there already; returns its run directory."""
    rid = run_id(cfg)
    rd = store.run(rid)
    if rd.exists() and rd.status()["status"] == "done":
        # cheap path: nothing to do if every requested observation is stored
        data_n = _cached_n_train(rd)
        if data_n is not None and not _missing(rd, cfg, RunPlan.of(cfg, data_n)):
            return rd
    device = resolve_device(cfg.observe.device)
    with pinned_threads(cfg.observe.threads):
        data = load_dataset(cfg.data).to(device)
        plan = RunPlan.of(cfg, data.n_train)
        prepared: Prepared | None = _prepare(cfg, data, store, device)
        with rd.lock():
            spec = {"kind": "train", "run_id": rid, "config": to_dict(cfg, trajectory=True)}
            rd.write_spec(spec)
            write_bytes_atomic(rd.path / "n_train", str(data.n_train).encode())
            status = rd.status()["status"]
            if status == "done":
                if _missing(rd, cfg, plan):
                    _run(cfg, rd, store, data, plan, device, progress, augment=True, prepared=prepared)
                return rd
            try:
                _run(cfg, rd, store, data, plan, device, progress, augment=False, prepared=prepared)
            except UserError:
                raise  # bad input leaves the store as it was; the run resumes once it is fixed
            except KeyboardInterrupt:
                rd.set_status("failed", error="interrupted; run again to resume from the last checkpoint")
                raise
            except Exception as e:
                rd.set_status("failed", error=f"{type(e).__name__}: {e}")
                raise
            if _missing(rd, cfg, plan):  # observations before a resume point the first attempt lacked
                _run(cfg, rd, store, data, plan, device, progress, augment=True)
    return rd


def _perturb(cfg: RunConfig, model: torch.nn.Module, mask: dict | None, data: Dataset, store: Store) -> float:
    """Perturb the starting weights' survivors in place (SPEC §2.4); returns the effective std."""
    from .. import perturb as P

    p = cfg.perturb
    params = dict(model.named_parameters())
    names = {id(t): n for n, t in params.items()}
    survivors = ({names[id(t)]: m.bool() for t, m in mask.items()} if mask else
                 {n: torch.ones_like(params[n], dtype=torch.bool) for n in prunable_names(model, cfg.model.prune_output)})
    weights = {n: params[n].detach().cpu().clone() for n in survivors}
    theta0 = None
    if cfg.start_run is not None and 0 in store.run(cfg.start_run).checkpoint_steps():
        theta0 = split_prefix(store.run(cfg.start_run).load(0)[0], "model.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1_000_003 + p.seed)
        fresh = dict(build_model(cfg.model, data.input_shape, data.out_dim).named_parameters())
    new = P.apply(p.kind, weights, {n: m.cpu() for n, m in survivors.items()}, theta0=theta0,
                  fresh={n: t.detach() for n, t in fresh.items()}, scope=p.scope, same_sign=p.same_sign,
                  scale=p.scale, seed=p.seed)
    with torch.no_grad():
        for n, t in new.items():
            params[n].copy_(t.to(params[n].device))
    return P.effective_std(new, weights, {n: m.cpu() for n, m in survivors.items()})


Prepared = tuple[torch.nn.Module, "dict[torch.nn.Parameter, torch.Tensor] | None"]


def _prepare(cfg: RunConfig, data: Dataset, store: Store, device: torch.device) -> Prepared:
    """The starting network and its mask, built before anything is written, so bad input (a missing
    parent checkpoint, a mask for another model) leaves no trace in the store."""
    model = build_initial_model(cfg, data, store).to(device)
    return model, load_mask(cfg, model, store)


def _cached_n_train(rd: RunDir) -> int | None:
    p = rd.path / "n_train"
    with contextlib.suppress(OSError, ValueError):
        return int(p.read_text())
    return None


def _run(cfg: RunConfig, rd: RunDir, store: Store, data: Dataset, plan: RunPlan, device: torch.device,
         progress: bool | None, *, augment: bool, prepared: Prepared | None = None) -> None:
    """Train from the start (or the resume point) to the end, writing what is missing."""
    t_begin = time.time()
    model, mask = prepared if prepared is not None else _prepare(cfg, data, store, device)
    eff_std = _perturb(cfg, model, mask, data, store) if cfg.perturb is not None else None
    if mask:
        with torch.no_grad():
            torch._foreach_mul_(list(mask), list(mask.values()))
    optimizer = make_optimizer(cfg.train, model)
    rows: list[Row] = []
    if mask:
        names = {p: n for n, p in model.named_parameters()}
        dens = {names[p]: float(m.mean()) for p, m in mask.items()}
        total = sum(m.numel() for m in mask.values())
        dens[""] = sum(float(m.sum()) for m in mask.values()) / total
        rows.extend((plan.start, "density", layer, "", value) for layer, value in sorted(dens.items()))
    if eff_std is not None:
        rows.append((plan.start, "effective_std", "", "", eff_std))
    start = plan.start
    have = _observations(rd)
    existing_ckpts = set(rd.checkpoint_steps())
    if not augment:
        resumed = rd.resume_path.is_file()
        if resumed:  # validated before anything in the run directory is written
            tensors, meta = load_checkpoint(rd.resume_path)
            load_model_state(model, split_prefix(tensors, "model."), rd.resume_path)
            _load_optimizer(optimizer, tensors, meta, rd)
            start = int(meta["step"])
            rows = [r for r in read_rows(rd.metrics_dir / "partial.parquet") if r[0] <= start]
        prov = {**rd.provenance(), **_provenance(data, device, torch.get_num_threads())}
        if resumed:
            prov["resumed_from"] = [*prov.get("resumed_from", []), start]
        rd.set_status("running", pid=os.getpid())
        rd.write_provenance(prov)

    recorders = build_recorders(cfg.observe.recorders)
    theta0 = ({k: v.detach().clone() for k, v in model.state_dict().items()} if start == 0 and recorders else None)

    def initial_state() -> dict[str, torch.Tensor] | None:
        if theta0 is not None:
            return theta0
        for source in (rd, store.run(cfg.start_run) if cfg.start_run else None):
            if source is not None and 0 in source.checkpoint_steps():
                return {k: v.to(device) for k, v in split_prefix(source.load(0)[0], "model.").items()}
        return None

    record_ctx = RecordContext(model=model, start=start, end=plan.total, evals=plan.evals,
                               prunable=prunable_names(model, cfg.model.prune_output),
                               initial_state=initial_state, lr_at=lambda s: lr_at(cfg.train, s, plan.spe),
                               data=data, config=cfg)

    def checkpoint(step: int) -> None:
        if step in existing_ckpts:
            return
        save_checkpoint(rd.checkpoint_path(step), {f"model.{k}": v for k, v in model.state_dict().items()},
                        {"step": str(step), "run_id": rd.id, "model": cfg.model.name})

    def resume(step: int, rows_so_far: list[Row]) -> None:
        if augment:
            return
        write_metrics(rd.metrics_dir / "partial.parquet", rows_so_far)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(_optimizer_tensors(optimizer))
        save_checkpoint(rd.resume_path, tensors, {"step": str(step), "run_id": rd.id,
                                                  "optimizer": json.dumps(_optimizer_scalars(optimizer))})

    bar = ProgressBar(enabled=cfg.observe.progress if progress is None else progress,
                      total=plan.total, start=start, label=rd.id[:8])
    order = DataOrder(data.n_train, data.n_train if cfg.train.full_batch else cfg.train.batch_size,
                      cfg.data_seed, augment=data.augment, shuffle=not cfg.train.full_batch, device=device)
    lrs = lr_table(cfg.train, start, plan.total, plan.spe)
    loop_plan = LoopPlan(start=start, end=plan.total, checkpoints=set(plan.checkpoints), evals=set(plan.evals),
                         resume_every=max(plan.spe, 20), progress_every=bar.every, lrs=lrs)
    with bar:
        train_loop(model, optimizer, data, order, cfg.train, loop_plan,
                   LoopHooks(checkpoint=checkpoint, resume=resume, progress=bar.update if bar.enabled else None),
                   recorders, mask, rows, cfg.observe.eval_train, cfg.observe.eval_batch, record_ctx)

    if augment:
        old = {(r[0], r[1], r[2], r[3]) for r in rd.metrics().itertuples(index=False)}
        new = [r for r in rows if (r[0], r[1], r[2], r[3]) not in old]
        n = len(list(rd.metrics_dir.glob("*.parquet")))
        if new:
            write_metrics(rd.metrics_dir / f"part-{n:03d}.parquet", new)
    else:
        write_metrics(rd.metrics_dir / "main.parquet", rows)
    obs = {"checkpoints": sorted(set(rd.checkpoint_steps())),
           "evals": sorted(set(have["evals"]) | set(plan.evals)),
           "recorders": sorted(set(have["recorders"]) | set(cfg.observe.recorders)),
           "eval_train": have["eval_train"] or cfg.observe.eval_train}
    write_json_atomic(rd.path / "observations.json", obs)
    if not augment:
        prov = rd.provenance()
        prov["wall_seconds"] = round(time.time() - t_begin, 3)
        rd.write_provenance(prov)
        rd.set_status("done")
        rd.resume_path.unlink(missing_ok=True)
        (rd.metrics_dir / "partial.parquet").unlink(missing_ok=True)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                out[f"optim.{idx}.{key}"] = value
    return out


def _optimizer_scalars(optimizer: torch.optim.Optimizer) -> dict:
    return {str(idx): {k: v for k, v in state.items() if not torch.is_tensor(v)}
            for idx, state in optimizer.state_dict()["state"].items()}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, rd: RunDir) -> None:
    state: dict[int, dict] = {}
    for key, value in split_prefix(tensors, "optim.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, scalars in json.loads(meta.get("optimizer", "{}")).items():
        state.setdefault(int(idx), {}).update(scalars)
    sd = optimizer.state_dict()
    try:
        optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"resume checkpoint {rd.resume_path} does not fit this run's optimizer ({e}); "
                        "delete it to retrain the run from the start") from None


__all__ = ["execute", "RunPlan", "resolve_device", "build_initial_model", "canonical_json"]
