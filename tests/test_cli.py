"""The ``earlyphase`` command: every bad input ends in one line on stderr naming the problem and the fix,
exit code 2, no traceback, and a store left exactly as it was; the good paths (train, ls, show, query,
gc, --help, --print-config) work.

Runs are tiny (mnist1d, 400/200 samples, 20 steps, one thread): one is trained per module into a
template store, and each test works on its own copy of that store."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from earlyphase.cli import main
from earlyphase.errors import UserError

TINY = ["--quiet", "--threads", "1", "--set", "train.steps=20it", "--set", "data.n_train=400",
        "--set", "data.n_test=200"]
FINAL = 20  # the last (and only) checkpoint step of a TINY run
SUBCOMMANDS = ["train", "ls", "show", "query", "gc"]


@dataclass
class Template:
    root: Path
    run_id: str
    out: str
    err: str


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Template:
    """A store holding one finished TINY cnn1d run, trained once through the CLI."""
    root = tmp_path_factory.mktemp("template") / "store"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARLYPHASE_HOME", str(tmp_path_factory.getbasetemp() / "home"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["train", "--store", str(root), *TINY])
    assert code == 0, err.getvalue()
    m = re.match(r"run ([0-9a-f]{16}): ", out.getvalue())
    assert m, out.getvalue()
    return Template(root, m.group(1), out.getvalue(), err.getvalue())


@pytest.fixture
def store(template, tmp_path) -> Path:
    """This test's own copy of the template store."""
    dst = tmp_path / "store"
    shutil.copytree(template.root, dst)
    return dst


@pytest.fixture
def rid(template) -> str:
    return template.run_id


def assert_one_line_error(res, *needles: str) -> str:
    """Exit code 2, no traceback, stderr exactly one non-empty line starting with 'error:'."""
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err and "Traceback" not in res.out
    lines = res.err.rstrip("\n").splitlines()
    assert len(lines) == 1, res.err
    line = lines[0]
    assert line.startswith("error:") and line[len("error:"):].strip(), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def train(ep, store: Path, *extra: str):
    return ep("train", "--store", store, *TINY, *extra)


def write_status(store: Path, run_id: str, status: str, **extra) -> None:
    p = store / "runs" / run_id / "status.json"
    p.write_text(json.dumps({"status": status, "time": 0.0, **extra}, indent=2) + "\n")


# ------------------------------------------------------------------------------------ bad configs

BAD_OVERRIDES = [
    pytest.param(["data.name=nope"], ["unknown dataset 'nope'", "mnist1d"], id="unknown-dataset"),
    pytest.param(["model.name=nope"], ["model.name: unknown model 'nope'", "cnn1d"], id="unknown-model"),
    pytest.param(['model.init_mode="xavier"'], ["model.init_mode must be 'fan_in' or 'fan_out'"], id="init-mode"),
    pytest.param(["train.lrr=1"], ["unknown config key 'train.lrr'", "lr"], id="unknown-key"),
    pytest.param(["nosuchtable.x=1"], ["unknown config key 'nosuchtable'"], id="unknown-table"),
    pytest.param(['train.lr="abc"'], ["train.lr", "float", "abc"], id="lr-string"),
    pytest.param(["train.lr=abc"], ["train.lr", "float", "abc"], id="lr-bare-word"),
    pytest.param(["train.batch_size=1.5"], ["train.batch_size", "int", "1.5"], id="batch-float"),
    pytest.param(["train.lr=0"], ["train.lr must be > 0"], id="lr-zero"),
    pytest.param(["train.lr=-0.1"], ["train.lr must be > 0"], id="lr-negative"),
    pytest.param(["train.batch_size=0"], ["train.batch_size must be >= 1"], id="batch-zero"),
    pytest.param(["data.label_noise=1.5"], ["data.label_noise must be in [0, 1]"], id="label-noise"),
    pytest.param(["train.steps=12xy"], ["malformed step '12xy'", "500it"], id="malformed-step"),
    pytest.param(["train.steps=0it"], ["no training at all"], id="zero-steps"),
    pytest.param(["train.lr"], ["not of the form key=value"], id="override-without-value"),
    pytest.param(["data.name=cifar10", "data.root={tmp}/missing"], ["does not exist", "data.root"],
                 id="cifar10-missing-dir"),
    pytest.param(["data.name=cifar10", "data.root={tmp}/empty"], ["does not hold the CIFAR-10 batches"],
                 id="cifar10-wrong-layout"),
    pytest.param(["data.name=mnist", "data.root={tmp}/empty"], ["does not hold the mnist files"],
                 id="mnist-wrong-layout"),
    pytest.param(["data.name=cifar10"], ["needs data.root"], id="cifar10-no-root"),
]


