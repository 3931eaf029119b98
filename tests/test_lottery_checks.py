"""Every check of the lottery experiments on constructed result tables: ones that must PASS, ones that
must FAIL, and findings (None) with their numbers. No training: the tables are built by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from earlyphase.experiments.early_stats import EarlyStats, EarlyStatsConfig
from earlyphase.experiments.perturbations import Perturbations, PerturbationsConfig, perturbation_tables
from earlyphase.experiments.rewinding import Rewinding, RewindingConfig, result_tables
from earlyphase.experiments.rewinding_robustness import RewindingRobustness, RobustnessConfig, summarize

SPREAD = (-0.002, 0.0, 0.002)  # per-seed offsets: std 0.002


# ---------------------------------------------------------------------------------------------- rewinding

def rewinding_results(acc: dict[str, list[float]], dense: float = 0.97, levels: int = 9) -> pd.DataFrame:
    """Per-run rows: dense at ``dense``; IMP with rewind point k at level L at acc[k][L - 1] (+- seed spread)."""
    rows = [{"control": "dense", "k": "", "k_steps": -1, "level": 0, "seed": s, "density": 1.0,
             "test_accuracy": dense + d, "run_id": f"d{s}"} for s, d in enumerate(SPREAD)]
    for k, curve in acc.items():
        for level in range(1, levels + 1):
            for s, d in enumerate(SPREAD):
                rows.append({"control": "imp", "k": k, "k_steps": int(k[:-2]), "level": level, "seed": s,
                             "density": 0.8 ** level, "test_accuracy": curve[level - 1] + d,
                             "run_id": f"{k}-{level}-{s}"})
    return pd.DataFrame(rows)


def flat(value: float, levels: int = 9) -> list[float]:
    return [value] * levels


def margin_check(acc: dict[str, list[float]], init_mode: str = "fan_in") -> dict:
    from earlyphase.config import ModelConfig, RunConfig

    cfg = RewindingConfig(run=RunConfig(model=ModelConfig(init_mode=init_mode)), rewind=tuple(acc), seeds=3)
    chk = Rewinding().check(cfg, result_tables(rewinding_results(acc)))
    return {"pass": chk.passed, "numbers": chk.numbers, "statement": chk.statement, "check": chk}


def test_rewinding_margin_passes():
    c = margin_check({"0it": flat(0.93), "20it": flat(0.95), "100it": flat(0.965), "500it": flat(0.96)}, "fan_out")
    assert c["pass"] is True
    assert c["numbers"]["best_k"] == "100it" and c["numbers"]["margin_over_k0"] == pytest.approx(0.035)
    assert "level 9 (~13.4% density)" in c["statement"] and "k >= 100it" in c["statement"]
    assert "1.5 points" in c["statement"] and "3 seeds" in c["statement"]
    assert "per_seed" in c["check"].tables and "init fan_out" in c["check"].meaning
    assert "first conv starts about 4x larger" in c["check"].meaning and "rewinding_robustness" in c["check"].meaning


def test_rewinding_margin_fails_when_the_margin_is_within_the_spread():
    c = margin_check({"0it": flat(0.962), "100it": flat(0.965)})  # margin 0.003 < 2 pooled std 0.004
    assert c["pass"] is False and c["numbers"]["margin_over_k0"] < c["numbers"]["twice_pooled_std"]
    assert "does not beat" in c["check"].meaning


def test_rewinding_margin_fails_when_far_from_dense():
    c = margin_check({"0it": flat(0.90), "100it": flat(0.94)})  # beats k = 0, but 3 points below dense
    assert c["pass"] is False and c["numbers"]["gap_to_dense"] == pytest.approx(0.03)
    assert "too far below dense" in c["check"].meaning


def test_rewinding_statement_follows_the_config():
    cfg = RewindingConfig(rewind=("0it", "500it"), seeds=2, check_level=8, check_min_k="500it", max_gap=0.02)
    chk = Rewinding().check(cfg, result_tables(rewinding_results({"0it": flat(0.9), "500it": flat(0.96)})))
    assert "level 8 (~16.8% density)" in chk.statement and "k >= 500it" in chk.statement
    assert "2 points" in chk.statement and chk.numbers["level"] == 8


def matching_check(acc: dict[str, list[float]]) -> tuple[bool | None, dict, str]:
    cfg = RewindingConfig(rewind=tuple(acc), seeds=3, claim="matching", check_level=8, check_min_k="500it")
    chk = Rewinding().check(cfg, result_tables(rewinding_results(acc)))
    return chk.passed, chk.numbers, chk.statement


def falling(until: int, high: float = 0.97, low: float = 0.90) -> list[float]:
    """Matching (dense accuracy) at levels 1..until, then well below."""
    return [high if level <= until else low for level in range(1, 10)]


def test_rewinding_matching_passes():
    passed, numbers, statement = matching_check({"0it": falling(5), "500it": falling(8), "1000it": falling(9)})
    assert passed is True
    assert numbers["matches_down_to_level"] == {"0it": False, "500it": True, "1000it": True}
    assert "level 8 (~16.8% density)" in statement and "every k >= 500it" in statement
    assert "k = 0 does not" in statement


def test_rewinding_matching_fails_when_k0_matches_too():
    passed, numbers, _ = matching_check({"0it": falling(9), "500it": falling(9)})
    assert passed is False and numbers["matches_down_to_level"]["0it"] is True


def test_rewinding_matching_fails_when_a_late_k_does_not_match():
    passed, numbers, _ = matching_check({"0it": falling(3), "500it": falling(8), "1000it": falling(6)})
    assert passed is False and numbers["matches_down_to_level"]["1000it"] is False


def test_rewinding_claim_is_validated():
    from earlyphase.errors import UserError

    with pytest.raises(UserError, match="claim must be 'margin' or 'matching'"):
        RewindingConfig(claim="nope")


# ------------------------------------------------------------------------------------- early statistics

def early_tables(grad: np.ndarray, sign_change: np.ndarray, acc: dict[int, float],
                 link: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Statistics at every step (grad_norm from step 1), evaluations at the steps of ``acc``."""
    steps = np.arange(len(sign_change))
    stats = pd.concat([pd.DataFrame({"step": steps[1:], "name": "grad_norm", "layer": "", "value": grad[1:]}),
                       pd.DataFrame({"step": steps, "name": "sign_change", "layer": "", "value": sign_change})])
    results = pd.DataFrame({"step": list(acc), "accuracy_test": list(acc.values())})
    tables = {"statistics": stats, "results": results}
    if link is not None:
        tables["rewinding"] = link
    return tables


