"""The early-phase timeline: each lens's step rule on constructed curves, the tables and the check on
constructed tables (pass, fail, null), bad input, and a tiny end-to-end run that reuses the
instability experiment's stored runs and the analysis caches."""
import json

import numpy as np
import pandas as pd
import pytest

import earlyphase
from earlyphase.experiments import timeline_lenses as L
from earlyphase.experiments.runner import load_experiment_config
from earlyphase.experiments.timeline import LENSES, Timeline, TimelineConfig
from earlyphase.experiments.timeline_figure import normalized
from earlyphase.experiments.timeline_verdict import agreement, judge, lens_tables
from earlyphase.store import Store
from user_errors import assert_rejected

TINY_RUN = ['run.train.steps="60it"', 'run.train.milestones=["30it"]', 'run.data.n_train=300',
            'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']
TINY = [*TINY_RUN, "level=2", "imp_levels=2", 'rewind=["0it", "20it"]', 'fine_k=["0it", "10it", "20it", "40it"]',
        "subset=300", 'lengths=["0it", "20it"]', 'window="10it"', 'starts=["0it", "10it", "30it"]', "points=5",
        'flip_window="10it"']
INSTABILITY = [*TINY_RUN, 'dense_k=["0it", "10it", "20it", "40it"]', 'rewind=["0it", "20it"]',
               'extra_k=["10it", "40it"]', "levels=[2]", "imp_levels=2", "points=5"]


# ----------------------------------------------------------------------------------------------
# step rules on constructed curves


def test_linearization_step_is_the_first_crossing_after_step_0():
    rule = L.first_above(0.15)
    assert rule([0, 1, 2, 4, 8], [0.5, 0.01, 0.1, 0.2, 0.3]) == 4  # step 0 never counts
    assert rule([4, 1, 2], [0.16, 0.0, 0.15]) == 4  # unsorted input; at the threshold is not above
    assert rule([0, 1, 2], [0.0, 0.1, 0.1]) is None


def test_stability_and_lottery_steps_are_the_smallest_qualifying_rewind_points():
    assert L.smallest_below(0.02)([0, 20, 50, 100], [0.5, 0.1, 0.019, 0.001]) == 50
    assert L.smallest_below(0.02)([0, 20], [0.5, 0.02]) is None
    assert L.smallest_at_least(0.96)([0, 20, 100, 500], [0.93, 0.95, 0.96, 0.97]) == 100
    assert L.smallest_at_least(0.99)([0, 20], [0.93, 0.95]) is None


def test_subspace_settles_where_the_overlap_stays_above_the_threshold_up_to_the_drop():
    rule = L.settled(0.5, 1500)
    steps = [0, 1, 2, 4, 8, 16, 1500, 2048]
    assert rule(steps, [0.2, 0.6, 0.4, 0.55, 0.7, 0.8, 1.0, 0.1]) == 4  # the dip at 2 resets; after the drop ignored
    assert rule(steps, [0.6] * 6 + [1.0, 0.0]) == 0
    assert rule([0, 1, 1500], [0.1, 0.2, 0.5]) is None  # at the threshold is not above


def test_gradient_peak_and_sign_flip_half_rate():
    assert L.peak([0, 1, 2, 3], [1.0, 5.0, 5.0, 2.0]) == 1
    assert L.peak([0, 1], [float("nan"), 2.0]) == 1
    assert L.halved([0, 10, 20, 30], [0.4, 0.3, 0.2, 0.1]) == 20  # at half counts
    assert L.halved([0, 10], [0.4, 0.3]) is None and L.halved([0, 10], [0.0, 0.0]) is None


def test_reconstruction_phase_ends_follow_the_learning_phases_rules():
    steps = [0, 1, 2, 4, 8, 16, 32]
    loss = [1.0, 1.0, 0.99, 0.95, 0.90, 0.92, 1.2]
    assert L.phase_end(1, 0.02, 0.1)(steps, loss) == 4 and L.phase_end(2, 0.02, 0.1)(steps, loss) == 8
    rising = [1.0, 1.01, 1.05, 1.1, 1.2, 1.3, 1.4]
    assert L.phase_end(1, 0.02, 0.1)(steps, rising) is None and L.phase_end(2, 0.02, 0.1)(steps, rising) is None


