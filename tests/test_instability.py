"""Linear mode connectivity: interpolation and barrier, the experiment's reuse of the rewinding runs,
its check on constructed tables, bad input, and the paper preset's first steps."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import earlyphase
from earlyphase.experiments.instability import InstabilityConfig, judge, summarize
from earlyphase.probes import interpolation as I
from earlyphase.store import Store
from user_errors import assert_rejected

TINY_RUN = ['run.train.steps="60it"', 'run.train.milestones=["30it"]', 'run.data.n_train=300',
            'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']
REWINDING = ['levels=2', 'rewind=["0it", "20it"]', *TINY_RUN]
INSTABILITY = ['dense_k=["0it", "10it", "40it"]', 'rewind=["0it", "20it"]', 'extra_k=["40it"]', 'levels=[1, 2]',
               'imp_levels=2', 'points=5', *TINY_RUN]


# ----------------------------------------------------------------------------------------------
# interpolation


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_barrier_of_identical_end_points_is_zero():
    model = bn_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(100, 4), torch.randint(0, 3, (100,))
    errs = I.path_errors(model, state, state, I.alphas(11), x, y)
    assert len(errs) == 11 and len(set(errs)) == 1
    assert I.barrier(errs) == 0.0


def test_barrier_is_the_maximum_above_the_mean_of_the_ends():
    assert I.barrier([0.1, 0.3, 0.5, 0.2, 0.3]) == pytest.approx(0.5 - 0.2)
    assert I.barrier([0.4, 0.3, 0.2]) == pytest.approx(0.4 - 0.3)  # a monotone path: the higher end


def test_parameters_and_buffers_are_interpolated_integers_taken_from_the_first_end():
    a, b = bn_net().state_dict(), bn_net().state_dict()
    b = {k: (v + 2.0 if v.is_floating_point() else v + 5) for k, v in b.items()}
    mid = I.interpolate_state(a, b, 0.25)
    assert torch.allclose(mid["1.running_mean"], a["1.running_mean"] + 0.5)
    assert torch.allclose(mid["0.weight"], a["0.weight"] + 0.5)
    assert torch.equal(mid["1.num_batches_tracked"], a["1.num_batches_tracked"])
    assert torch.equal(I.interpolate_state(a, b, 1.0)["1.running_var"], b["1.running_var"])


def test_reestimated_batchnorm_statistics_replace_the_interpolated_ones():
    model = bn_net()
    x = torch.randn(400, 4) * 3 + 1
    y = torch.randint(0, 3, (400,))
    state = {k: v.clone() for k, v in model.state_dict().items()}  # running stats 0 / 1: wrong for x
    with torch.no_grad():
        h = model[0](x)
    I.path_errors(model, state, state, [0.5], x, y)
    assert torch.equal(model[1].running_mean, torch.zeros(8))  # interpolated: the ends' statistics
    I.path_errors(model, state, state, [0.5], x, y, reestimate=x)
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-4)
    assert torch.allclose(model[1].running_var, h.var(0), rtol=2e-2)
    assert not model.training  # evaluated in eval mode


# ----------------------------------------------------------------------------------------------
# the experiment on tiny data


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("instability")
    rew = earlyphase.run("rewinding", overrides=REWINDING, seeds=2, store=root / "store")
    status = {rid: (root / "store" / "runs" / rid / "status.json").read_bytes() for rid in rew.results.run_id}
    exp = earlyphase.run("instability", overrides=INSTABILITY, seeds=2, store=root / "store")
    return rew, exp, Store(root / "store"), status


def test_one_copy_of_each_subnetwork_is_the_stored_imp_run(stored):
    rew, exp, store, status = stored
    r = exp.results
    assert all((store.root / "runs" / rid / "status.json").read_bytes() == s for rid, s in status.items())
    imp = rew.results[rew.results.control == "imp"].set_index(["seed", "k", "level"]).run_id
    sparse = r[(r.level > 0) & r.k.isin(["0it", "20it"])]
    assert len(sparse) == 2 * 2 * 2
    for row in sparse.itertuples():
        assert row.run_a == imp[(row.seed, row.k, row.level)]
        a, b = (store.run(x).spec()["config"] for x in (row.run_a, row.run_b))
        assert b["data_seed"] == a["data_seed"] + 10000 and {**b, "data_seed": 0} == {**a, "data_seed": 0}
    dense0 = r[(r.level == 0) & (r.k_steps == 0)]
    dense_ids = set(rew.results[rew.results.control == "dense"].run_id)
    assert set(dense0.run_a) == dense_ids  # at k = 0 the dense copy is the dense run itself
    # the extra rewind point only at the sparsest level
    assert set(r[r.k == "40it"].level) == {0, 2}


def test_paths_barriers_and_report(stored):
    _, exp, store, _ = stored
    r, paths = exp.results, exp.tables["paths"]
    assert len(paths) == 5 * len(r) and set(np.round(paths.alpha, 3)) == {0.0, 0.25, 0.5, 0.75, 1.0}
    ends = paths[paths.alpha == 0.0].error.values
    assert np.allclose(np.sort(ends), np.sort(1 - r.accuracy_a.values), atol=1e-9)
    assert (r.barrier >= 0).all()
    check = json.loads((exp.path / "check.json").read_text())
    assert {"dense_barrier_first_k", "twice_pooled_std", "stable_k", "matching_k"} <= set(check["numbers"])
    assert check["measured"] and check["meaning"]
    assert (exp.path / "barrier_vs_k.png").is_file()
    cached = list((store.root / "runs" / r.run_b.iloc[0]).glob("interpolation-*.csv"))
    assert len(cached) == 1


def test_a_second_run_trains_nothing_and_reads_the_path_cache(stored, monkeypatch):
    _, exp, store, _ = stored
    from earlyphase.probes import interpolation

    def boom(*a, **k):
        raise AssertionError("path recomputed")

    monkeypatch.setattr(interpolation, "path_errors", boom)
    again = earlyphase.run("instability", overrides=INSTABILITY, seeds=2, store=store)
    pd.testing.assert_frame_equal(again.results, exp.results)


# ----------------------------------------------------------------------------------------------
# the check on constructed tables


def table(dense: dict, sparse: dict, level: int = 9, dense_acc=(0.970, 0.965, 0.968)) -> dict:
    """dense: k -> barriers per seed; sparse: k -> (barriers per seed, accuracies per seed)."""
    rows = []
    for k, bars in dense.items():
        for s, b in enumerate(bars):
            rows.append({"seed": s, "level": 0, "k": f"{k}it", "k_steps": k, "density": 1.0, "barrier": b,
                         "accuracy_a": dense_acc[s], "accuracy_b": dense_acc[s]})
    for k, (bars, accs) in sparse.items():
        for s, (b, a) in enumerate(zip(bars, accs)):
            rows.append({"seed": s, "level": level, "k": f"{k}it", "k_steps": k, "density": 0.134, "barrier": b,
                         "accuracy_a": a, "accuracy_b": a})
    results = pd.DataFrame(rows)
    return {"results": results, "summary": summarize(results)}


DENSE = {0: [0.50, 0.52, 0.48], 100: [0.01, 0.012, 0.008], 1000: [0.001, 0.002, 0.0015]}
CFG = InstabilityConfig(levels=(9,), dense_k=("0it", "100it", "1000it"))


def test_check_passes_when_dense_stabilizes_and_matching_follows_stability():
    sparse = {0: ([0.2, 0.22, 0.18], [0.90, 0.91, 0.90]), 20: ([0.05, 0.06, 0.04], [0.93, 0.94, 0.93]),
              50: ([0.01, 0.01, 0.012], [0.96, 0.96, 0.96]), 100: ([0.005, 0.004, 0.006], [0.967, 0.966, 0.968])}
    c = judge(CFG, table(DENSE, sparse))
    assert c.passed is True and c.numbers["stable_k"] == [50, 100] and c.numbers["matching_k"] == [100]
    assert "level 9" in c.statement and "2 points" in c.statement and "k = 1000" in c.statement
    assert c.measured and c.meaning.startswith("PASS") and set(c.tables) == {"dense_barriers", "sparsest_level"}


def test_check_fails_when_matching_and_stability_disagree_at_two_points():
    sparse = {0: ([0.2, 0.22, 0.18], [0.90, 0.91, 0.90]), 20: ([0.01, 0.01, 0.01], [0.93, 0.94, 0.93]),
              50: ([0.01, 0.01, 0.012], [0.96, 0.96, 0.96]), 100: ([0.005, 0.004, 0.006], [0.967, 0.966, 0.968])}
    c = judge(CFG, table(DENSE, sparse))
    assert c.passed is False and c.numbers["b_pass"] is False and c.numbers["a_pass"] is True


def test_check_fails_when_the_dense_barrier_does_not_fall():
    dense = {0: [0.01, 0.03, 0.02], 100: [0.01, 0.01, 0.01], 1000: [0.01, 0.02, 0.015]}
    sparse = {0: ([0.2, 0.22, 0.18], [0.90, 0.91, 0.90]), 100: ([0.005, 0.004, 0.006], [0.967, 0.966, 0.968])}
    c = judge(CFG, table(dense, sparse))
    assert c.passed is False and c.numbers["a_pass"] is False and c.numbers["b_pass"] is True


def test_check_gives_null_when_no_rewind_point_matches():
    sparse = {0: ([0.2, 0.22, 0.18], [0.90, 0.91, 0.90]), 100: ([0.005, 0.004, 0.006], [0.92, 0.93, 0.92])}
    c = judge(CFG, table(DENSE, sparse))
    assert c.passed is None and c.numbers["matching_k"] == [] and c.numbers["a_pass"] is True
    assert "cannot be judged" in c.meaning


# ----------------------------------------------------------------------------------------------
# bad input and the paper preset


@pytest.mark.parametrize("override,needle", [
    ('rewind=["0it", "5000it"]', "beyond the training length"),
    ('dense_k=["0it", "9000it"]', "beyond the training length"),
    ("levels=[3, 12]", "not a level of the rewinding experiment"),
    ("levels=[0]", "not a level of the rewinding experiment"),
    ('bn="maybe"', "bn must be"),
    ("points=2", "points must be"),
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path, capsys, snapshot, override, needle):
    assert_rejected("instability", override, needle, tmp_path / "s", capsys, snapshot)


def test_paper_preset_first_steps_on_cifar_shaped_data(tmp_path):
    from test_experiments import _write_fake_cifar

    _write_fake_cifar(tmp_path / "cifar")
    exp = earlyphase.run("instability", preset="paper", store=tmp_path / "s", seeds=1, overrides=[
        f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="2it"', 'run.train.milestones=["1it"]',
        'dense_k=["0it", "1it"]', 'rewind=["0it"]', 'extra_k=["1it"]', "levels=[1]", "imp_levels=1",
        "points=3", 'run.observe.eval_every=""', 'run.observe.device="cpu"'])
    cfg = exp.config
    assert cfg.run.model.name == "resnet_cifar_20" and cfg.bn == "reestimate"
    assert sorted(exp.results.k_steps[exp.results.level == 1]) == [0, 1]
    assert exp.check["pass"] is None  # one seed: the dense fall cannot be judged against seed noise