@pytest.mark.parametrize("overrides,needles", BAD_OVERRIDES)
def test_bad_override(ep, store, snapshot, tmp_path, overrides, needles):
    (tmp_path / "empty").mkdir()
    before = snapshot(store)
    args = [x for o in overrides for x in ("--set", o.format(tmp=tmp_path))]
    res = train(ep, store, *args)
    assert_one_line_error(res, *needles)
    assert res.out == ""
    assert snapshot(store) == before


def test_unknown_preset(ep, store, snapshot):
    before = snapshot(store)
    assert_one_line_error(train(ep, store, "--preset", "nope"), "unknown preset 'nope'", "laptop")
    assert snapshot(store) == before


@pytest.mark.parametrize("content,needles", [
    pytest.param("[train]\nlrr = 1\n", ["unknown config key 'train.lrr'"], id="unknown-key"),
    pytest.param("[train]\nbatch_size = 1.5\n", ["train.batch_size", "int"], id="wrong-type"),
    pytest.param("[train]\nlr = \n", ["is not valid TOML"], id="invalid-toml"),
    pytest.param("[train\nlr = 0.1\n", ["is not valid TOML"], id="invalid-toml-table"),
    pytest.param(b"\xff\xfe\x00garbage", ["is not valid TOML"], id="binary-file"),
    pytest.param(None, ["does not exist", "--config"], id="missing-file"),
])
def test_bad_config_file(ep, store, snapshot, tmp_path, content, needles):
    path = tmp_path / "run.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    before = snapshot(store)
    res = train(ep, store, "--config", path)
    line = assert_one_line_error(res, *needles)
    if "TOML" in needles[0] or content is None:  # file-level problems name the file
        assert str(path) in line
    assert snapshot(store) == before


def test_good_config_file_is_used(ep, store, tmp_path):
    """Control for the cases above: a valid file with the same keys loads."""
    path = tmp_path / "run.toml"
    path.write_text("[train]\nlr = 0.05\nbatch_size = 50\n")
    res = ep("train", "--preset", "laptop", "--config", path, "--print-config")
    assert res.code == 0, res.err
    cfg = tomllib.loads(res.out)
    assert cfg["train"]["lr"] == 0.05 and cfg["train"]["batch_size"] == 50 and cfg["model"]["name"] == "cnn1d"


# ------------------------------------------------------------------------------------ bad data files

def _idx(dims: tuple[int, ...], fill: int = 0) -> bytes:
    n = 1
    for d in dims:
        n *= d
    header = b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}i", *dims)
    return header + bytes([fill % 256]) * n


def _write_mnist(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "train-images-idx3-ubyte").write_bytes(_idx((20, 28, 28), 7))
    (root / "train-labels-idx1-ubyte").write_bytes(_idx((20,), 3))
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx((10, 28, 28), 7))
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx((10,), 3))


def test_mnist_files_load_when_intact(tmp_path):
    """Control for the truncated-file case: the hand-written IDX files are valid."""
    from earlyphase.config import DataConfig
    from earlyphase.data import load_dataset

    _write_mnist(tmp_path / "mnist")
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path / "mnist")))
    assert ds.n_train == 20 and ds.input_shape == (1, 28, 28)


