"""The experiment framework on the rewinding experiment: plan, execute, store reuse, kill and resume,
report and check, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import earlyphase
from earlyphase.cli import main
from earlyphase.config import from_dict, RunConfig
from earlyphase.experiments.runner import get_experiment, load_experiment_config
from earlyphase.models import build_model, prunable_names
from earlyphase.store import Store
from earlyphase.store.checkpoints import split_prefix

TINY = ['levels=3', 'rewind=["0it", "20it"]', 'run.train.steps="100it"', 'run.train.milestones=["50it"]',
        'run.data.n_train=400', 'run.data.n_test=200', 'run.train.batch_size=50', 'run.observe.eval_every=""']


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EARLYPHASE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    os.environ.setdefault("EARLYPHASE_HOME", str(root / "home"))
    exp = earlyphase.run("rewinding", overrides=TINY, seeds=2, store=root / "store")
    return exp, Store(root / "store")


def test_results_table_and_densities(sweep):
    exp, _ = sweep
    r = exp.results
    assert set(r.columns) >= {"k", "level", "density", "seed", "test_accuracy", "control", "run_id"}
    # 2 seeds x (dense + 2 k x 3 levels + 2 controls x 3 levels at the largest k)
    assert len(r) == 2 * (1 + 6 + 6)
    imp = r[r.control == "imp"]
    for level, group in imp.groupby("level"):
        assert np.allclose(group.density, round(0.8 ** level * 6304) / 6304)
    assert (r[r.control == "random_pruning"].density.values == r[(r.control == "imp") & (r.k == "20it")].density.values).all()
    assert exp.tables["matching"].k.tolist() == ["0it", "20it"]
    assert exp.report_path.is_file() and (exp.path / "accuracy_vs_density.png").is_file()
    check = json.loads((exp.path / "check.json").read_text())
    assert set(check) == {"experiment", "statement", "pass", "numbers", "wall_seconds", "measured", "meaning"}
    assert check["experiment"] == "rewinding" and isinstance(check["pass"], bool)
    assert "smallest_matching_density" in check["numbers"]


def test_pruned_weights_are_exactly_zero_in_saved_checkpoints(sweep):
    exp, store = sweep
    for row in exp.results[exp.results.control != "dense"].itertuples():
        rd = store.run(row.run_id)
        final = split_prefix(rd.load(max(rd.checkpoint_steps()))[0], "model.")
        cfg = from_dict(RunConfig, rd.spec()["config"])
        names = prunable_names(build_model(cfg.model, (1, 40), 10), cfg.model.prune_output)
        zeros = sum(int((final[n] == 0).sum()) for n in names)
        total = sum(final[n].numel() for n in names)
        assert zeros == total - round(row.density * total), row


def test_imp_restarts_from_the_dense_weights_at_k(sweep):
    exp, store = sweep
    r = exp.results
    row = r[(r.control == "imp") & (r.k == "20it") & (r.level == 1) & (r.seed == 0)].iloc[0]
    cfg = from_dict(RunConfig, store.run(row.run_id).spec()["config"])
    dense = r[(r.control == "dense") & (r.seed == 0)].iloc[0]
    assert cfg.start_run == dense.run_id and cfg.start_step == "20it" and cfg.data_seed == 0
    m = store.run(row.run_id).metrics()
    assert m.step.min() == 20  # the level trains from k, not from 0


def test_a_second_run_trains_nothing(sweep, tmp_path):
    exp, store = sweep
    stamps = {rid: (store.root / "runs" / rid / "status.json").read_bytes() for rid in exp.results.run_id}
    again = earlyphase.run("rewinding", overrides=TINY, seeds=2, store=store)
    assert again.results.equals(exp.results)
    assert stamps == {rid: (store.root / "runs" / rid / "status.json").read_bytes() for rid in exp.results.run_id}


def test_report_redraws_from_the_store(sweep, capsys):
    exp, store = sweep
    (exp.path / "report.html").unlink()
    assert main(["report", str(exp.path)]) == 0
    assert exp.report_path.is_file()
    assert "PASS" in exp.report_path.read_text() or "FAIL" in exp.report_path.read_text()


def test_dry_run_counts_and_trains_nothing(sweep, capsys):
    exp, store = sweep
    args = ["run", "rewinding", "--dry-run", "--store", str(store.root), "--seeds", "3", *sum((["--set", o] for o in TINY), [])]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "39 runs, 26 already stored, 13 to train" in err
    assert len(list((store.root / "runs").iterdir())) == 26


def _sweep_cmd(store):
    return [sys.executable, "-m", "earlyphase.cli", "run", "rewinding", "--store", str(store), "--quiet",
            "--seeds", "1", *sum((["--set", o] for o in TINY), [])]


def test_a_killed_sweep_completes_without_training_a_finished_run_twice(tmp_path):
    env = {**os.environ, "EARLYPHASE_HOME": str(tmp_path / "home")}
    ref = subprocess.run(_sweep_cmd(tmp_path / "ref"), env=env, capture_output=True, text=True, check=True)
    proc = subprocess.Popen(_sweep_cmd(tmp_path / "kill"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = tmp_path / "kill" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in runs.glob("*/status.json") if b'"done"' in p.read_bytes()] if runs.is_dir() else []
        if len(done) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.read_bytes() for p in runs.glob("*/status.json") if b'"done"' in p.read_bytes()}
    assert 3 <= len(finished) < 7
    out = subprocess.run(_sweep_cmd(tmp_path / "kill"), env=env, capture_output=True, text=True, check=True)
    for rid, status in finished.items():  # not trained again
        assert (runs / rid / "status.json").read_bytes() == status
    ref_dir, kill_dir = ref.stdout.strip().splitlines()[-1], out.stdout.strip().splitlines()[-1]
    a = (open(f"{ref_dir}/results.csv").read())
    b = (open(f"{kill_dir}/results.csv").read())
    assert a == b


@pytest.mark.parametrize("override,needle", [
    ('rewind=["0it", "5000it"]', "beyond the training length"),
    ("levels=-1", "levels must be >= 0"),
    ("fraction=1.5", "pruning fraction"),
    ("fraction=0", "pruning fraction"),
    ("nope=1", "unknown config key 'nope'"),
    ('rewind=["12xy"]', "malformed step"),
])
def test_bad_experiment_input(tmp_path, capsys, override, needle):
    code = main(["run", "rewinding", "--store", str(tmp_path / "s"), "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())


@pytest.mark.parametrize("args,needle", [(["run", "nope"], "unknown experiment"),
                                         (["run", "rewinding", "--executor", "nope"], "unknown executor")])
def test_unknown_experiment_or_executor(tmp_path, capsys, args, needle):
    assert main([*args, "--store", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err


def _write_fake_cifar(root):
    import pickle

    g = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": g.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(g.integers(0, 10, 20))}
        batch[b"labels"] = [int(v) for v in batch[b"labels"]]
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_paper_preset_first_steps_on_cifar_shaped_data(tmp_path):
    _write_fake_cifar(tmp_path / "cifar")
    exp = earlyphase.run("rewinding", preset="paper", store=tmp_path / "s", overrides=[
        f'run.data.root="{tmp_path / "cifar"}"', 'run.train.steps="6it"', 'run.train.milestones=["3it"]',
        'rewind=["0it", "2it"]', "levels=1", 'run.observe.eval_every=""', "run.observe.device=\"cpu\"",
        'check_min_k="2it"'], seeds=1)
    cfg = exp.config.run
    assert cfg.model.name == "resnet_cifar_20" and cfg.model.prune_output and cfg.data.augment
    assert cfg.train.batch_size == 128
    assert len(exp.results) == 1 + 2 + 2
    imp = exp.results[exp.results.control == "imp"]
    assert np.allclose(imp.density, 0.8, atol=1e-3)


def test_experiment_config_resolution():
    exp = get_experiment("rewinding")
    cfg = load_experiment_config(exp, preset="laptop", overrides=["run.train.lr=0.05"], seeds=5)
    assert cfg.seeds == 5 and cfg.run.train.lr == 0.05 and cfg.run.model.name == "cnn1d"
    assert cfg.rewind == ("0it", "20it", "100it", "500it") and cfg.levels == 9
    paper = load_experiment_config(exp, preset="paper")
    assert paper.run.data.name == "cifar10" and "2000it" in paper.rewind


def test_early_stats_experiment_records_every_step(tmp_path):
    exp = earlyphase.run("early_stats", store=tmp_path / "s", overrides=[
        'run.train.steps="60it"', 'run.train.milestones=["30it"]', 'run.data.n_train=400', 'run.data.n_test=200',
        'run.train.batch_size=50', 'dense_until="20it"', 'every="10it"'])
    numbers = exp.check["numbers"]
    assert numbers["values_per_statistic"] == {"grad_norm": 60, "weight_magnitude": 61, "sign_change": 61,
                                               "dist_init": 61, "cos_init": 61}
    final = exp.tables["to_final"]
    glob = final[final.layer == ""].sort_values("step")
    assert glob.cos_final.iloc[-1] == pytest.approx(1.0) and glob.dist_final.iloc[-1] == pytest.approx(0.0)
    assert (exp.path / "early_phase_statistics.png").is_file()
    assert sorted(exp.results.step)[:21] == list(range(21))  # evaluated at every step to 20


def test_export_an_experiment_to_tensorboard_one_directory_per_run(sweep, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp, store = sweep
    assert main(["export", str(exp.path), "--tensorboard", str(tmp_path / "tb")]) == 0
    dirs = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert len(dirs) == len(exp.results)
    imp = exp.results[(exp.results.control == "imp") & (exp.results.level == 3)].iloc[0]
    name = f"imp_k={imp.k}_level=3_seed={imp.seed}-{imp.run_id}"
    assert name in dirs
    ea = EventAccumulator(str(tmp_path / "tb" / name))
    ea.Reload()
    assert ea.Scalars("test/accuracy")[-1].value == pytest.approx(imp.test_accuracy, abs=1e-6)


def test_experiment_and_run_show_themselves_in_a_notebook(sweep):
    exp, store = sweep
    html = exp._repr_html_()
    verdict = {True: "PASS", False: "FAIL"}[exp.check["pass"]]
    assert verdict in html and "data:image/png;base64," in html and "dense_mean" in html
    run = earlyphase.Run(store.run(exp.results.run_id.iloc[0]))
    html = run._repr_html_()
    assert run.id in html and "<svg" in html and f"{run.final_accuracy:.4g}" in html
