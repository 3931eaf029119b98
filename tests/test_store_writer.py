"""The store's RunWriter: a run directory's life from spec to done (docs/store.md), and checkpoints
whose bytes are a function of their content."""
from __future__ import annotations

import json

import pytest
import torch

from earlyphase.errors import UserError
from earlyphase.store import Store
from earlyphase.store.checkpoints import save_checkpoint
from earlyphase.store.writer import Observations, RunWriter, observed

SPEC = {"kind": "train", "run_id": "r1", "config": {"seed": 0}}


def rows(*steps: int) -> list:
    return [(s, "loss", "", "test", float(s)) for s in steps]


def test_checkpoint_bytes_depend_only_on_content(tmp_path):
    """safetensors writes metadata in hash-map order; earlyphase sorts it, so equal checkpoints are equal bytes."""
    tensors = {"model.w": torch.randn(4, 3), "model.b": torch.zeros(3), "optim.0.momentum_buffer": torch.ones(2)}
    meta = {"step": "7", "run_id": "abcdef", "model": "cnn1d", "optimizer": json.dumps({"0": {"step": 7}})}
    blobs = set()
    for i in range(6):
        path = tmp_path / f"{i}.safetensors"
        save_checkpoint(path, tensors, dict(reversed(list(meta.items()))) if i % 2 else meta)
        blobs.add(path.read_bytes())
    assert len(blobs) == 1


def test_a_run_from_spec_to_done(tmp_path):
    rd = Store(tmp_path).run("r1")
    with RunWriter.open(rd, SPEC) as w:
        assert w.status == "pending" and json.loads((rd.path / "spec.json").read_text()) == SPEC
        assert w.resume_point() is None
        w.begin({"host": "h"}, resumed_from=None)
        assert rd.status()["status"] == "running" and "pid" in rd.status()
        w.checkpoint(0, {"model.w": torch.zeros(2)}, {"step": "0"})
        w.save_resume(20, {"model.w": torch.ones(2)}, {"step": "20"}, rows(0, 10, 20))
        point = w.resume_point()
        assert point.step == 20 and point.rows == rows(0, 10, 20) and torch.equal(point.tensors["model.w"], torch.ones(2))
        w.checkpoint(0, {"model.w": torch.ones(2)}, {"step": "0"})  # a stored checkpoint is kept as it was
        assert torch.equal(rd.load(0)[0]["model.w"], torch.zeros(2))
        want = Observations(frozenset({0}), frozenset({0, 10, 20, 30}), frozenset({"lr"}), True)
        w.finish(rows(0, 10, 20, 30), want, wall_seconds=1.5)
    assert rd.status()["status"] == "done" and rd.provenance() == {"host": "h", "wall_seconds": 1.5}
    assert not rd.resume_path.exists() and not (rd.metrics_dir / "partial.parquet").exists()
    assert list(rd.metrics().step) == [0, 10, 20, 30]
    assert not observed(rd).lacks(want) and observed(rd).lacks(Observations(evals=frozenset({40})))


def test_added_observations_go_to_a_new_part_with_only_new_rows(tmp_path):
    rd = Store(tmp_path).run("r1")
    with RunWriter.open(rd, SPEC) as w:
        w.begin({}, resumed_from=None)
        w.finish(rows(0, 30), Observations(evals=frozenset({0, 30})), 0.1)
        w.add(rows(0, 15, 30), Observations(evals=frozenset({15}), recorders=frozenset({"grad_norm"})))
    assert sorted(p.name for p in rd.metrics_dir.glob("*.parquet")) == ["main.parquet", "part-001.parquet"]
    assert list(rd.metrics().step) == [0, 15, 30]
    have = observed(rd)
    assert have.evals == {0, 15, 30} and have.recorders == {"grad_norm"}


def test_resumed_from_is_recorded(tmp_path):
    rd = Store(tmp_path).run("r1")
    with RunWriter.open(rd, SPEC) as w:
        w.begin({"a": 1}, resumed_from=None)
        w.begin({"a": 2}, resumed_from=40)
        w.begin({"a": 3}, resumed_from=80)
    assert rd.provenance() == {"a": 3, "resumed_from": [40, 80]}


def test_attempt_marks_failures_but_not_bad_input(tmp_path):
    rd = Store(tmp_path).run("r1")
    with RunWriter.open(rd, SPEC) as w:
        w.begin({}, resumed_from=None)
        with pytest.raises(UserError), w.attempt():
            raise UserError("bad input")
        assert rd.status()["status"] == "running"
        with pytest.raises(ValueError), w.attempt():
            raise ValueError("nan loss")
        assert rd.status() | {"time": 0} == {"status": "failed", "error": "ValueError: nan loss", "time": 0}


def test_another_spec_under_the_same_id_is_refused(tmp_path):
    rd = Store(tmp_path).run("r1")
    with RunWriter.open(rd, SPEC):
        pass
    with pytest.raises(UserError, match="different spec"), RunWriter.open(rd, {**SPEC, "config": {"seed": 1}}):
        pass


def test_a_spec_from_an_earlier_version_without_later_fields_is_the_same_run(tmp_path):
    """A store written before a config field existed (at its default, so the id is unchanged) is
    continued, not refused; a real difference still is."""
    from earlyphase.config import RunConfig, run_id, to_dict

    cfg = RunConfig()
    full = to_dict(cfg, trajectory=True)
    older = json.loads(json.dumps(full))
    del older["model"]["init_std"], older["model"]["norm"]  # fields added later, at their defaults
    rd = Store(tmp_path).run(run_id(cfg))
    with RunWriter.open(rd, {"kind": "train", "run_id": rd.id, "config": older}):
        pass
    with RunWriter.open(rd, {"kind": "train", "run_id": rd.id, "config": full}):
        pass
    assert json.loads((rd.path / "spec.json").read_text())["config"] == older  # left as it was
    other = json.loads(json.dumps(full))
    other["train"]["lr"] = 0.5
    with pytest.raises(UserError, match="different spec"), \
            RunWriter.open(rd, {"kind": "train", "run_id": rd.id, "config": other}):
        pass
