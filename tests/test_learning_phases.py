"""The learning_phases experiment: its verdict on constructed result tables (PASS, each way to FAIL,
no verdict), the laptop and paper presets' statements, BN re-estimation and the BN-free control, a
tiny run end to end, and bad input as one line with exit code 2."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import earlyphase
from earlyphase.config import ModelConfig
from earlyphase.errors import UserError
from earlyphase.experiments.learning_phases import (LearningPhases, mean_curves, phase_table, seed_run,
                                                    transfer_table)
from earlyphase.experiments.phases_verdict import inverted_u
from earlyphase.experiments.runner import load_experiment_config
from earlyphase.models import build_model
from earlyphase.probes.batchnorm import has_batchnorm
from earlyphase.store import Store
from user_errors import assert_rejected

TINY = ["seeds=2", 'run.train.steps="64it"', "run.model.channels=[4, 8, 8, 8, 8]", "run.data.n_train=400",
        "run.data.n_test=200"]

# constructed curves at checkpoints 0, 2^0 .. 2^8
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
THREE = [1.0, 1.0, 1.0, 0.97, 0.85, 0.8, 0.9, 1.0, 1.1, 1.2]  # flat, -20 %, +50 %
RISING = [1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]
U_CLEAR = [0.90, 0.90, 0.91, 0.93, 0.95, 0.96, 0.94, 0.92, 0.91, 0.90]
FIRST = [0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.90, 0.90, 0.90]
LAST = [0.90, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.95, 0.96, 0.97]
U_NOISY = [0.90, 0.90, 0.90, 0.90, 0.905, 0.91, 0.905, 0.90, 0.90, 0.90]
SOURCE_LATE = [0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # best at the last checkpoint
SOURCE_EARLY = [0.1, 0.2, 0.4, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7]  # best at step 4, before the transfer top


def results(recon: list[list[float]], target: list[float], source: list[float], *, spread: float = 0.004,
            network: str = "with_bn") -> pd.DataFrame:
    """Result rows of one network, one seed per reconstruction curve; seed i's transfer accuracy is
    ``target`` shifted by (i - mean) * ``spread``, so the std over seeds is ``spread`` (for 3 seeds)."""
    rows, n = [], len(recon)
    for seed, curve in enumerate(recon):
        shift = (seed - (n - 1) / 2) * spread
        for step, mse, t, s in zip(STEPS, curve, target, source):
            rows.append({"network": network, "control": network == "bn_free", "seed": seed, "layer": "pool",
                         "penultimate": True, "step": step, "reconstruction_mse": mse,
                         "target_probe_accuracy": t + shift, "source_probe_accuracy": s,
                         "classifier_accuracy": s, "classifier_loss": 1 - s, "target": "energy_half"})
    return pd.DataFrame(rows)


def tables_of(res: pd.DataFrame, delta: float = 0.02, rho: float = 0.10) -> dict[str, pd.DataFrame]:
    return {"results": res, "phases": phase_table(res, delta, rho), "transfer": transfer_table(res),
            "curves": mean_curves(res)}


@pytest.fixture(scope="module")
def laptop():
    return load_experiment_config(LearningPhases(), preset="laptop")


def judge(cfg, res):
    return LearningPhases().check(cfg, tables_of(res, cfg.delta, cfg.rho))


def test_check_passes_on_three_phases_and_a_clear_inverted_u(laptop):
    chk = judge(laptop, results([THREE] * 3, U_CLEAR, SOURCE_LATE))
    assert chk.passed is True
    assert chk.numbers["seeds_with_all_three_phases"] == 3 and chk.numbers["best_transfer_step_mean_curve"] == 16
    assert "3 of 3 seeds show all three phases" in chk.measured and "holds" in chk.meaning
    assert set(chk.tables) == {"phases", "transfer", "transfer_mean_curve"} and len(chk.tables["phases"]) == 3


@pytest.mark.parametrize("target, source, spread, words", [
    (FIRST, SOURCE_LATE, 0.004, "best at the first checkpoint"),
    (LAST, SOURCE_LATE, 0.004, "best at the last checkpoint"),
    (U_NOISY, SOURCE_LATE, 0.02, "within noise"),  # top 0.01 above the ends, std over seeds 0.02
    (U_CLEAR, SOURCE_EARLY, 0.004, "does not come before the best source step"),
])
def test_check_fails_without_a_clear_inverted_u(laptop, target, source, spread, words):
    chk = judge(laptop, results([THREE] * 3, target, source, spread=spread))
    assert chk.passed is False and words in chk.meaning


def test_check_fails_when_most_seeds_lack_the_phases(laptop):
    chk = judge(laptop, results([THREE, RISING, RISING], U_CLEAR, SOURCE_LATE))
    assert chk.passed is False and chk.numbers["seeds_with_all_three_phases"] == 1
    assert "only 1 of 3 seeds" in chk.meaning
    assert judge(laptop, results([THREE, THREE, RISING], U_CLEAR, SOURCE_LATE)).passed is True


def test_a_rise_below_rho_fails_and_rho_is_configurable(laptop):
    small = THREE[:6] + [0.82, 0.83, 0.84, 0.85]  # +6 % after the minimum
    assert judge(laptop, results([small] * 3, U_CLEAR, SOURCE_LATE)).passed is False
    lenient = load_experiment_config(LearningPhases(), preset="laptop", overrides=["rho=0.05"])
    chk = judge(lenient, results([small] * 3, U_CLEAR, SOURCE_LATE))
    assert chk.passed is True and "ρ = 0.05" in chk.statement


def test_one_seed_gives_no_verdict(laptop):
    chk = judge(laptop, results([THREE], U_CLEAR, SOURCE_LATE))
    assert chk.passed is None and "at least 2 seeds" in chk.meaning


def test_the_control_is_reported_but_not_judged(laptop):
    res = pd.concat([results([THREE] * 3, U_CLEAR, SOURCE_LATE),
                     results([RISING] * 3, FIRST, SOURCE_LATE, network="bn_free")], ignore_index=True)
    chk = judge(laptop, res)
    assert chk.passed is True and chk.numbers["network"] == "with_bn"
    assert chk.numbers["networks"]["bn_free"]["seeds_with_all_three_phases"] == 0
    assert "bn_free control does not show the phases" in chk.meaning
    assert set(chk.tables["phases"].network) == {"with_bn", "bn_free"}


def test_inverted_u_margins_use_the_pooled_std():
    steps = [0, 1, 2]
    u = inverted_u(steps, [0.5, 0.6, 0.5], [0.02, 0.04, 0.02], [0.1, 0.2, 0.3])
    pooled = ((0.04 ** 2 + 0.02 ** 2) / 2) ** 0.5
    assert u.pooled_std_first == pytest.approx(pooled) and u.passed  # 0.1 > 2 * 0.0316
    assert not inverted_u(steps, [0.5, 0.6, 0.5], [0.02, 0.08, 0.02], [0.1, 0.2, 0.3]).beats_first  # 0.1 < 2 * 0.058


def test_paper_preset_statement_and_check_on_constructed_tables():
    paper = load_experiment_config(LearningPhases(), preset="paper")
    chk = judge(paper, results([THREE] * 3, U_CLEAR, SOURCE_LATE))
    assert chk.passed is True
    assert "cifar10" in chk.statement and "lr 0.002" in chk.statement and "65536it" in chk.statement
    assert judge(paper, results([THREE] * 3, LAST, SOURCE_LATE)).passed is False


def test_laptop_preset_is_the_faithful_measurement(laptop):
    r = laptop.run
    assert (r.data.name, r.model.name, r.train.lr, r.train.momentum, r.train.schedule, r.train.steps) == (
        "mnist1d", "vgg8_phases", 0.002, 0.9, "constant", "16384it")
    assert laptop.seeds >= 3 and laptop.bn_stats == "reestimate" and laptop.bn_free_control


def test_v8_takes_sequences_and_drops_batchnorm():
    with_bn = build_model(ModelConfig(name="vgg8_phases", channels=(4, 8, 8, 8, 8)), (1, 40), 10)
    free = build_model(ModelConfig(name="vgg8_phases", channels=(4, 8, 8, 8, 8), norm="none"), (1, 40), 10)
    assert has_batchnorm(with_bn) and not has_batchnorm(free)
    assert isinstance(free.blocks[0][0], torch.nn.Conv1d) and free.blocks[0][0].bias is not None
    x = torch.randn(3, 1, 40)
    assert with_bn(x).shape == free(x).shape == (3, 10)
    with pytest.raises(UserError, match="model.norm"):
        build_model(ModelConfig(name="cnn1d", norm="none"), (1, 40), 10)


def test_the_configured_network_keeps_its_run_id(laptop):
    """model.norm at its default is not hashed: the BN network's run id is that of a config without it."""
    from earlyphase.config import canonical_json, to_dict

    run = seed_run(laptop, 0)
    assert "norm" not in to_dict(run, hashed_only=True)["model"]
    assert '"norm":"none"' in canonical_json(to_dict(seed_run(laptop, 0, control=True), hashed_only=True))
    assert seed_run(laptop, 0, control=True).run_id != run.run_id


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    return earlyphase.run("learning_phases", preset="laptop", overrides=TINY, store=root / "store", progress=False)


