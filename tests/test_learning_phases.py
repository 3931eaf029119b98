"""The learning_phases experiment (SPEC §4): the synthetic prototypes model shows all three phases,
a tiny run end to end, and bad input as one line with exit code 2."""
from __future__ import annotations

import json

import pytest
import torch

import earlyphase
from earlyphase.data import load_dataset
from earlyphase.probes.checkpoint_probes import ProbeData, probe_checkpoints
from earlyphase.probes.phases import detect_phases
from earlyphase.store import Store

# SPEC §4.5: a single-layer softmax network (mlp without hidden layers) on prototypes, reconstruction
# from its outputs; 30 % atypical samples (data/prototypes.py sets how atypical) and 500 training
# samples, so the network fits the atypical ones within 4096 steps and phase 3 shows.
PROTOTYPES = ['data.name="prototypes"', "data.n_train=500", "data.n_test=1000", "data.atypical=0.3",
              'model.name="mlp"', "model.widths=[]", "train.lr=0.2", "train.momentum=0.0",
              "train.weight_decay=0.0", "train.batch_size=100", 'train.steps="4096it"',
              'train.schedule="constant"', 'observe.schedule="pow2"', "observe.eval_train=false",
              "observe.progress=false"]

TINY = ["seeds=2", 'run.train.steps="64it"', "run.model.channels=[4, 8, 8, 8, 8]", "run.data.n_train=400",
        "run.data.n_test=200"]


def test_prototypes_single_layer_shows_three_phases(tmp_path):
    cfg = earlyphase.load_run_config(overrides=PROTOTYPES)
    run = earlyphase.train(cfg, store=Store(tmp_path / "store"))
    data = load_dataset(cfg.data)
    probe_data = ProbeData(data.x_train, data.x_test, {"source": (data.y_train, data.y_test, data.num_classes)})
    with_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = probe_checkpoints(run.model, run.checkpoint_steps(), ["fc"], probe_data)
    finally:
        torch.set_num_threads(with_threads)
    steps = [r["step"] for r in rows]
    assert steps[:3] == [0, 1, 2] and steps[-1] == 4096
    ph = detect_phases(steps, [r["reconstruction_mse"] for r in rows])
    assert ph.all_three, ph
    assert 0 < ph.minimum_step < 4096 and ph.drop > 0.1 and ph.rise > 0.02


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    return earlyphase.run("learning_phases", overrides=TINY, store=root / "store", progress=False)


def test_tiny_experiment_end_to_end(tiny):
    check = json.loads((tiny.path / "check.json").read_text())
    assert set(check) == {"experiment", "statement", "pass", "numbers", "wall_seconds", "measured", "meaning"}
    assert check["experiment"] == "learning_phases" and isinstance(check["pass"], bool)
    nums = check["numbers"]
    assert {"seeds_with_all_three_phases", "best_transfer_step_mean_curve", "best_source_step_mean_curve",
            "per_seed", "per_seed_transfer"} <= set(nums)
    assert set(nums["per_seed"]) == {"0", "1"}
    r = tiny.results
    assert set(r.layer) == {"blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "pool"}
    assert sorted(set(r.step)) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert r.reconstruction_mse.gt(0).all() and r.target_probe_accuracy.between(0, 1).all()
    assert r.classifier_accuracy.notna().all() and (r.target == "energy_half").all()
    assert len(tiny.tables["phases"]) == 2 * 6 and len(tiny.tables["transfer"]) == 2
    for name in ("reconstruction_phases", "transfer"):
        assert (tiny.path / f"{name}.png").is_file() and (tiny.path / f"{name}.svg").is_file()


def test_probes_are_cached_and_redraw_gives_the_same_check(tiny):
    again = earlyphase.experiments.redraw(tiny.path)
    assert again.check["numbers"] == tiny.check["numbers"]


@pytest.mark.parametrize("extra, words", [
    (['layers=["blocks.0", "nope"]'], ["'nope'", "blocks.0", "pool", "fc"]),
    (['run.observe.schedule="none"'], ["checkpoint schedule has no steps"]),
    (['target="labels"', 'target_data.name="digits"', "target_data.n_train=100"], ["does not label the source images"]),
])
def test_bad_input_is_one_line_exit_2(ep, tmp_path, extra, words):
    argv = ["run", "learning_phases", "--store", tmp_path / "s", "--quiet"]
    for o in TINY + extra:
        argv += ["--set", o]
    res = ep(*argv)
    assert res.code == 2
    line = res.err.strip()
    assert "\n" not in line and line.startswith("error:")
    for w in words:
        assert w in line
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())