@pytest.mark.parametrize("name,cut", [("train-images-idx3-ubyte", 100), ("t10k-labels-idx1-ubyte", 2)])
def test_truncated_idx_file(ep, store, snapshot, tmp_path, name, cut):
    root = tmp_path / "mnist"
    _write_mnist(root)
    f = root / name
    f.write_bytes(f.read_bytes()[:-cut])
    before, data_before = snapshot(store), snapshot(root)
    res = train(ep, store, "--set", "data.name=mnist", "--set", f"data.root={root}", "--set", "model.name=mlp",
                "--set", "data.n_train=20", "--set", "data.n_test=10")
    assert_one_line_error(res, str(f), "truncated")
    assert snapshot(store) == before and snapshot(root) == data_before


# ------------------------------------------------------------------------------------ checkpoints

def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage-header":
        path.write_bytes(b"\xff" * 64 + raw[64:])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # pragma: no cover
        raise ValueError(how)


CORRUPTIONS = ["truncated", "garbage-header", "empty"]


def test_start_run_from_good_checkpoint(ep, store, rid):
    """Control for the corrupt-checkpoint cases: starting from the intact checkpoint works."""
    res = train(ep, store, "--set", f"start_run={rid}", "--set", f"start_step={FINAL}it")
    assert res.code == 0, res.err
    child = re.match(r"run ([0-9a-f]{16}): ", res.out).group(1)
    assert child != rid and (store / "runs" / child / "status.json").is_file()


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_checkpoint_via_start_run(ep, store, rid, snapshot, how):
    ckpt = store / "runs" / rid / "checkpoints" / f"{FINAL}.safetensors"
    _corrupt(ckpt, how)
    before = snapshot(store)
    res = train(ep, store, "--set", f"start_run={rid}", "--set", f"start_step={FINAL}it")
    assert_one_line_error(res, str(ckpt), "corrupt")
    assert snapshot(store) == before  # no child run directory, the corrupt file is not replaced


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_checkpoint_via_python_api(store, rid, snapshot, how):
    from earlyphase.stored_run import Run
    from earlyphase.store import Store

    ckpt = store / "runs" / rid / "checkpoints" / f"{FINAL}.safetensors"
    _corrupt(ckpt, how)
    before = snapshot(store)
    with pytest.raises(UserError) as info:
        Run(Store(store).run(rid)).state_dict(FINAL)
    msg = str(info.value)
    assert "\n" not in msg and str(ckpt) in msg and "corrupt" in msg
    assert snapshot(store) == before


def test_checkpoint_of_another_model(ep, store, rid, snapshot):
    before = snapshot(store)
    res = train(ep, store, "--set", "model.name=mlp", "--set", f"start_run={rid}", "--set", f"start_step={FINAL}it")
    assert_one_line_error(res, "belongs to another model", rid)
    assert snapshot(store) == before


def test_start_run_missing_step_and_missing_run(ep, store, rid, snapshot):
    before = snapshot(store)
    assert_one_line_error(train(ep, store, "--set", f"start_run={rid}", "--set", "start_step=10it"),
                          "has no checkpoint at step 10")
    assert_one_line_error(train(ep, store, "--set", "start_run=0000000000000000", "--set", "start_step=10it"),
                          "0000000000000000")
    assert snapshot(store) == before


def _kill_state(store: Path, run_id: str, resume_bytes: bytes | None = None) -> Path:
    """Simulate a run killed mid-training: status running (its lock released), a resume checkpoint."""
    resume = store / "runs" / run_id / "checkpoints" / "resume.safetensors"
    if resume_bytes is None:
        from safetensors.torch import save_file
        import torch

        save_file({"model.nope": torch.zeros(3)}, str(resume), metadata={"step": "10", "run_id": run_id})
    else:
        resume.write_bytes(resume_bytes)
    write_status(store, run_id, "running", pid=999999)
    return resume


RESUMES = [pytest.param(b"\x00garbage, not a safetensors file" * 8, "corrupt", id="garbage"),
           pytest.param(None, "another model", id="other-model")]


@pytest.mark.parametrize("content,needle", RESUMES)
def test_bad_resume_checkpoint(ep, store, rid, snapshot, content, needle):
    """Refused with one line; the resume checkpoint and every other data file stay as they were."""
    resume = _kill_state(store, rid, content)
    before = snapshot(store)
    res = train(ep, store)
    assert_one_line_error(res, str(resume), needle)
    after = snapshot(store)
    assert after[f"runs/{rid}/checkpoints/resume.safetensors"] == before[f"runs/{rid}/checkpoints/resume.safetensors"]
    assert sorted(after) == sorted(before)  # nothing created or removed
    changed = sorted(k for k in before if after[k] != before[k])
    assert set(changed) <= {f"runs/{rid}/status.json"}, changed  # strict version below


