"""Damaged runs: a missing or truncated metric file of a done run, a status.json that is JSON but not
an object, a garbage observations.json. Each is one line naming the run, the file and the fix; the
rest of the store stays usable (ls, query, report); `earlyphase train`/`run` retrains the damaged run,
so the table in the end is right; `gc --yes` removes it on request."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from earlyphase.store import Store

SMALL = ["train.steps=20it", "data.n_train=200", "data.n_test=100", 'observe.eval_every="10it"']
SWEEP = ['levels=1', 'rewind=["0it"]', 'run.train.steps="20it"', 'run.train.milestones=[]', 'run.data.n_train=200',
         'run.data.n_test=100', 'run.train.batch_size=50', 'run.observe.eval_every=""']


def _train(ep, store: Path, seed: int):
    r = ep("train", "--quiet", "--store", store, "--set", f"seed={seed}", *sum((["--set", o] for o in SMALL), []))
    assert r.code == 0, r.err
    return r.out.split()[1].rstrip(":")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {
    "missing metrics": (lambda rd: (rd / "metrics" / "main.parquet").unlink(), "metrics/main.parquet is missing"),
    "truncated metrics": (lambda rd: _truncate(rd / "metrics" / "main.parquet"), "metrics/main.parquet is unreadable"),
    "status not an object": (lambda rd: (rd / "status.json").write_text("[1, 2]"), "status.json is not a JSON object"),
    "garbage observations": (lambda rd: (rd / "observations.json").write_text("\x00garbage{"),
                             "observations.json is unreadable"),
    "observations of the wrong shape": (lambda rd: (rd / "observations.json").write_text('{"evals": 5}'),
                                        "observations.json is malformed"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_run_is_one_line_the_store_stays_usable_and_train_retrains_it(ep, tmp_path, kind):
    store = tmp_path / "s"
    bad, good = _train(ep, store, 1), _train(ep, store, 2)
    before = json.loads((store / "runs" / bad / "status.json").read_text())
    damage, needle = DAMAGE[kind]
    damage(store / "runs" / bad)
    r = ep("ls", "--store", store)
    assert r.code == 0 and good in r.out and bad in r.out and "damaged" in r.out
    assert [line for line in r.err.splitlines() if bad in line] == [r.err.strip()]  # one line, naming it
    assert needle in r.err and "retrains it" in r.err and "Traceback" not in r.err
    r = ep("query", "--store", store, "--format", "csv", "SELECT DISTINCT run_id FROM metrics ORDER BY run_id")
    assert r.code == 0 and good in r.out
    r = ep("show", "--store", store, bad)
    assert r.code in (0, 2) and "Traceback" not in r.err
    _train(ep, store, 1)  # the same command retrains it
    rd = Store(store).run(bad)
    assert rd.damage() is None and rd.status()["status"] == "done" and rd.status()["time"] > before["time"]
    assert len(rd.metrics()[rd.metrics().name == "accuracy"]) > 0


def test_gc_removes_a_damaged_run_on_request_and_keeps_the_rest(ep, tmp_path):
    store = tmp_path / "s"
    bad, good = _train(ep, store, 1), _train(ep, store, 2)
    (store / "runs" / bad / "status.json").write_text('"done"')
    r = ep("gc", "--store", store)
    assert r.code == 0 and f"would remove {bad} (damaged)" in r.out and good not in r.out
    assert ep("gc", "--yes", "--store", store).code == 0
    assert not (store / "runs" / bad).exists() and (store / "runs" / good).exists()


def test_an_experiment_with_a_damaged_run_reports_one_line_then_run_retrains_it(ep, tmp_path):
    store = tmp_path / "s"
    args = ["run", "rewinding", "--quiet", "--store", store, "--seeds", "1", *sum((["--set", o] for o in SWEEP), [])]
    r = ep(*args)
    assert r.code == 0, r.err
    exp_dir = Path(r.out.strip().splitlines()[-1])
    table = (exp_dir / "results.csv").read_text()
    victim = json.loads((exp_dir / "runs.json").read_text())[-1]
    _truncate(store / "runs" / victim / "metrics" / "main.parquet")
    r = ep("report", exp_dir)
    assert r.code == 2 and victim in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    r = ep(*args)
    assert r.code == 0, r.err
    assert Store(store).run(victim).damage() is None
    assert (exp_dir / "results.csv").read_text() == table
