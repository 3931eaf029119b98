"""`earlyphase export ... --tensorboard DIR`: the stored metrics as TensorBoard scalars, exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from earlyphase.store import Store


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    ea = EventAccumulator(str(directory))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from earlyphase.cli import main

    root = tmp_path_factory.mktemp("export") / "store"
    assert main(["train", "--quiet", "--store", str(root), "--set", "train.steps=20it", "--set", "data.n_train=200",
                 "--set", "data.n_test=100", "--set", 'observe.eval_every="5it"',
                 "--set", 'observe.recorders=["grad_norm"]']) == 0
    return root


def test_a_run_exports_every_metric_as_a_scalar(ep, store, tmp_path):
    rid = next((store / "runs").iterdir()).name
    res = ep("export", rid[:6], "--tensorboard", tmp_path / "tb", "--store", store)
    assert res.code == 0, res.err
    got = _scalars(tmp_path / "tb" / rid)
    m = Store(store, create=False).run(rid).metrics()
    acc = m[(m.name == "accuracy") & (m.split == "test")]
    assert [s for s, _ in got["test/accuracy"]] == [0, 5, 10, 15, 20]
    assert [v for _, v in got["test/accuracy"]] == pytest.approx(list(acc.value), abs=1e-6)
    assert "train/grad_norm" in got and "train/loss" in got
    ep("export", rid, "--tensorboard", tmp_path / "tb", "--store", store)  # again: replaced, not doubled
    assert len(_scalars(tmp_path / "tb" / rid)["test/accuracy"]) == 5


def test_export_bad_target_is_one_line(ep, store, tmp_path):
    res = ep("export", "zzz", "--tensorboard", tmp_path / "tb", "--store", store)
    assert res.code == 2 and res.err.count("\n") == 1 and "hex digits" in res.err
    res = ep("export", str(tmp_path), "--tensorboard", tmp_path / "tb", "--store", store)
    assert res.code == 2 and "not an experiment directory" in res.err