@pytest.mark.parametrize("content,needle", RESUMES)
def test_bad_resume_checkpoint_leaves_status(ep, store, rid, snapshot, content, needle):
    _kill_state(store, rid, content)
    before = snapshot(store)
    assert train(ep, store).code == 2
    assert snapshot(store) == before


# ------------------------------------------------------------------------------------ bad store

@pytest.mark.parametrize("argv,needle", [
    pytest.param(["train", *TINY], "cannot be written", id="train"),
    pytest.param(["ls"], "no store at", id="ls"),  # reading commands neither create nor write a store
    pytest.param(["show", "abc"], "no store at", id="show"),
    pytest.param(["query", "SELECT 1"], "no store at", id="query"),
    pytest.param(["gc"], "cannot be written", id="gc"),
])
def test_store_that_cannot_be_written(ep, tmp_path, snapshot, argv, needle):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a directory\n")
    bad = blocker / "store"
    before = snapshot(tmp_path)
    res = ep(*argv, "--store", bad)
    assert_one_line_error(res, str(bad), needle, "--store")
    assert snapshot(tmp_path) == before


def test_damaged_run_directory(ep, store, rid, snapshot):
    """Reading commands name the damaged file in one line and change nothing; `ls` lists the rest
    (tests/test_faults_damaged.py); training the same config retrains the damaged run."""
    (store / "runs" / rid / "status.json").write_text("{not json")
    before = snapshot(store)
    assert_one_line_error(ep("show", rid, "--store", store), "status.json", "removes it")
    res = ep("ls", "--store", store)
    assert res.code == 0 and "damaged" in res.out and res.err.count("\n") == 1 and "status.json" in res.err
    assert snapshot(store) == before
    assert ep("train", *TINY, "--store", store).code == 0
    assert json.loads((store / "runs" / rid / "status.json").read_text())["status"] == "done"


# ------------------------------------------------------------------------------------ argparse

@pytest.mark.parametrize("argv,needles", [
    pytest.param([], ["required"], id="no-subcommand"),
    pytest.param(["frobnicate"], ["invalid choice: 'frobnicate'", "--help"], id="unknown-subcommand"),
    pytest.param(["train", "--bogus"], ["unrecognized arguments: --bogus", "--help"], id="train-unknown-flag"),
    pytest.param(["ls", "--bogus"], ["unrecognized arguments: --bogus"], id="ls-unknown-flag"),
    pytest.param(["gc", "--force"], ["unrecognized arguments: --force"], id="gc-unknown-flag"),
    pytest.param(["query"], ["required: sql"], id="query-missing-sql"),
    pytest.param(["query", "SELECT 1", "--format", "xml"], ["invalid choice: 'xml'"], id="query-bad-format"),
    pytest.param(["train", "--threads", "two"], ["invalid int value: 'two'"], id="threads-not-int"),
    pytest.param(["show"], ["required: run"], id="show-missing-run"),
])
def test_argparse_errors(ep, store, snapshot, argv, needles):
    before = snapshot(store)
    res = ep(*argv)
    assert_one_line_error(res, *needles)
    assert res.out == ""
    assert snapshot(store) == before


# ------------------------------------------------------------------------------------ subprocess

@dataclass
class Proc:
    code: int
    out: str
    err: str


def run_cli(cwd: Path, *argv) -> Proc:
    p = subprocess.run([sys.executable, "-m", "earlyphase.cli", *map(str, argv)], cwd=cwd,
                       capture_output=True, text=True, timeout=60)
    return Proc(p.returncode, p.stdout, p.stderr)


def test_subprocess_bad_config_one_line(store, tmp_path, snapshot):
    before = snapshot(store)
    res = run_cli(tmp_path, "train", "--store", store, *TINY, "--set", "data.name=nope")
    assert_one_line_error(res, "unknown dataset 'nope'")
    assert snapshot(store) == before
    assert not (tmp_path / "earlyphase-store").exists()


