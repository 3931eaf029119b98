"""The demo: which experiments it runs, its time estimate before it starts, and index.html with each
experiment's main figure beside its verdict."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from earlyphase.demo import HEADLINE, demo_names, estimate, run_demo
from earlyphase.errors import UserError
from earlyphase.experiments import registry
from earlyphase.report import new_figure, save_figure
from earlyphase.store import Store


def test_headline_is_one_experiment_per_paper_plus_perturbations_and_all_is_everything():
    assert demo_names(False) == list(HEADLINE)
    assert demo_names(True) == list(registry())
    assert set(HEADLINE) < set(registry())
    assert demo_names(False, ["early_stats"]) == ["early_stats"]
    with pytest.raises(UserError, match="unknown experiment 'nope'.*known experiments"):
        demo_names(False, ["nope"])


def test_the_timeline_runs_last_in_the_headline_and_its_figure_comes_first_on_the_index(tmp_path, monkeypatch):
    assert HEADLINE[-1] == "timeline"
    store = Store(tmp_path / "s")
    calls: list[str] = []

    def fake_run(name, **kw):
        calls.append(name)
        return _FakeExperiment(store.root / "experiments" / name, name, None)

    monkeypatch.setattr("earlyphase.demo.estimate", lambda names, st, workers: (60.0, 1, 2))
    monkeypatch.setattr("earlyphase.experiments.run_experiment", fake_run)
    text = run_demo(["a", "timeline", "b"], store, workers=1, progress=False, log=io.StringIO()).read_text()
    assert calls == ["a", "timeline", "b"]
    cards = [text.index(f'src="experiments/{n}/main.png"') for n in ("timeline", "a", "b")]
    assert cards == sorted(cards)


def test_estimate_counts_shared_runs_once(tmp_path):
    store = Store(tmp_path / "s")
    seconds, pending, total = estimate(["rewinding", "perturbations"], store, workers=2)
    _, alone, _ = estimate(["rewinding"], store, workers=2)
    assert total == pending > alone > 0  # perturbations adds its own runs, not rewinding's again
    assert seconds > 0


class _FakeExperiment:
    def __init__(self, directory: Path, name: str, passed):
        directory.mkdir(parents=True)
        fig, ax = new_figure()
        ax.plot([0, 1], [0, 1])
        self.main_figure = [p for p in save_figure(fig, directory, "main") if p.suffix == ".png"][0]
        self.report_path = directory / "report.html"
        self.report_path.write_text("<html></html>")
        self.check = {"statement": f"{name} claim", "pass": passed, "measured": f"{name} measured",
                      "meaning": "", "wall_seconds": 1.0}


def test_run_demo_prints_the_estimate_first_and_the_index_shows_figures_beside_verdicts(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    calls: list[str] = []

    def fake_run(name, **kw):
        assert kw["retry_failed"] is True
        calls.append(name)
        return _FakeExperiment(store.root / "experiments" / name, name, {"a": True, "b": None}[name])

    monkeypatch.setattr("earlyphase.demo.estimate", lambda names, st, workers: (120.0, 3, 5))
    monkeypatch.setattr("earlyphase.experiments.run_experiment", fake_run)
    log = io.StringIO()
    seen = []
    index = run_demo(["a", "b"], store, workers=2, progress=False, log=log, on_result=lambda n, c: seen.append(n),
                     retry_failed=True)
    first = log.getvalue().splitlines()[0]
    assert "2 experiments" in first and "estimated training time 2 min" in first and "2 already stored" in first
    assert calls == ["a", "b"] == seen
    text = index.read_text()
    assert text.count('<div class="card">') == 2
    assert 'src="experiments/a/main.png"' in text and 'src="experiments/b/main.png"' in text
    assert "PASS" in text and "FINDING" in text and "a measured" in text
