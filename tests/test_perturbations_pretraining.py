"""The perturbation and pre-training experiments reuse the rewinding experiment's stored runs."""
import json
import os

import pytest

import earlyphase
from earlyphase.store import Store

TINY_RUN = ['run.train.steps="100it"', 'run.train.milestones=["50it"]', 'run.data.n_train=400',
            'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']
REWINDING = ['levels=3', 'rewind=["0it", "20it"]', *TINY_RUN]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    os.environ.setdefault("EARLYPHASE_HOME", str(root / "home"))
    exp = earlyphase.run("rewinding", overrides=REWINDING, seeds=2, store=root / "store")
    store = Store(root / "store")
    status = {rid: (store.root / "runs" / rid / "status.json").read_bytes() for rid in exp.results.run_id}
    return exp, store, status


def _untouched(store, status):
    return all((store.root / "runs" / rid / "status.json").read_bytes() == s for rid, s in status.items())


def test_perturbations_reuse_the_rewinding_runs(stored):
    rew, store, status = stored
    before = len(list((store.root / "runs").iterdir()))
    exp = earlyphase.run("perturbations", overrides=['k="20it"', "levels=[3]", "noise=[0.5]", *TINY_RUN], seeds=2,
                         store=store)
    assert _untouched(store, status)
    after = len(list((store.root / "runs").iterdir()))
    assert after - before == 2 * 10  # only the perturbed runs trained: 10 perturbations x 1 level x 2 seeds
    r = exp.results
    perturbed = r[r.kind == "perturbed"]
    assert set(perturbed.control) >= {"permute layer", "permute filter, same sign", "noise 0.5σ", "signs k, magnitudes 0"}
    assert (perturbed.effective_std > 0).all()
    # the IMP references are the rewinding experiment's own runs
    assert set(r[r.kind == "imp"].run_id) <= set(rew.results.run_id)
    check = json.loads((exp.path / "check.json").read_text())
    assert check["experiment"] == "perturbations" and isinstance(check["pass"], bool)
    assert check["pass"] == (check["numbers"]["a"]["pass"] and check["numbers"]["b"]["pass"])
    assert set(check["numbers"]["c"]) == {"permute global", "permute global, same sign", "permute layer",
                                          "permute layer, same sign", "permute filter", "permute filter, same sign"}
    assert (exp.path / "accuracy_vs_effective_std.png").is_file() and (exp.path / "check-per_seed.csv").is_file()


def test_pretraining_reuses_masks_and_reports_findings(stored):
    rew, store, status = stored
    before = len(list((store.root / "runs").iterdir()))
    exp = earlyphase.run("pretraining", overrides=['k="20it"', "levels=[3]", 'durations=["10it"]',
                                                   'tasks=["rotation", "random_labels", "sparse_imp", '
                                                   '"sparse_random", "sparse_imp_labelled"]', *TINY_RUN],
                         seeds=2, store=store)
    assert _untouched(store, status)
    after = len(list((store.root / "runs").iterdir()))
    # per seed: 2 dense pre-trainings + 3 sparse ones, each followed by one run under the level-3 mask
    assert after - before == 2 * 10
    f = exp.tables["findings"]
    assert set(f.task) == {"rotation", "random_labels", "sparse_imp_rotation", "sparse_random_rotation",
                           "sparse_imp_labelled"} and (f.level == 3).all()
    assert f.verdict.str.contains("rewinding|below").all()
    check = json.loads((exp.path / "check.json").read_text())
    assert check["pass"] is None and len(check["numbers"]) == 5
    pre = {rd.spec()["config"]["data"].get("task", "classify"): rd for rd in store.runs()
           if rd.spec()["config"].get("mask") and rd.spec()["config"].get("restart_schedule")
           and rd.spec()["config"]["start_step"] == "0it"}
    assert set(pre) == {"rotation", "classify"}  # the self-supervised and the labelled sparse pre-training
    rot = pre["rotation"].spec()["config"]
    assert rot["start_reinit_head"] is True  # four classes: the head is redrawn
    assert 'masks = "rewinding"' in exp.report_path.read_text().replace("&quot;", '"')


def test_paper_presets_resolve_to_resnet20_on_cifar10():
    from earlyphase.experiments.runner import get_experiment, load_experiment_config

    for name in ("perturbations", "pretraining"):
        cfg = load_experiment_config(get_experiment(name), preset="paper")
        assert cfg.run.model.name == "resnet_cifar_20" and cfg.run.data.name == "cifar10"
        assert cfg.k == "500it" and tuple(cfg.levels) == (3, 6, 9)
    assert load_experiment_config(get_experiment("pretraining"), preset="paper").masks == "imp"