def test_subprocess_unknown_flag_one_line(tmp_path):
    res = run_cli(tmp_path, "train", "--bogus")
    assert_one_line_error(res, "unrecognized arguments: --bogus")
    assert list(tmp_path.iterdir()) == []


def test_subprocess_corrupt_checkpoint_one_line(store, rid, tmp_path, snapshot):
    ckpt = store / "runs" / rid / "checkpoints" / f"{FINAL}.safetensors"
    _corrupt(ckpt, "truncated")
    before = snapshot(store)
    res = run_cli(tmp_path, "train", "--store", store, *TINY, "--set", f"start_run={rid}",
                  "--set", f"start_step={FINAL}it")
    assert_one_line_error(res, str(ckpt), "corrupt")
    assert snapshot(store) == before


# ------------------------------------------------------------------------------------ good paths

def test_train_creates_run(template):
    rid, root = template.run_id, template.root
    lines = template.out.splitlines()
    assert re.fullmatch(rf"run {rid}: test accuracy (0|1)\.\d{{4}} after 20it \(\d+\.\d s\)", lines[0]), lines
    run = root / "runs" / rid
    assert lines[1] == str(run)
    assert "Traceback" not in template.err
    spec = json.loads((run / "spec.json").read_text())
    assert spec["run_id"] == rid and spec["config"]["train"]["lr"] == 0.1
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["device"] == "cpu" and "torch" in prov
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == [f"{FINAL}.safetensors"]  # and no leftover resume checkpoint
    metrics = list((run / "metrics").glob("*.parquet"))
    assert metrics and all(p.stat().st_size > 0 for p in metrics)
    assert not (run / "metrics" / "partial.parquet").exists()
    assert [p.name for p in (root / "runs").iterdir()] == [rid]
    assert not list(root.glob(".write-test-*"))


def test_train_again_does_not_retrain(ep, store, rid, snapshot):
    ckpt = store / "runs" / rid / "checkpoints" / f"{FINAL}.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    before = snapshot(store)
    t0 = time.perf_counter()
    res = train(ep, store)
    elapsed = time.perf_counter() - t0
    assert res.code == 0, res.err
    assert res.out.startswith(f"run {rid}: test accuracy ")
    assert ckpt.stat().st_mtime_ns == mtime
    assert snapshot(store) == before
    assert elapsed < 3.0, elapsed


def test_ls(ep, store, rid):
    res = ep("ls", "--store", store)
    assert res.code == 0, res.err
    row = next(line for line in res.out.splitlines() if rid in line)
    assert "done" in row.split() and "mnist1d" in row and "cnn1d" in row


def test_ls_empty_store(ep, tmp_path):
    (tmp_path / "fresh").mkdir()
    res = ep("ls", "--store", tmp_path / "fresh")
    assert res.code == 0, res.err
    assert "run" in res.out


def test_ls_marks_stale_running_run(ep, store, rid):
    write_status(store, rid, "running", pid=999999)
    res = ep("ls", "--store", store)
    assert res.code == 0, res.err
    assert "stale" in res.out


def test_show_prefix(ep, store, rid):
    res = ep("show", rid[:6], "--store", store)
    assert res.code == 0, res.err
    assert res.out.startswith(f"run {rid} at ")
    assert '"status": "done"' in res.out
    assert "config:" in res.out and '"lr": 0.1' in res.out and '"name": "cnn1d"' in res.out
    assert f"checkpoints (1): {FINAL}" in res.out
    assert f"metrics at step {FINAL}:" in res.out


def test_show_unknown_and_ambiguous_prefix(ep, store, rid, snapshot):
    shutil.copytree(store / "runs" / rid, store / "runs" / (rid[:4] + "f" * 12))
    before = snapshot(store)
    absent = next(c for c in "0123456789abcdef" if c != rid[0])
    assert_one_line_error(ep("show", absent * 4, "--store", store), "no run", "earlyphase ls")
    assert_one_line_error(ep("show", rid[:4], "--store", store), "2 runs", "earlyphase ls")
    assert snapshot(store) == before


