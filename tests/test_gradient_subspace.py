"""The gradient-subspace experiment: on the rewinding experiment's dense runs, its check on
constructed tables, bad input, and the paper preset's first steps."""
import json

import numpy as np
import pandas as pd
import pytest

import earlyphase
from earlyphase.experiments.gradient_subspace import GradientSubspaceConfig, judge
from earlyphase.store import Store
from user_errors import assert_rejected

TINY_RUN = ['run.train.steps="40it"', 'run.train.milestones=["20it"]', 'run.data.n_train=300',
            'run.data.n_test=100', 'run.train.batch_size=50', 'run.observe.eval_every=""']


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("subspace")
    rew = earlyphase.run("rewinding", overrides=['levels=1', 'rewind=["0it"]', 'controls="none"', *TINY_RUN], seeds=2,
                         store=root / "store")
    exp = earlyphase.run("gradient_subspace", overrides=[*TINY_RUN, "subset=200"], seeds=2, store=root / "store")
    return rew, exp, Store(root / "store")


def test_measures_the_rewinding_dense_runs_at_0_powers_of_two_and_the_drop(stored):
    rew, exp, store = stored
    r = exp.results
    assert set(r.seed) == {0, 1}
    assert sorted(set(r.step)) == [0, 1, 2, 4, 8, 16, 20, 32]
    dense = set(rew.results[rew.results.control == "dense"].run_id)
    assert set(exp.tables["results"].seed) == {0, 1} and len(dense) == 2
    runs = json.loads((exp.path / "runs.json").read_text())
    assert set(runs) == dense  # the same runs, re-observed with more checkpoints
    assert r.converged.all() and (r.fraction > 0).all() and (r.fraction <= 1 + 1e-9).all()
    assert np.allclose(r[r.step == 20].overlap, 1.0)  # the first drop's subspace against itself
    assert (r[r.step != 20].overlap < 1 - 1e-6).all()
    assert np.allclose(r.random_fraction, 10 / 8010)
    eig = exp.tables["eigenvalues"]
    assert sorted(set(eig["index"])) == list(range(1, 11))
    # eigenvalues come out descending
    for _, g in eig.groupby(["seed", "step"]):
        assert (np.diff(g.sort_values("index").eigenvalue.values) <= 1e-9).all()
    assert (exp.path / "gradient_subspace.png").is_file()
    assert len(list(store.run(runs[0]).path.glob("subspace-*.csv"))) == 1


def results(fractions: dict, random: float = 10 / 8010, drop: int = 1500) -> pd.DataFrame:
    rows = [{"seed": s, "step": step, "fraction": f, "random_fraction": random, "first_drop": drop, "overlap": 0.5,
             "top_eigenvalue": 10.0, "grad_norm": 1.0, "converged": True}
            for s, curve in fractions.items() for step, f in curve.items()]
    return pd.DataFrame(rows)


CFG = GradientSubspaceConfig()


def test_check_passes_when_every_checkpoint_before_the_drop_is_above_half():
    c = judge(CFG, results({0: {0: 0.93, 64: 0.85, 1024: 0.8, 2048: 0.3}, 1: {0: 0.9, 64: 0.6, 1024: 0.7, 2048: 0.2}}))
    assert c.passed is True and c.numbers["min_fraction_before_drop"] == 0.6 and c.numbers["checkpoints_judged"] == 6
    assert "step 1500" in c.statement and "0.5" in c.statement and "100 times" in c.statement
    assert c.measured and c.meaning.startswith("PASS") and len(c.tables["before_first_drop"]) == 6


def test_check_fails_when_one_checkpoint_before_the_drop_is_below_half():
    c = judge(CFG, results({0: {0: 0.93, 64: 0.85}, 1: {0: 0.9, 64: 0.45}}))
    assert c.passed is False and c.numbers["at_seed"] == 1 and c.numbers["at_step"] == 64


def test_check_fails_when_the_fraction_is_not_hundreds_of_times_random():
    c = judge(CFG, results({0: {0: 0.93, 64: 0.85}}, random=0.01))
    assert c.passed is False and c.numbers["ratio_to_random"] < 100


def test_check_gives_null_without_a_checkpoint_before_the_drop():
    c = judge(CFG, results({0: {0: 0.3, 64: 0.2}}, drop=0))
    assert c.passed is None and c.numbers["checkpoints_judged"] == 0


@pytest.mark.parametrize("override,needle", [
    ("k=9000", "parameters"),
    ("subset=9000", "subset = 9000"),
    ('run.train.milestones=["5000it"]', "beyond the training length"),
    ('solver="power"', "solver must be"),
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path, capsys, snapshot, override, needle):
    assert_rejected("gradient_subspace", override, needle, tmp_path / "s", capsys, snapshot)


def test_paper_preset_first_steps_on_cifar_shaped_data(tmp_path):
    from test_experiments import _write_fake_cifar

    _write_fake_cifar(tmp_path / "cifar")
    exp = earlyphase.run("gradient_subspace", preset="paper", store=tmp_path / "s", seeds=1, overrides=[
        f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="2it"', 'run.train.milestones=["1it"]',
        "subset=16", "k=2", "max_iter=6", "tol=0.5", 'run.observe.eval_every=""', 'run.observe.device="cpu"'])
    assert exp.config.run.model.name == "resnet_cifar_20" and exp.config.bn == "reestimate"
    assert sorted(exp.results.step) == [0, 1, 2] and exp.check["pass"] in (True, False)
