"""The life of one run directory while a process trains it (docs/store.md): its lock, spec, status,
resume point, partial metrics, observations, provenance and finish. The engine hands it tensors and
metric rows; every file of a run is written here, each atomically.

A run's files go through these states:

    spec.json written under the lock      (status absent = pending)
    status running, provenance            begin()
    resume.safetensors + partial.parquet  save_resume(), every epoch; a killed run restarts here
    checkpoints/<step>.safetensors        checkpoint(), never overwritten
    main.parquet, observations.json,
    provenance (wall time), status done   finish(); the resume point and partial metrics go
    part-NNN.parquet, observations.json   add(): observations a done run lacked, added later
    status failed, with the error         fail(), from attempt() when training raises

Because one class writes a run, the run's failure modes have one home: what counts as an interrupt
(``attempt``), a run found damaged when it is opened (``open``), a failure at a recorded step
(``fail``), how each file is written (every method goes through ``store/atomic.py``).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import UserError
from .atomic import remove_stale_temporaries, write_json_atomic
from .checkpoints import load_checkpoint, save_checkpoint
from .metrics import Row, read_rows, write_metrics
from .runs import RunDir, check_observations

PARTIAL = "partial.parquet"
MAIN = "main.parquet"


@dataclass(frozen=True)
class Observations:
    """What was (or is to be) observed of a run: checkpoint and evaluation steps, recorders, and
    whether the training split was evaluated."""

    checkpoints: frozenset[int] = frozenset()
    evals: frozenset[int] = frozenset()
    recorders: frozenset[str] = frozenset()
    eval_train: bool = False

    def lacks(self, want: "Observations") -> bool:
        """True when ``want`` asks for something this does not hold."""
        return bool(want.checkpoints - self.checkpoints or want.evals - self.evals
                    or want.recorders - self.recorders or (want.eval_train and not self.eval_train))

    def union(self, other: "Observations") -> "Observations":
        return Observations(self.checkpoints | other.checkpoints, self.evals | other.evals,
                            self.recorders | other.recorders, self.eval_train or other.eval_train)

    def to_json(self) -> dict:
        return {"checkpoints": sorted(self.checkpoints), "evals": sorted(self.evals),
                "recorders": sorted(self.recorders), "eval_train": self.eval_train}


def observed(rd: RunDir) -> Observations:
    """What a stored run holds: its checkpoint files, and the evaluations and recorders its
    observations.json lists."""
    p = rd.path / "observations.json"
    have = rd._read_json("observations.json") if p.is_file() else {}
    check_observations(have, rd)
    return Observations(frozenset(rd.checkpoint_steps()), frozenset(have.get("evals", ())),
                        frozenset(have.get("recorders", ())), bool(have.get("eval_train", False)))


@dataclass
class ResumePoint:
    """Where a killed run restarts: the resume checkpoint's tensors and metadata, and the metric rows
    recorded up to its step."""

    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]
    rows: list[Row] = field(default_factory=list)


class RunWriter:
    """Writes one run's directory; made by :meth:`open`, which holds the run's lock throughout."""

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd

    @classmethod
    @contextlib.contextmanager
    def open(cls, rd: RunDir, spec: dict) -> Iterator["RunWriter"]:
        """Lock the run (waiting for another process that holds it) and write its spec. Temporary
        files a killed writer left are removed (under the lock nobody else writes here); a run whose
        files are damaged (RunDir.damage) starts over: it is cleared and retrained."""
        with rd.lock():
            for d in (rd.path, rd.metrics_dir, rd.checkpoints_dir):
                if d.is_dir():
                    remove_stale_temporaries(d)
            if rd.exists() and rd.damage() is not None:
                rd.clear()
            rd.write_spec(spec)
            yield cls(rd)

    @property
    def status(self) -> str:
        return self.rd.status()["status"]

    def observed(self) -> Observations:
        return observed(self.rd)

    def resume_point(self) -> ResumePoint | None:
        """The last resume point of an unfinished run, validated before anything is written."""
        path = self.rd.resume_path
        if not path.is_file():
            return None
        tensors, meta = load_checkpoint(path)
        step = int(meta["step"])
        rows = [r for r in read_rows(self.rd.metrics_dir / PARTIAL) if r[0] <= step]
        return ResumePoint(step, tensors, meta, rows)

    def begin(self, provenance: dict, *, resumed_from: int | None) -> None:
        """Mark the run running, recording where this process runs (and where it resumed)."""
        prov = {**self.rd.provenance(), **provenance}
        if resumed_from is not None:
            prov["resumed_from"] = [*prov.get("resumed_from", []), resumed_from]
        self.rd.set_status("running", pid=os.getpid())
        self.rd.write_provenance(prov)
        self._t0 = time.time()

    def checkpoint(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """Weights at ``step``; a checkpoint already stored is kept as it is."""
        path = self.rd.checkpoint_path(step)
        if not path.is_file():
            save_checkpoint(path, tensors, meta)

    def save_resume(self, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, str],
                    rows: list[Row]) -> None:
        """The metrics so far, then the state to resume from (so the rows never lag the state)."""
        write_metrics(self.rd.metrics_dir / PARTIAL, rows)
        save_checkpoint(self.rd.resume_path, tensors, meta)

    def finish(self, rows: list[Row], observations: Observations, wall_seconds: float) -> None:
        """The run's metrics and what was observed, then status done; the resume point goes."""
        write_metrics(self.rd.metrics_dir / MAIN, rows)
        self._write_observations(observations)
        prov = self.rd.provenance()
        prov["wall_seconds"] = round(wall_seconds, 3)
        self.rd.write_provenance(prov)
        self.rd.set_status("done")
        self.rd.resume_path.unlink(missing_ok=True)
        (self.rd.metrics_dir / PARTIAL).unlink(missing_ok=True)

    def add(self, rows: list[Row], observations: Observations) -> None:
        """Observations a finished run lacked: only rows it does not hold, in a new part file."""
        old = {(r[0], r[1], r[2], r[3]) for r in self.rd.metrics().itertuples(index=False)}
        new = [r for r in rows if (r[0], r[1], r[2], r[3]) not in old]
        if new:
            n = len(list(self.rd.metrics_dir.glob("*.parquet")))
            write_metrics(self.rd.metrics_dir / f"part-{n:03d}.parquet", new)
        self._write_observations(observations)

    def _write_observations(self, wanted: Observations) -> None:
        have = self.observed()
        obs = Observations(frozenset(self.rd.checkpoint_steps()), have.evals | wanted.evals,
                           have.recorders | wanted.recorders, have.eval_train or wanted.eval_train)
        write_json_atomic(self.rd.path / "observations.json", obs.to_json())

    def fail(self, error: str, **extra: object) -> None:
        self.rd.set_status("failed", error=error, **{k: v for k, v in extra.items() if v is not None})

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Training inside: an exception marks the run failed, with its message; bad input
        (UserError) leaves the status as it was, so the run resumes once the input is fixed; an
        interrupt (Ctrl-C) leaves it as a kill does: running, unlocked, resumed by the next identical
        command from its last resume point."""
        try:
            yield
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:
            self.fail(f"{type(e).__name__}: {e}", step=getattr(e, "step", None))  # NonFiniteLoss knows it
            raise