def test_query_metrics_count(ep, store):
    res = ep("query", "SELECT count(*) AS n FROM metrics WHERE name='accuracy'", "--store", store, "--format", "json")
    assert res.code == 0, res.err
    rows = json.loads(res.out)
    assert rows[0]["n"] > 0


def test_query_runs(ep, store, rid):
    res = ep("query", "SELECT run_id, status FROM runs", "--store", store)
    assert res.code == 0, res.err
    assert any(line.split() == [rid, "done"] for line in res.out.splitlines()), res.out
    res = ep("query", "SELECT run_id, status FROM runs", "--store", store, "--format", "csv")
    assert res.out.splitlines() == ["run_id,status", f"{rid},done"]


def test_query_empty_store(ep, tmp_path):
    (tmp_path / "fresh").mkdir()
    res = ep("query", "SELECT count(*) AS n FROM metrics", "--store", tmp_path / "fresh", "--format", "json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == [{"n": 0}]


@pytest.mark.parametrize("sql,needles", [
    pytest.param("SELECT nope FROM metrics", ["query failed", "metrics(run_id"], id="unknown-column"),
    pytest.param("SELEKT 1", ["query failed"], id="syntax"),
    pytest.param("SELECT * FROM nosuchtable", ["query failed", "runs(run_id"], id="unknown-table"),
])
def test_query_sql_error(ep, store, snapshot, sql, needles):
    before = snapshot(store)
    assert_one_line_error(ep("query", sql, "--store", store), *needles)
    assert snapshot(store) == before


def test_gc(ep, store, rid, snapshot):
    failed = "f" * 16
    shutil.copytree(store / "runs" / rid, store / "runs" / failed)
    write_status(store, failed, "failed", error="bad input")
    done_before = snapshot(store / "runs" / rid)
    before = snapshot(store)

    res = ep("gc", "--store", store)  # dry run: lists, removes nothing
    assert res.code == 0, res.err
    assert f"would remove {failed} (failed)" in res.out and rid not in res.out
    assert snapshot(store) == before

    res = ep("gc", "--yes", "--store", store)
    assert res.code == 0, res.err
    assert f"removing {failed} (failed)" in res.out and rid not in res.out
    assert not (store / "runs" / failed).exists()
    assert snapshot(store / "runs" / rid) == done_before

    res = ep("gc", "--yes", "--store", store)
    assert res.code == 0 and "nothing to remove" in res.out
    assert snapshot(store / "runs" / rid) == done_before


def test_gc_unreferenced_only_with_flag(ep, store, rid):
    res = ep("gc", "--unreferenced", "--store", store)
    assert res.code == 0 and f"would remove {rid} (done)" in res.out
    assert (store / "runs" / rid / "spec.json").is_file()
    exp = store / "experiments" / "e-1"
    exp.mkdir(parents=True)
    (exp / "runs.json").write_text(json.dumps([rid]))
    res = ep("gc", "--unreferenced", "--yes", "--store", store)
    assert res.code == 0 and "nothing to remove" in res.out
    assert (store / "runs" / rid / "spec.json").is_file()


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help(capsys, sub):
    argv = ["--help"] if sub is None else [sub, "--help"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("usage: earlyphase" + ("" if sub is None else f" {sub}"))
    assert cap.err == ""


def test_print_config(ep, tmp_path):
    res = ep("train", "--print-config", "--store", tmp_path / "never")
    assert res.code == 0, res.err
    assert "lr = 0.1" in res.out.splitlines()
    cfg = tomllib.loads(res.out)
    assert cfg["train"]["lr"] == 0.1 and cfg["data"]["name"] == "mnist1d" and cfg["train"]["steps"] == "3000it"
    assert not (tmp_path / "never").exists()


def test_print_config_applies_overrides(ep):
    res = ep("train", *TINY, "--print-config")
    assert res.code == 0, res.err
    cfg = tomllib.loads(res.out)
    assert cfg["train"]["steps"] == "20it" and cfg["data"]["n_train"] == 400 and cfg["observe"]["threads"] == 1