def saturating(total: int = 3000, tau: float = 150.0) -> np.ndarray:
    """A flipped fraction that rises fast, then slows: its rate per 100 steps halves near tau ln 2."""
    return 0.3 * (1 - np.exp(-np.arange(total + 1) / tau))


def paper_grad(total: int = 3000, peak: int = 5, minimum: int = 200) -> np.ndarray:
    steps = np.arange(total + 1, dtype=float)
    # a peak of 5 at ``peak``, then a bowl (at most +0.5) with its bottom at ``minimum``
    return 1.0 + 4.0 * np.exp(-((steps - peak) ** 2) / 8.0) + 0.5 * np.minimum(1.0, ((steps - minimum) / minimum) ** 2)


def test_early_stats_laptop_is_a_finding_with_its_numbers():
    link = pd.DataFrame({"experiment": "rewinding-x", "k": ["0it", "20it", "100it"], "k_steps": [0, 20, 100],
                         "level": 9, "density": 0.134, "mean": [0.93, 0.955, 0.96], "std": 0.002, "seeds": 3,
                         "threshold": 0.95, "matches": [False, True, True]})
    tables = early_tables(paper_grad(), saturating(), {0: 0.1, 20: 0.6, 100: 0.8, 3000: 0.97}, link)
    chk = EarlyStats().check(EarlyStatsConfig(), tables)
    assert chk.passed is None
    n = chk.numbers
    assert n["grad_norm_peak_step"] == 5
    # rate(t) = 0.3 e^{-t/150} (1 - e^{-100/150}) halves at t = 150 ln 2 = 104
    assert n["sign_flip_half_step"] == pytest.approx(150 * np.log(2), abs=1)
    assert n["kstar"] == "20it" and n["kstar_accuracy"] == pytest.approx(0.6)
    assert "level 9" in chk.statement and "[t, t + 100]" in chk.statement
    assert "k* = 20it" in chk.measured and set(chk.tables) == {"sign_flip_rate", "rewinding"}