def test_tiny_experiment_end_to_end(tiny):
    check = json.loads((tiny.path / "check.json").read_text())
    assert set(check) == {"experiment", "statement", "pass", "numbers", "wall_seconds", "measured", "meaning"}
    assert check["experiment"] == "learning_phases" and isinstance(check["pass"], bool)
    assert check["measured"] and check["meaning"] and check["numbers"]["bn_stats"] == "reestimate"
    nums = check["numbers"]
    assert {"seeds_with_all_three_phases", "best_transfer_step_mean_curve", "best_source_step_mean_curve",
            "per_seed", "per_seed_transfer", "networks"} <= set(nums)
    assert set(nums["per_seed"]) == {"0", "1"} and set(nums["networks"]) == {"with_bn", "bn_free"}
    r = tiny.results
    assert set(r.layer) == {"blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "pool"}
    assert sorted(set(r.step)) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert r.reconstruction_mse.gt(0).all() and r.target_probe_accuracy.between(0, 1).all()
    assert r.classifier_accuracy.notna().all() and (r.target == "energy_half").all()
    assert len(tiny.tables["phases"]) == 2 * 2 * 6 and len(tiny.tables["transfer"]) == 2 * 2
    for name in ("reconstruction_phases", "transfer", "phases_transfer"):
        assert (tiny.path / f"{name}.png").is_file() and (tiny.path / f"{name}.svg").is_file()
    assert (tiny.path / "check-phases.csv").is_file()


def test_probes_are_cached_and_redraw_gives_the_same_check(tiny):
    again = earlyphase.experiments.redraw(tiny.path)
    assert again.check["numbers"] == tiny.check["numbers"]


def test_stored_bn_statistics_change_only_the_bn_network(tiny):
    """bn_stats = "stored" reads the same runs (nothing retrains) under a different probe cache key; the
    BN network's probes change, the BN-free control's do not."""
    store = tiny.path.parent.parent
    stored = earlyphase.run("learning_phases", preset="laptop", overrides=TINY + ['bn_stats="stored"'], store=store,
                            progress=False)
    a, b = tiny.results, stored.results
    assert list(a.run_id) == list(b.run_id)
    bn, free = a.network == "with_bn", a.network == "bn_free"
    assert not a[bn].reconstruction_mse.reset_index(drop=True).equals(b[bn].reconstruction_mse.reset_index(drop=True))
    pd.testing.assert_series_equal(a[free].reconstruction_mse.reset_index(drop=True),
                                   b[free].reconstruction_mse.reset_index(drop=True))
    caches = list((store / "runs").glob("*/probes-*.csv"))
    assert len(caches) == 2 * 4


def test_transfer_figure_has_no_negative_steps(tiny, tmp_path):
    from earlyphase.experiments.phases_figures import _transfer_panel
    from earlyphase.report import new_figure

    fig, ax = new_figure()
    _transfer_panel(ax, tiny.tables["curves"], tiny.results, "with_bn")
    assert ax.get_xlim()[0] == 0 and ax.get_xscale() == "symlog"


@pytest.mark.parametrize("extra, words", [
    (['layers=["blocks.0", "nope"]'], ["'nope'", "blocks.0", "pool", "fc"]),
    (['run.observe.schedule="none"'], ["checkpoint schedule has no steps"]),
    (['target="labels"', 'target_data.name="digits"', "target_data.n_train=100"], ["does not label the source images"]),
    (["delta=0"], ["delta must be in (0, 1)"]),
    (["rho=1.0"], ["rho must be in (0, 1)"]),
    (['bn_stats="fresh"'], ["bn_stats must be"]),
    (['run.model.norm="group"'], ["model.norm must be"]),
    (['run.model.name="resnet_cifar_20"', 'run.data.name="digits"'], ["bn_free_control needs"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, snapshot, extra, words):
    assert_rejected("learning_phases", TINY + extra, words, tmp_path / "s", capsys, snapshot)
