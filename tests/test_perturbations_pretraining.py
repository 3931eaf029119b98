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