def test_paper_pretraining_first_steps_with_quarter_turns(tmp_path):
    from test_experiments import _write_fake_cifar

    _write_fake_cifar(tmp_path / "cifar")
    exp = earlyphase.run("pretraining", preset="paper", store=tmp_path / "s", seeds=1, overrides=[
        f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="4it"', 'run.train.milestones=["2it"]',
        'k="2it"', "levels=[1]", 'durations=["2it"]', 'tasks=["rotation"]', 'run.observe.eval_every=""',
        'run.observe.device="cpu"'])
    r = exp.results
    assert set(r.control) == {"rotation", "rewind to k=0it", "rewind to k=2it"}
    ours = r[r.control == "rotation"]
    assert sorted(ours.level) == [0, 1]  # a new IMP from the pre-trained state (masks = "imp")
    store = Store(tmp_path / "s")
    pre = [rd for rd in store.runs() if rd.spec()["config"]["data"]["task"] == "rotation"]
    assert len(pre) == 1 and pre[0].metrics().step.max() == 2


def test_an_unknown_pretraining_task_is_one_line_exit_2_and_stores_nothing(tmp_path, ep, snapshot):
    before = snapshot(tmp_path)
    r = ep("run", "pretraining", "--store", tmp_path / "s", "--set", 'tasks=["rotation", "jigsaw"]')
    assert r.code == 2 and "unknown pre-training task 'jigsaw'" in r.err and len(r.err.strip().splitlines()) == 1
    r = ep("run", "pretraining", "--store", tmp_path / "s", "--set", 'sparse_task="colour"')
    assert r.code == 2 and "sparse_task must be one of rotation, blur_rotation" in r.err
    assert snapshot(tmp_path) == before


def test_sparse_rotation_keeps_a_prunable_head_dense_during_pretraining(tmp_path):
    """With the output layer pruned (the paper preset), rotation's 4-class head cannot carry the real
    head's mask: it stays dense while pre-training, and the real task runs under the full IMP mask."""
    exp = earlyphase.run("pretraining", store=tmp_path / "s", seeds=1, overrides=[
        'k="20it"', "levels=[1]", 'durations=["10it"]', 'tasks=["sparse_random"]', "run.model.prune_output=true",
        *TINY_RUN])
    store = Store(tmp_path / "s")
    runs = {rd.spec()["config"]["data"].get("task", "classify"): rd for rd in store.runs()
            if (rd.spec()["config"].get("mask") or {}).get("kind") == "random"}
    dens = {t: rd.metrics().query("name == 'density'").set_index("layer").value for t, rd in runs.items()}
    assert dens["rotation"]["fc.weight"] == 1.0 and dens["classify"]["fc.weight"] < 1.0
    body = [n for n in dens["classify"].index if n.startswith("body")]
    assert (dens["rotation"][body] == dens["classify"][body]).all()  # the same random mask on the body
    assert exp.tables["findings"].task.tolist() == ["sparse_random_rotation"]


def test_early_stats_finds_kstar_in_the_stored_rewinding_experiment(stored):
    rew, store, _ = stored
    exp = earlyphase.run("early_stats", store=store, overrides=[*TINY_RUN, "kstar_level=3"])
    link = exp.tables["rewinding"]
    assert link.experiment.iloc[0] == rew.path.name and link.k.tolist() == ["0it", "20it"]
    n = exp.check["numbers"]
    assert exp.check["pass"] is None and n["kstar_source"] == rew.path.name
    matched = link[link.matches]
    if len(matched):
        k = matched.iloc[0]
        acc = exp.results.set_index("step").accuracy_test[int(k.k_steps)]
        assert n["kstar"] == k.k and n["kstar_accuracy"] == acc
    else:
        assert n["kstar"] is None and "k*: none" in exp.check["measured"]


def test_paper_early_stats_judges_the_papers_sentences_on_its_own_run(tmp_path):
    from test_experiments import _write_fake_cifar

    _write_fake_cifar(tmp_path / "cifar")
    exp = earlyphase.run("early_stats", preset="paper", store=tmp_path / "s", overrides=[
        f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="6it"', 'run.train.milestones=["3it"]',
        'run.observe.device="cpu"', 'run.observe.eval_every=""', 'dense_until="6it"', 'acc_steps=["4it"]',
        "acc_low=[0.0]", "acc_high=[1.0]", "final_low=0.99", "final_high=1.0", 'grad_min_range=["1it", "6it"]'])
    check = exp.check
    # random 20-sample "CIFAR" cannot reach 99 %: the run departs from the paper's final accuracy
    assert check["pass"] is False and "accuracy" in check["meaning"]
    assert "at step 4 within [0, 1]" in check["statement"] and "at the end within [0.99, 1]" in check["statement"]
    assert set(check["numbers"]["accuracy"]) == {"4", "6"}  # JSON keys: the steps judged
