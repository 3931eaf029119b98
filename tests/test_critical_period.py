"""The critical-period experiment: its chains of runs, its check on constructed tables, bad input and
the paper preset's first steps."""
import numpy as np
import pandas as pd
import pytest

import earlyphase
from earlyphase.experiments.critical_period import CriticalPeriodConfig, end_of_period, judge
from earlyphase.store import Store
from user_errors import assert_rejected

TINY_RUN = ['run.train.steps="60it"', 'run.train.milestones=["30it"]', 'run.data.n_train=300',
            'run.data.n_test=100', 'run.train.batch_size=50', 'run.observe.eval_every=""']
TINY = [*TINY_RUN, 'lengths=["0it", "10it", "20it"]', 'window="10it"', 'starts=["0it", "20it", "40it"]']


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("critical")
    exp = earlyphase.run("critical_period", overrides=TINY, seeds=2, store=root / "store")
    return exp, Store(root / "store")


def _spec(store, rid):
    return store.run(rid).spec()["config"]


def test_chains_build_the_windows(stored):
    exp, store = stored
    r = exp.results
    assert sorted(set(zip(r.sweep, r.start, r.length))) == [
        ("dose", 0, 10), ("dose", 0, 20), ("none", 0, 0), ("sliding", 0, 10), ("sliding", 20, 10), ("sliding", 40, 10)]
    # the window at 0 is the dose of the same length: one run
    s0 = r[(r.sweep == "sliding") & (r.start == 0)].set_index("seed").run_id
    d10 = r[(r.sweep == "dose") & (r.length == 10)].set_index("seed").run_id
    assert (s0 == d10).all()
    for row in r[r.sweep == "sliding"].itertuples():
        clean = _spec(store, row.run_id)
        assert clean["restart_schedule"] and clean["data"].get("blur", 1) == 1 and clean["train"]["steps"] == "60it"
        window = _spec(store, clean["start_run"])
        assert window["data"]["blur"] == 4 and window["train"]["schedule"] == "constant"
        assert clean["start_step"] == f"{row.start + 10}it"
        if row.start:
            prefix = _spec(store, window["start_run"])
            assert window["start_step"] == f"{row.start}it" and prefix["data"].get("blur", 1) == 1
            assert prefix["train"]["schedule"] == "constant" and prefix["data_seed"] == row.seed
    none = r[r.sweep == "none"]
    assert all(_spec(store, rid).get("start_run") is None for rid in none.run_id)


def test_the_deficit_run_is_the_blurred_data_at_the_initial_lr(stored):
    exp, store = stored
    r = exp.results
    rid = _spec(store, r[(r.sweep == "dose") & (r.length == 20)].run_id.iloc[0])["start_run"]
    cfg = _spec(store, rid)
    assert cfg["train"]["lr"] == 0.1 and cfg["train"].get("milestones", []) == []
    assert set(store.run(rid).checkpoint_steps()) >= {10, 20}
    assert (exp.path / "critical_period.png").is_file() and exp.check["measured"]


def summary(none, sliding: dict, dose: dict | None = None) -> dict:
    rows = [{"sweep": "none", "start": 0, "length": 0, "seed": s, "test_accuracy": a} for s, a in enumerate(none)]
    rows += [{"sweep": "sliding", "start": st, "length": 500, "seed": s, "test_accuracy": a}
             for st, accs in sliding.items() for s, a in enumerate(accs)]
    rows += [{"sweep": "dose", "start": 0, "length": ln, "seed": s, "test_accuracy": a}
             for ln, accs in (dose or {}).items() for s, a in enumerate(accs)]
    results = pd.DataFrame(rows)
    summ = (results.groupby(["sweep", "start", "length"]).agg(mean=("test_accuracy", "mean"),
                                                                std=("test_accuracy", "std"),
                                                                seeds=("seed", "nunique")).reset_index())
    return {"results": results, "summary": summ, "critical_period": end_of_period(summ)}


CFG = CriticalPeriodConfig()
NONE = [0.970, 0.968, 0.972]


def test_check_passes_on_a_lasting_early_deficit_that_closes():
    t = summary(NONE, {0: [0.950, 0.952, 0.948], 500: [0.960, 0.962, 0.958], 2000: [0.969, 0.971, 0.970]},
                dose={500: [0.950, 0.952, 0.948], 2000: [0.94, 0.945, 0.942]})
    c = judge(CFG, t)
    assert c.passed is True and c.numbers["end_of_critical_period"] == 2000
    assert "500-step window" in c.statement and "step 2000" in c.statement and "factor 4" in c.statement
    assert c.measured and c.meaning.startswith("PASS") and set(c.tables) == {"sliding_window", "damage"}


def test_check_fails_when_the_early_deficit_leaves_no_lasting_loss():
    t = summary(NONE, {0: [0.969, 0.966, 0.971], 2000: [0.970, 0.971, 0.969]})
    c = judge(CFG, t)
    assert c.passed is False and c.numbers["a_pass"] is False
    assert c.numbers["end_of_critical_period"] == 0


def test_check_fails_when_a_late_deficit_hurts_as_much():
    t = summary(NONE, {0: [0.950, 0.952, 0.948], 2000: [0.951, 0.950, 0.949]})
    c = judge(CFG, t)
    assert c.passed is False and c.numbers["a_pass"] is True and c.numbers["b_pass"] is False
    assert c.numbers["end_of_critical_period"] is None


def test_check_gives_null_with_one_seed():
    t = summary(NONE[:1], {0: [0.95], 2000: [0.97]})
    c = judge(CFG, t)
    assert c.passed is None and "one seed" in c.meaning


@pytest.mark.parametrize("override,needle", [
    ('starts=["0it", "2800it"]', "ends beyond the training length"),
    ('lengths=["0it", "4000it"]', "beyond the training length"),
    ('window="5000it"', "beyond the training length"),
    ('deficit="noise"', "deficit must be"),
    ('starts=["100it", "200it"]', "starts must begin at 0"),
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path, capsys, snapshot, override, needle):
    assert_rejected("critical_period", override, needle, tmp_path / "s", capsys, snapshot)


def test_label_noise_deficit_changes_only_the_window_labels(tmp_path):
    exp = earlyphase.run("critical_period", overrides=[*TINY_RUN, 'lengths=["0it", "10it"]', 'window="10it"',
                                                       'starts=["0it", "20it"]', 'deficit="label_noise"'],
                         seeds=1, store=tmp_path / "s")
    store = Store(tmp_path / "s")
    clean = _spec(store, exp.results[exp.results.sweep == "dose"].run_id.iloc[0])
    assert _spec(store, clean["start_run"])["data"]["label_noise"] == 0.5
    assert clean["data"].get("label_noise", 0.0) == 0.0
    assert exp.check["pass"] is None  # one seed


def test_paper_preset_first_steps_on_cifar_shaped_data(tmp_path):
    from test_experiments import _write_fake_cifar

    _write_fake_cifar(tmp_path / "cifar")
    exp = earlyphase.run("critical_period", preset="paper", store=tmp_path / "s", seeds=1, overrides=[
        f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="2it"', 'run.train.milestones=["1it"]',
        'lengths=["0it", "1it"]', 'window="1it"', 'starts=["0it", "1it"]', 'run.observe.eval_every=""',
        'run.observe.device="cpu"'])
    assert exp.config.run.model.name == "resnet_cifar_20" and exp.config.blur == 4
    assert len(exp.results) == 1 + 1 + 2 and np.isfinite(exp.results.test_accuracy).all()
