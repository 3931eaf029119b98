"""The run store: one directory per run, named by the run id, written atomically, locked with
``fcntl.flock`` so two processes never write one run (a killed process releases its lock)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import UserError
from .atomic import write_bytes_atomic, write_json_atomic
from .checkpoints import load_checkpoint, save_checkpoint
from .metrics import MetricFileError, check_metric_file, read_metrics

STATUSES = ("pending", "running", "done", "failed")


def default_root() -> Path:
    return Path(os.environ.get("EARLYPHASE_HOME") or "earlyphase-store")


class Store:
    """A store root: ``runs/<id>/``, ``masks/<id>.safetensors``, ``experiments/<name>-<id>/``."""

    def __init__(self, root: str | Path | None = None, *, create: bool = True) -> None:
        self.root = Path(root) if root is not None else default_root()
        if create:
            self._ensure_writable()

    def _ensure_writable(self) -> None:
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"store directory {self.root} cannot be written ({e.strerror}); "
                            "pass a writable directory with --store or $EARLYPHASE_HOME") from None

    def run(self, run_id: str) -> "RunDir":
        return RunDir(self.root / "runs" / run_id)

    def find(self, prefix: str) -> "RunDir":
        """A run by its id or a unique prefix of it (hex digits only: no pattern, no path)."""
        if not re.fullmatch(r"[0-9a-f]{1,16}", prefix):
            raise UserError(f"{prefix!r} is not a run id or a prefix of one (1-16 hex digits); list runs with "
                            "`earlyphase ls`")
        runs_dir = self.root / "runs"
        matches = sorted(p for p in runs_dir.glob(f"{prefix}*") if p.is_dir()) if runs_dir.is_dir() else []
        if len(matches) != 1:
            what = "no run" if not matches else f"{len(matches)} runs"
            raise UserError(f"{what} in {self.root} match {prefix!r}; list runs with `earlyphase ls`")
        return RunDir(matches[0])

    def runs(self) -> list["RunDir"]:
        runs_dir = self.root / "runs"
        if not runs_dir.is_dir():
            return []
        return [RunDir(p) for p in sorted(runs_dir.iterdir()) if (p / "spec.json").is_file()]

    # masks are content-addressed, so a mask is stored once however many runs use it
    def save_mask(self, mask: dict[str, torch.Tensor]) -> str:
        h = hashlib.sha256()
        for name in sorted(mask):
            t = mask[name].detach().to("cpu", torch.bool).contiguous()
            h.update(name.encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
        mask_id = h.hexdigest()[:16]
        path = self.root / "masks" / f"{mask_id}.safetensors"
        if not path.is_file():
            save_checkpoint(path, {k: v.to(torch.bool) for k, v in mask.items()}, {"kind": "mask"})
        return mask_id

    def load_mask(self, mask_id: str) -> dict[str, torch.Tensor]:
        tensors, _ = load_checkpoint(self.root / "masks" / f"{mask_id}.safetensors")
        return tensors

    def referenced_runs(self) -> set[str]:
        """Run ids that some experiment lists in its ``runs.json``. A reference that cannot be read is
        an error, never an empty set: whoever deletes by it must not delete what it protects."""
        refs: set[str] = set()
        for f in sorted((self.root / "experiments").glob("*/runs.json")):
            try:
                ids = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                ids = e
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise UserError(f"{f} is not a readable list of run ids, so the runs it protects are unknown; "
                                f"restore it (rerun `earlyphase run` for that experiment) or remove {f.parent}")
            refs.update(ids)
        return refs


def check_observations(data: dict, rd: "RunDir") -> None:
    """observations.json holds lists of steps and recorders and a flag, or the run is damaged."""
    for key, kind in (("evals", int), ("recorders", str), ("checkpoints", int)):
        v = data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
            raise rd.damaged("observations.json", f"malformed ('{key}' is not a list of {kind.__name__})")


@contextlib.contextmanager
def exclusive(lock_file: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an ``fcntl.flock`` lock on ``lock_file`` (created with its directory); yields False if
    ``wait`` is off and another process holds it. The kernel releases it when the holder dies."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                yield False
                return
            raise
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def same_run(stored: dict, new: dict) -> bool:
    """Whether a stored spec describes the run ``new`` does. A spec written by an earlier version
    lacks the fields added since (at their defaults, so the run id is unchanged): it is the same run
    when its config hashes to the same id, and the stored file is left as it was."""
    if stored == new:
        return True
    if stored.get("kind") != new.get("kind") or "config" not in stored or "config" not in new:
        return False
    from ..config import RunConfig, from_dict, run_id

    try:
        return run_id(from_dict(RunConfig, stored["config"])) == run_id(from_dict(RunConfig, new["config"]))
    except (UserError, TypeError, ValueError):
        return False


class RunDir:
    """One run's directory: spec, status, provenance, checkpoints, metrics."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    # -- files -------------------------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    def exists(self) -> bool:
        return (self.path / "spec.json").is_file()

    def spec(self) -> dict:
        return self._read_json("spec.json")

    def status(self) -> dict:
        if not (self.path / "status.json").is_file():
            return {"status": "pending"}
        return self._read_json("status.json")

    def provenance(self) -> dict:
        p = self.path / "provenance.json"
        return self._read_json("provenance.json") if p.is_file() else {}

    def _read_json(self, name: str) -> dict:
        try:
            data = json.loads((self.path / name).read_text())
        except (OSError, ValueError) as e:
            raise self.damaged(name, f"unreadable: {str(e).splitlines()[0][:80]}") from None
        if not isinstance(data, dict):
            raise self.damaged(name, f"not a JSON object but {type(data).__name__}")
        if name == "status.json" and data.get("status") not in STATUSES:
            raise self.damaged(name, f"status {data.get('status')!r} is not one of {', '.join(STATUSES)}")
        return data

    def damaged(self, name: str, why: str) -> UserError:
        """The one-line error for a damaged file of this run, with the fix."""
        return UserError(f"run {self.id} is damaged: {self.path / name} is {why}; `earlyphase run` (or `train`) "
                         f"retrains it, `earlyphase gc --yes` removes it")

    def damage(self) -> UserError | None:
        """What is wrong with this run's files, if anything (cheap: JSON files, Parquet footers, and
        that a done run holds its main metrics), so a damaged run is retrained, not served."""
        try:
            self.spec()
            status = self.status()["status"]
            self.provenance()
            if (self.path / "observations.json").is_file():
                check_observations(self._read_json("observations.json"), self)
            if status == "done" and not (self.metrics_dir / "main.parquet").is_file():
                raise self.damaged("metrics/main.parquet", "missing although the run is done")
            for f in sorted(self.metrics_dir.glob("*.parquet")) if self.metrics_dir.is_dir() else []:
                check_metric_file(f, self)
        except UserError as e:
            return e
        return None

    def clear(self) -> None:
        """Remove every file of the run but its lock (held by the caller): a damaged run starts over."""
        for p in self.path.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def write_spec(self, spec: dict) -> None:
        if self.exists():
            if not same_run(self.spec(), spec):
                raise UserError(f"run {self.id} already holds a different spec; the store is inconsistent")
            return
        write_bytes_atomic(self.path / "spec.json", (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode())

    def set_status(self, status: str, **extra: Any) -> None:
        assert status in STATUSES
        write_json_atomic(self.path / "status.json", {"status": status, "time": time.time(), **extra})

    def write_provenance(self, info: dict) -> None:
        write_json_atomic(self.path / "provenance.json", info)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"{step}.safetensors"

    @property
    def resume_path(self) -> Path:
        return self.checkpoints_dir / "resume.safetensors"

    def checkpoint_steps(self) -> list[int]:
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.checkpoints_dir.glob("*.safetensors") if p.stem.isdigit())

    def load(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return load_checkpoint(self.checkpoint_path(step))

    def metrics(self):
        try:
            return read_metrics(self.metrics_dir)
        except MetricFileError as e:
            raise self.damaged(f"metrics/{e.path.name}", f"unreadable ({e.reason})") from None

    def remove(self) -> None:
        shutil.rmtree(self.path)

    # -- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the run's exclusive lock; yields False if ``wait`` is off and another holds it."""
        with exclusive(self.path / ".lock", wait=wait) as got:
            yield got

    def is_locked(self) -> bool:
        """Whether a process holds the run's lock; asks without writing (works on a read-only store)."""
        try:
            fh = open(self.path / ".lock")
        except OSError:
            return False  # no lock file: no process has ever trained it here
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return True
                raise
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False
