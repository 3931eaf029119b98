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
    assert {"drop", "twice_pooled_std", "noise_gap"} <= set(check["numbers"])
    assert (exp.path / "perturbations.png").is_file()


def test_pretraining_reuses_masks_and_reports_findings(stored):
    rew, store, status = stored
    before = len(list((store.root / "runs").iterdir()))
    exp = earlyphase.run("pretraining", overrides=['k="20it"', "levels=[3]", 'durations=["10it"]',
                                                   'tasks=["rotation", "random_labels", "sparse_imp"]', *TINY_RUN],
                         seeds=2, store=store)
    assert _untouched(store, status)
    after = len(list((store.root / "runs").iterdir()))
    # per seed: 2 dense pre-trainings + 1 sparse pre-training, each followed by one run under the level-3 mask
    assert after - before == 2 * 6
    f = exp.tables["findings"]
    assert set(f.task) == {"rotation", "random_labels", "sparse_imp"} and (f.level == 3).all()
    assert f.verdict.str.contains("rewinding|below").all()
    check = json.loads((exp.path / "check.json").read_text())
    assert check["pass"] is None and len(check["numbers"]) == 3
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