def test_early_stats_laptop_says_when_kstar_is_missing_or_absent():
    empty = EarlyStats().check(EarlyStatsConfig(), early_tables(paper_grad(), saturating(), {0: 0.1, 3000: 0.9}))
    assert empty.passed is None and empty.numbers["kstar"] is None and "k*: missing" in empty.measured
    none = pd.DataFrame({"experiment": "rewinding-x", "k": ["0it"], "k_steps": [0], "level": 9, "density": 0.134,
                         "mean": [0.9], "std": 0.01, "seeds": 3, "threshold": 0.95, "matches": [False]})
    chk = EarlyStats().check(EarlyStatsConfig(), early_tables(paper_grad(), saturating(), {0: 0.1, 3000: 0.9}, none))
    assert chk.numbers["kstar"] is None and "k*: none" in chk.measured


PAPER_ACC = {0: 0.1, 400: 0.55, 2000: 0.80, 62500: 0.915}


def paper_check(grad: np.ndarray, acc: dict[int, float]):
    return EarlyStats().check(EarlyStatsConfig(claim="paper"), early_tables(grad, saturating(len(grad) - 1), acc))


def test_early_stats_paper_passes_on_the_papers_numbers():
    chk = paper_check(paper_grad(), PAPER_ACC)
    assert chk.passed is True, chk.measured
    assert chk.numbers["grad_norm_min_step"] == 200
    assert "at step 400 within [0.45, 0.65]" in chk.statement and "steps 100-400" in chk.statement


@pytest.mark.parametrize("grad,acc,why", [
    (paper_grad(), {**PAPER_ACC, 400: 0.30}, "accuracy"),  # too slow at 400
    (paper_grad(), {**PAPER_ACC, 62500: 0.85}, "accuracy"),  # final far from 91.5 %
    (paper_grad(peak=40), PAPER_ACC, "peak"),  # gradient norm largest at step 40
    (paper_grad(minimum=1000), PAPER_ACC, "minimum"),  # minimum near 1000, not 200
])
def test_early_stats_paper_fails(grad, acc, why):
    chk = paper_check(grad, acc)
    assert chk.passed is False and why in chk.meaning


# ------------------------------------------------------------------------------------------ perturbations

PERTURBATIONS = ("signs k, magnitudes 0", "signs k, magnitudes fresh", "signs 0, magnitudes k", "permute global",
                 "permute global, same sign", "permute layer", "permute layer, same sign", "permute filter",
                 "permute filter, same sign")


def perturbation_results(acc: dict[str, float], eff: dict[str, float], level: int = 9) -> pd.DataFrame:
    """Per-run rows at ``level``: every control at acc[control] (+- seed spread), its effective std."""
    rows = []
    for control, a in acc.items():
        for s, d in enumerate(SPREAD):
            rows.append({"control": control, "level": level, "seed": s, "density": 0.134, "test_accuracy": a + d,
                         "effective_std": eff.get(control, 0.0), "run_id": f"{control}-{s}"})
    return pd.DataFrame(rows)


def perturbation_check(**changes: float):
    acc = {"rewind to k=500it": 0.96, "rewind to k=0it": 0.93, **{p: 0.925 for p in PERTURBATIONS},
           "noise 0.5σ": 0.958, "noise 1σ": 0.955, "noise 2σ": 0.95, "noise 3σ": 0.94, **changes}
    eff = {"noise 0.5σ": 0.05, "noise 1σ": 0.1, "noise 2σ": 0.2, "noise 3σ": 0.3,
           **{p: 0.25 for p in PERTURBATIONS}, "signs k, magnitudes fresh": 0.12}
    cfg = PerturbationsConfig(levels=(3, 6, 9))
    return Perturbations().check(cfg, perturbation_tables(perturbation_results(acc, eff)))


