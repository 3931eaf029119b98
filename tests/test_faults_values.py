"""Absurd values: every float finite, seeds 32-bit, sizes, steps and threads within the bounds of
docs/bounds.md, memory estimated before allocating; a NaN/inf loss fails the run at its first bad
step, never stored as done."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from earlyphase.bounds import BOUNDS
from earlyphase.config import load_run_config
from earlyphase.errors import NonFiniteLoss, UserError
from earlyphase.store import Store
import sys
from earlyphase.train.budget import check_fits, estimate_bytes
from earlyphase.train.loop import FiniteGuard

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=40it", "data.n_train=200", "data.n_test=100", 'observe.eval_every="20it"']


@pytest.mark.parametrize("override,needle", [
    ("train.steps=1000000000000it", "longest run allowed"),
    ("train.steps=6000000ep", "longest run allowed"),
    ("train.lr=inf", "'train.lr' must be a finite number"),
    ("train.lr=nan", "'train.lr' must be a finite number"),
    ("train.weight_decay=inf", "'train.weight_decay' must be a finite number"),
    ("train.gamma=inf", "'train.gamma' must be a finite number"),
    ("data.n_train=2000000000", "'data.n_train' = 2000000000 is outside"),
    ("observe.threads=100000", "'observe.threads' = 100000 is outside"),
    ("seed=-1", "'seed' = -1 is outside [0, 4294967295]"),
    ("seed=9223372036854775807", "'seed' = 9223372036854775807 is outside"),
    ("data_seed=4294967296", "'data_seed' = 4294967296 is outside"),
    ("model.name='mlp'", None),  # a fine value, for contrast: trains
])
def test_absurd_values_are_one_line_exit_2_and_nothing_stored(ep, tmp_path, snapshot, override, needle):
    store = tmp_path / "s"
    r = ep("train", "--quiet", "--store", store, *sum((["--set", o] for o in [*SMALL, override]), []))
    if needle is None:
        assert r.code == 0, r.err
        return
    assert r.code == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())


def test_experiment_floats_must_be_finite(ep, tmp_path):
    r = ep("run", "rewinding", "--store", tmp_path / "s", "--set", "fraction=nan")
    assert r.code == 2 and "fraction" in r.err and len(r.err.strip().splitlines()) == 1


def test_a_run_too_large_for_this_machine_is_refused_before_allocating(ep, tmp_path, monkeypatch):
    cfg = load_run_config(preset="laptop", overrides=["data.name=gaussian", "data.dim=100000", "data.n_train=100000",
                                                      "model.name=mlp", "model.widths=[1000]"])
    assert estimate_bytes(cfg) > 2 * 100000 * 100000 * 4  # the data alone: 37 GiB twice
    monkeypatch.setattr(sys.modules["earlyphase.train.budget"], "available_bytes", lambda: 2**30)
    with pytest.raises(UserError, match="needs about .* GiB of memory .* 1.0 GiB is free"):
        check_fits(cfg)
    r = ep("train", "--quiet", "--store", tmp_path / "s", "--set", "data.name='gaussian'", "--set", "data.dim=100000",
           "--set", "data.n_train=100000", "--set", "model.name='mlp'")
    assert r.code == 2 and "GiB is free" in r.err
    assert not any((tmp_path / "s" / "runs").iterdir())


def test_the_bounds_table_in_the_docs_is_the_code_s():
    rows = re.findall(r"^\| `([\w.]+)`(?: \(each\))? \| (\d+) \| (\d+) \|", (ROOT / "docs/bounds.md").read_text(), re.M)
    assert {k: (int(lo), int(hi)) for k, lo, hi in rows} == BOUNDS


def test_finite_guard_names_the_first_bad_step():
    guard = FiniteGuard(torch.device("cpu"), start=10)
    for loss in (1.0, 2.0, 0.5):
        guard.update(torch.tensor(loss))
    guard.check()
    for loss in (float("nan"), 3.0, float("inf")):
        guard.update(torch.tensor(loss))
    with pytest.raises(NonFiniteLoss) as e:
        guard.check()
    assert e.value.step == 13
    guard = FiniteGuard(torch.device("cpu"), start=0)
    guard.update(torch.tensor(float("-inf")))
    with pytest.raises(NonFiniteLoss, match="at step 0"):
        guard.check()


def test_a_diverging_run_is_failed_at_its_first_bad_step_not_done(ep, tmp_path):
    store = tmp_path / "s"
    r = ep("train", "--quiet", "--store", store, *sum((["--set", o] for o in [*SMALL, "train.lr=1e30"]), []))
    assert r.code == 1 and "NaN or infinite at step 1;" in r.err and len(r.err.strip().splitlines()) == 1
    (rd,) = Store(store).runs()
    status = rd.status()
    assert status["status"] == "failed" and status["step"] == 1 and "NonFiniteLoss" in status["error"]
    assert not (rd.metrics_dir / "main.parquet").exists()
