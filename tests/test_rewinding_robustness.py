"""rewinding_robustness on a tiny config: it plans, trains and analyzes; its preset row is the rewinding
experiment's own runs; an unknown setting is one line, exit 2, nothing stored."""
import pytest

import earlyphase
from earlyphase.experiments.rewinding_robustness import RobustnessConfig, setting_plans
from earlyphase.store import Store

TINY_RUN = ['run.train.steps="100it"', 'run.train.milestones=["50it"]', 'run.data.n_train=400',
            'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']


def test_robustness_reuses_the_rewinding_runs_and_trains_only_the_new_settings(tmp_path):
    store = Store(tmp_path / "s")
    rew = earlyphase.run("rewinding", store=store, seeds=2, overrides=[
        "levels=2", 'rewind=["0it", "20it"]', 'controls="none"', *TINY_RUN])
    before = {p.name for p in (store.root / "runs").iterdir()}
    exp = earlyphase.run("rewinding_robustness", store=store, overrides=[
        'k="20it"', "levels=2", "level=2", "preset_seeds=2", "seeds=2",
        'settings=["preset", "init_mode=torch_default", "scope=layerwise"]', *TINY_RUN])
    after = {p.name for p in (store.root / "runs").iterdir()}
    preset = exp.results[exp.results.setting == "preset"]
    assert set(preset.run_id) == set(rew.results.run_id)  # the same runs, found in the store
    # new: torch_default 2 seeds x (dense + 2 k x 2 levels); layerwise shares the dense runs: 2 x 4
    assert len(after - before) == 2 * 5 + 2 * 4
    summary = exp.tables["summary"]
    assert summary.setting.tolist() == ["preset", "init_mode=torch_default", "scope=layerwise"]
    assert set(summary.columns) >= {"k0_mean", "k0_std", "k_mean", "k_std", "margin", "twice_pooled_std", "holds"}
    for row in summary.itertuples():
        assert row.holds == (row.margin > row.twice_pooled_std) and row.seeds == 2
    assert exp.check["pass"] is None and set(exp.check["numbers"]) == set(summary.setting)
    assert (exp.path / "robustness.png").is_file()


def test_settings_change_one_factor_each():
    cfg = RobustnessConfig(settings=("preset", "init_mode=fan_in", "prune_output=true", "scope=layerwise",
                                     "bn_init=uniform"))
    preset = cfg.rewinding("preset")
    assert preset.seeds == cfg.preset_seeds and preset.rewind == ("0it", cfg.k) and preset.controls == "none"
    assert cfg.rewinding("init_mode=fan_in").run.model.init_mode == "fan_in"
    assert cfg.rewinding("prune_output=true").run.model.prune_output is True
    assert cfg.rewinding("bn_init=uniform").run.model.bn_init == "uniform"
    layerwise = cfg.rewinding("scope=layerwise")
    assert layerwise.scope == "layerwise" and layerwise.run == cfg.run and layerwise.seeds == cfg.seeds


def test_the_laptop_preset_row_has_the_rewinding_presets_run_ids():
    from earlyphase.experiments.rewinding import imp_chains
    from earlyphase.experiments.base import Plan
    from earlyphase.experiments.runner import get_experiment, load_experiment_config

    rob = load_experiment_config(get_experiment("rewinding_robustness"), preset="laptop")
    rew = load_experiment_config(get_experiment("rewinding"), preset="laptop")
    plan = Plan()
    ids = imp_chains(rew, plan)
    wanted = {rid for (s, k, level), rid in ids.items() if k in ("0it", rob.k)}
    assert set(setting_plans(rob)["preset"].graph) == wanted


@pytest.mark.parametrize("override,needle", [
    ('settings=["preset", "init_mode=xavier"]', "unknown setting 'init_mode=xavier'"),
    ('settings=["lr=0.1"]', "unknown setting 'lr=0.1'"),
    ("seeds=1", "seeds and preset_seeds must be >= 2"),
    ("level=12", "level must be in 1..levels"),
])
def test_bad_robustness_input_is_one_line_exit_2_and_stores_nothing(tmp_path, ep, snapshot, override, needle):
    before = snapshot(tmp_path)
    r = ep("run", "rewinding_robustness", "--store", tmp_path / "s", "--set", override)
    assert r.code == 2 and needle in r.err and len(r.err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_paper_presets_resolve():
    from earlyphase.experiments.runner import get_experiment, load_experiment_config

    rob = load_experiment_config(get_experiment("rewinding_robustness"), preset="paper")
    assert rob.run.model.name == "resnet_cifar_20" and rob.k == "2000it"
    assert rob.rewinding("preset").run.model.bn_init == "uniform"
    assert rob.rewinding("bn_init=ones").run.model.bn_init == "ones"
    assert rob.rewinding("prune_output=false").run.model.prune_output is False
    rew = load_experiment_config(get_experiment("rewinding"), preset="paper")
    assert (rew.claim, rew.check_level, rew.check_min_k) == ("matching", 8, "500it")
    es = load_experiment_config(get_experiment("early_stats"), preset="paper")
    assert es.claim == "paper" and es.acc_steps == ("400it", "2000it") and es.grad_min_range == ("100it", "400it")