def test_perturbations_pass_with_parts_a_and_b():
    chk = perturbation_check()
    assert chk.passed is True
    assert chk.numbers["a"]["pass"] and chk.numbers["b"]["pass"]
    c = chk.numbers["c"]["permute layer"]
    # noise interpolated at 0.25 between 2σ (0.95) and 3σ (0.94): 0.945; minus 0.925
    assert c["noise_minus_permutation"] == pytest.approx(0.02) and not c["out_of_range"]
    assert "level 9 (~13.4% density)" in chk.statement and "k = 500it" in chk.statement
    assert set(chk.tables) == {"per_seed", "equal_effective_std"}


def test_perturbations_fail_when_the_permutation_stays_above_k0():
    chk = perturbation_check(**{"permute layer": 0.945})  # below k by 0.015, but above k=0 + 2 pooled (0.934)
    assert chk.passed is False
    assert chk.numbers["a"]["below_k"] is True and chk.numbers["a"]["at_k0_level"] is False


def test_perturbations_fail_when_the_permutation_does_not_drop():
    chk = perturbation_check(**{"permute layer": 0.958})
    assert chk.passed is False and chk.numbers["a"]["below_k"] is False


def test_perturbations_fail_when_fresh_magnitudes_keep_the_accuracy():
    chk = perturbation_check(**{"signs k, magnitudes fresh": 0.959})
    assert chk.passed is False and chk.numbers["a"]["pass"] and not chk.numbers["b"]["pass"]


def test_perturbations_report_a_permutation_beyond_the_noise_grid():
    acc = {"rewind to k=500it": 0.96, "rewind to k=0it": 0.93, **{p: 0.925 for p in PERTURBATIONS},
           "noise 0.5σ": 0.958, "noise 1σ": 0.955}
    eff = {"noise 0.5σ": 0.05, "noise 1σ": 0.1, **{p: 0.25 for p in PERTURBATIONS}}
    cfg = PerturbationsConfig(levels=(9,), noise=(0.5, 1.0))
    chk = Perturbations().check(cfg, perturbation_tables(perturbation_results(acc, eff)))
    c = chk.numbers["c"]["permute layer"]
    assert c["out_of_range"] is True and np.isnan(c["noise_minus_permutation"])
    assert "out of the noise grid's range" in chk.measured


# ------------------------------------------------------------------------------------ rewinding robustness

def robustness_results(setting_acc: dict[str, tuple[float, float]]) -> pd.DataFrame:
    parts = []
    for setting, (k0, k) in setting_acc.items():
        r = rewinding_results({"0it": flat(k0), "500it": flat(k)})
        r.insert(0, "setting", setting)
        parts.append(r)
    return pd.concat(parts, ignore_index=True)


def test_robustness_says_where_the_effect_holds():
    cfg = RobustnessConfig(settings=("preset", "init_mode=fan_in"))
    results = robustness_results({"preset": (0.93, 0.96), "init_mode=fan_in": (0.965, 0.966)})
    summary = summarize(cfg, results)
    assert summary.holds.tolist() == [True, False]
    assert summary.margin.tolist() == pytest.approx([0.03, 0.001])
    chk = RewindingRobustness().check(cfg, {"results": results, "summary": summary})
    assert chk.passed is None and chk.numbers["preset"]["holds"] and not chk.numbers["init_mode=fan_in"]["holds"]
    assert "holds in: preset" in chk.meaning and "does not in: init_mode=fan_in" in chk.meaning
    assert "k = 500it" in chk.statement and "level 9" in chk.statement


def test_perturbations_say_when_fresh_magnitudes_do_not_train_at_all():
    chk = perturbation_check(**{"signs k, magnitudes fresh": 0.09})
    assert chk.passed is True and "a collapse rather than a worse fit" in chk.meaning
    assert "collapse" not in perturbation_check().meaning
