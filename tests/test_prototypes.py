"""The prototypes experiment: the alignment knob of the data, the finding on constructed tables (which
phases appear per grid point), a tiny grid end to end, and bad input as one line with exit code 2."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import earlyphase
from earlyphase.config import DataConfig
from earlyphase.data import load_dataset, prototypes
from earlyphase.experiments.prototypes import Prototypes, grid_table, phase_rows
from earlyphase.experiments.runner import load_experiment_config
from earlyphase.store import Store
from user_errors import assert_rejected

TINY = ['run.train.steps="64it"', "run.data.n_train=300", "run.data.n_test=200", "alignments=[0.2, 1.0]",
        "fractions=[0.1]"]
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]


def test_alignment_moves_only_the_atypical_samples_and_defaults_to_the_old_data():
    base = DataConfig(name="prototypes", n_train=400, n_test=50, dim=30, num_classes=4, atypical=0.25)
    assert base.atypical_alignment == prototypes.ATYPICAL_SIGNAL
    protos = prototypes.prototypes(4, 30, 0)
    x_old, y_old, atyp = prototypes.sample(400, protos, 0.25, 0, "train")
    ds = load_dataset(base)
    assert torch.equal(ds.x_train, x_old) and torch.equal(ds.y_train, y_old)
    strong = load_dataset(DataConfig(**{**base.__dict__, "atypical_alignment": 1.0}))
    assert torch.equal(strong.x_train[~atyp], x_old[~atyp])
    diff = strong.x_train[atyp] - x_old[atyp]
    torch.testing.assert_close(diff, 0.8 * protos[y_old[atyp]])


def _results(curves: dict[tuple[float, float], list[float]]) -> pd.DataFrame:
    rows = [{"fraction": f, "alignment": a, "seed": 0, "step": s, "reconstruction_mse": v}
            for (f, a), curve in curves.items() for s, v in zip(STEPS, curve)]
    return pd.DataFrame(rows)


def test_finding_reports_which_phases_appear_per_grid_point():
    cfg = load_experiment_config(Prototypes(), preset="laptop")
    res = _results({(0.05, 0.1): [1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.75, 0.85],  # all three
                    (0.05, 0.2): [1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.71, 0.72],  # no phase 3 (+3 %)
                    (0.10, 0.1): [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.6, 0.7]})  # no flat start
    phases = phase_rows(res, cfg.delta, cfg.rho)
    assert list(phases.phases_shown) == ["1+2+3", "1+2", "2+3"]
    chk = Prototypes().check(cfg, {"results": res, "phases": phases, "grid": grid_table(phases)})
    assert chk.passed is None
    assert chk.numbers["grid_points_with_all_three"] == [[0.05, 0.1]]
    assert "(5 %, 0.1)" in chk.meaning and "10 % atypical, alignment 0.1: all three in 0 of 1" in chk.measured
    assert "[0.05, 0.1]" in chk.statement and "ρ = 0.1" in chk.statement
    none = phase_rows(res[res.alignment == 0.2], cfg.delta, cfg.rho)
    assert "At no grid point" in Prototypes().check(cfg, {"phases": none, "grid": grid_table(none)}).meaning


def test_paper_preset_is_a_larger_grid():
    lap = load_experiment_config(Prototypes(), preset="laptop")
    pap = load_experiment_config(Prototypes(), preset="paper")
    assert pap.seeds > lap.seeds and len(pap.alignments) > len(lap.alignments)
    assert (lap.run.train.lr, lap.run.model.init_std, lap.fractions) == (0.02, 0.01, (0.05, 0.10))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    return earlyphase.run("prototypes", overrides=TINY, store=root / "store", progress=False)


def test_tiny_grid_end_to_end(tiny):
    check = json.loads((tiny.path / "check.json").read_text())
    assert check["pass"] is None and check["measured"] and check["meaning"]
    r = tiny.results
    assert sorted(set(r.step)) == STEPS and set(r.alignment) == {0.2, 1.0} and set(r.fraction) == {0.1}
    assert r.reconstruction_mse.gt(0).all() and r.source_probe_accuracy.between(0, 1).all()
    assert len(tiny.tables["grid"]) == 2 and len(tiny.tables["phases"]) == 2
    # from a small W0 the outputs first carry almost nothing of the input; training makes them carry
    # the prototypes' directions, so the reconstruction improves
    for _, g in r.groupby("alignment"):
        g = g.sort_values("step")
        assert g.reconstruction_mse.iloc[-1] < g.reconstruction_mse.iloc[0]
    assert (tiny.path / "reconstruction_grid.png").is_file() and (tiny.path / "check-grid.csv").is_file()


@pytest.mark.parametrize("extra, words", [
    (["fractions=[0.0, 0.1]"], ["fractions must be atypical fractions in (0, 1)"]),
    (["alignments=[-0.1]"], ["alignments must be prototype weights >= 0"]),
    (["delta=1.5"], ["delta must be in (0, 1)"]),
    (["rho=0"], ["rho must be in (0, 1)"]),
    (['run.data.name="mnist1d"'], ["run.data.name = 'prototypes'"]),
    (["run.model.widths=[10]"], ["single-layer softmax network"]),
    (["run.data.atypical_alignment=-1"], ["data.atypical_alignment must be >= 0"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, snapshot, extra, words):
    assert_rejected("prototypes", TINY + extra, words, tmp_path / "s", capsys, snapshot)