def test_end_of_critical_period_compares_each_start_with_its_own_spread():
    rule = L.within({0: 0.01, 250: 0.01, 500: 0.03, 1000: 0.01})
    assert rule([0, 250, 500, 1000], [0.05, 0.02, 0.025, 0.0]) == 500
    assert rule([0, 250], [0.05, 0.02]) is None


def test_mean_step_and_per_seed_band():
    curve = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "step": [0, 1, 2] * 2, "value": [0, 0.1, 0.3, 0, 0.2, 0.2]})
    lens = L.Lens("x", "x", "linearization", curve, L.first_above(0.15), "d")
    step, per = L.apply(lens)
    assert step == 1 and per == {0: 2, 1: 1}  # mean at step 1 is 0.15: not above; at 2 it is 0.25


def test_agreement_drops_and_grid_distance():
    assert L.agree(100, 200, 2.0) and not L.agree(100, 201, 2.0) and L.agree(0, 0, 2.0) and not L.agree(0, 1, 2.0)
    assert not L.agree(None, 5, 2.0)
    assert L.on_drop(1500, [1500, 2250], 0.05) and L.on_drop(1430, [1500], 0.05) and not L.on_drop(1400, [1500], 0.05)
    assert not L.on_drop(None, [1500], 0.05)
    assert L.grid_distance([0, 20, 50, 100], 20, 100) == 2
    assert list(normalized(np.array([2.0, 4.0, 3.0]))) == [0.0, 1.0, 0.5]


# ----------------------------------------------------------------------------------------------
# tables and the check on constructed tables


def constructed(stable: int | None, kstar: int | None, grid=(0, 20, 50, 100, 200, 300, 500, 1000)) -> dict:
    def lens(name, step, group):
        steps = [0, 1, 2, 3]
        values = [0.0] * 4 if step is None else [0.0 if s < step else 1.0 for s in steps]
        curve = pd.DataFrame({"seed": 0, "step": steps, "value": values})
        return L.Lens(name, name, group, curve, L.first_above(0.5) if step else L.first_above(2.0), name)

    lenses = [lens("a", 1, "linearization"), lens("b", 2, "early_stats"), lens("c", 3, "early_stats")]
    results, _ = lens_tables(lenses, drops=[3], tolerance=0.05)
    extra = pd.DataFrame([{"key": "stability_level", "step": stable}, {"key": "lottery", "step": kstar}])
    extra = extra.reindex(columns=results.columns).assign(on_lr_drop=False)
    results = pd.concat([results, extra], ignore_index=True).astype({"step": "Int64"})
    grid_table = pd.DataFrame({"level": 9, "k": [f"{k}it" for k in grid], "k_steps": list(grid)})
    return {"results": results, "rewind_grid": grid_table, "agreement": agreement(results, 2.0)}


CFG = TimelineConfig()


@pytest.mark.parametrize("stable,kstar", [(100, 200), (100, 100), (500, 300)])
def test_check_passes_when_stability_and_kstar_are_at_most_one_grid_point_apart(stable, kstar):
    c = judge(CFG, constructed(stable, kstar))
    assert c.passed is True and c.numbers["grid_points_apart"] <= 1
    assert "level 9" in c.statement and "[0, 20, 50, 100, 200, 300, 500, 1000]" in c.statement
    assert c.measured and c.meaning.startswith("PASS") and "lenses" in c.tables


@pytest.mark.parametrize("stable,kstar", [(20, 500), (0, 50), (1000, 200)])
def test_check_fails_when_they_are_further_apart(stable, kstar):
    c = judge(CFG, constructed(stable, kstar))
    assert c.passed is False and c.numbers["grid_points_apart"] >= 2 and c.meaning.startswith("FAIL")


@pytest.mark.parametrize("stable,kstar,missing", [(20, None, "no rewind point matches"),
                                                   (None, 100, "no rewind point is stable")])
def test_check_gives_null_when_either_is_missing(stable, kstar, missing):
    c = judge(CFG, constructed(stable, kstar))
    assert c.passed is None and missing in c.meaning


