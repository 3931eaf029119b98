"""gc deletes nothing while a reference it needs cannot be read (an empty, garbage or non-list
runs.json), and never removes a run that is training."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY = ["--quiet", "--threads", "1", "--set", "train.steps=5it", "--set", "data.n_train=100", "--set", "data.n_test=50"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from earlyphase.cli import main

    root = tmp_path_factory.mktemp("gctemplate") / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARLYPHASE_HOME", str(tmp_path_factory.getbasetemp() / "home"))
        for seed in (0, 1):
            assert main(["train", "--store", str(root), *TINY, "--set", f"seed={seed}"]) == 0
    return root


@pytest.fixture
def store(template, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(template, dst)
    runs = sorted(p.name for p in (dst / "runs").iterdir())
    (dst / "experiments" / "good-1").mkdir(parents=True)
    (dst / "experiments" / "good-1" / "runs.json").write_text(f'["{runs[0]}"]')
    return dst


@pytest.mark.parametrize("content", ["", "{garbage", "5", '{"a": 1}', "[1, 2]"])
def test_gc_refuses_to_delete_while_a_reference_is_unreadable(ep, store, snapshot, content):
    (store / "experiments" / "broken-2").mkdir()
    (store / "experiments" / "broken-2" / "runs.json").write_text(content)
    before = snapshot(store)
    res = ep("gc", "--unreferenced", "--yes", "--store", store)
    assert res.code == 2 and res.err.count("\n") == 1 and "broken-2" in res.err and "Traceback" not in res.err
    assert snapshot(store) == before


def test_gc_removes_only_unreferenced_runs_when_every_reference_reads(ep, store):
    runs = sorted(p.name for p in (store / "runs").iterdir())
    res = ep("gc", "--unreferenced", "--yes", "--store", store)
    assert res.code == 0, res.err
    assert sorted(p.name for p in (store / "runs").iterdir()) == [runs[0]]