def test_findings_name_agreeing_lenses_and_flag_an_lr_drop():
    tables = constructed(100, 200)
    c = judge(CFG, tables)
    assert c.numbers["steps"]["a"] == 1 and c.numbers["steps"]["c"] == 3
    assert "a (1) ~ b (2)" in c.numbers["agreeing_pairs"] and not any("a (1) ~ c" in p for p in c.numbers["agreeing_pairs"])
    assert c.numbers["on_lr_drop"] == ["c"]
    assert "stability_level (100) ~ lottery (200)" in c.numbers["agreeing_pairs"]


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("override,needle", [
    ("level=12", "not a level of the rewinding experiment"),
    ('lenses=["linearization", "horoscope"]', "unknown lens 'horoscope'"),
    ("gap=0", "gap must be > 0"),
    ('fine_k=["0it", "9000it"]', "beyond the training length"),
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path, capsys, snapshot, override, needle):
    assert_rejected("timeline", override, needle, tmp_path / "s", capsys, snapshot)


def test_laptop_preset_asks_for_every_lens():
    cfg = load_experiment_config(Timeline(), preset="laptop")
    assert cfg.lenses == LENSES and cfg.level == 9 and cfg.run.model.name == "cnn1d"


# ----------------------------------------------------------------------------------------------
# end to end, tiny


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline") / "store"
    inst = earlyphase.run("instability", overrides=INSTABILITY, seeds=2, store=root)
    exp = earlyphase.run("timeline", overrides=TINY, seeds=2, store=root)
    return inst, exp, Store(root)


def test_the_timeline_reuses_the_instability_runs(stored):
    inst, _, store = stored
    cfg = load_experiment_config(Timeline(), overrides=[*TINY, 'lenses=["lottery", "stability"]'], seeds=2)
    plan = Timeline().plan(cfg, store)
    assert set(plan.graph) == set(json.loads((inst.path / "runs.json").read_text()))
    assert all(store.run(rid).status()["status"] == "done" for rid in plan.graph)


def test_tables_figure_and_check(stored):
    inst, exp, _ = stored
    r = exp.results
    assert list(r.key) == ["linearization", "lottery", "stability_dense", "stability_level", "subspace", "grad_peak",
                           "sign_flip", "phase1", "phase2", "critical"]
    assert (r.seeds == 2).all() and r.definition.str.len().min() > 20
    have = r.dropna(subset=["step"])
    assert ((have.band_min <= have.band_max) | have.band_min.isna()).all()
    stab = inst.tables["stability"].set_index("level")
    assert r.set_index("key").step["stability_level"] == stab.smallest_stable_k[2] or \
        pd.isna(stab.smallest_stable_k[2])
    check = json.loads((exp.path / "check.json").read_text())
    assert check["measured"] and check["meaning"] and check["numbers"]["grid"] == [0, 10, 20, 40]
    assert (exp.path / "timeline.png").is_file() and exp.main_figure.name == "timeline.png"
    assert "timeline.png" in (exp.path / "report.html").read_text()
    gap = exp.tables["curves"]
    assert set(gap.key) == set(r.key) and (gap[gap.key == "linearization"].value >= 0).all()


def test_a_second_run_trains_nothing_and_reads_the_caches(stored, monkeypatch):
    _, exp, store = stored
    from earlyphase.experiments import learning_phases, timeline_curves

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(timeline_curves, "train_side_by_side", boom)
    monkeypatch.setattr(learning_phases, "_probe", boom)
    again = earlyphase.run("timeline", overrides=TINY, seeds=2, store=store)
    pd.testing.assert_frame_equal(again.results, exp.results)


def test_paper_preset_plans_the_instability_paper_presets_chains(tmp_path):
    from earlyphase.experiments.instability import Instability
    from test_experiments import _write_fake_cifar

    _write_fake_cifar(tmp_path / "cifar")
    over = [f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="4000it"']
    store = Store(tmp_path / "s")
    t = load_experiment_config(Timeline(), preset="paper", overrides=[*over, 'lenses=["lottery", "stability"]'], seeds=1)
    i = load_experiment_config(Instability(), preset="paper", overrides=over, seeds=1)
    assert t.level == 8 and t.run.model.name == "resnet_cifar_20" and t.bn == "reestimate"
    tp, ip = Timeline().plan(t, store), Instability().plan(i, store)
    imp = {rid for rid, labels in tp.labels.items() if labels.get("kind") == "imp"}
    assert len(imp) == 10 * 8 and imp <= set(ip.graph)  # 10 rewind points, levels 1-8: the same chains
