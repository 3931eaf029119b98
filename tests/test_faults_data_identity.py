"""Data identity: a run of a file-backed dataset is identified by its files' content, so the same
config over changed files is another run (the old one is not served); generated data keep their ids."""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np

import earlyphase.fingerprint as fp
from earlyphase.config import RunConfig, load_run_config, run_id
from earlyphase.store import Store

FILES = {"train-images-idx3-ubyte": (3, 40), "train-labels-idx1-ubyte": (1, 40),
         "t10k-images-idx3-ubyte": (3, 20), "t10k-labels-idx1-ubyte": (1, 20)}


def write_mnist(root: Path, seed: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (ndim, n) in FILES.items():
        arr = rng.integers(0, 256, (n, 28, 28)) if ndim == 3 else rng.integers(0, 10, n)
        head = struct.pack(">HBB", 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
        (root / name).write_bytes(head + arr.astype(np.uint8).tobytes())


def _args(root: Path) -> list[str]:
    return ["train", "--quiet", "--preset", "laptop", *sum((["--set", o] for o in [
        "data.name='mnist'", f"data.root='{root}'", "model.name='mlp'", "model.widths=[16]", "train.batch_size=20",
        "train.steps=4it", "observe.eval_every=''", "data.n_train=40", "data.n_test=20"]), [])]


def test_changed_files_make_another_run_and_the_old_one_is_not_served(ep, tmp_path):
    root, store = tmp_path / "mnist", tmp_path / "s"
    write_mnist(root, 0)
    first = ep(*_args(root), "--store", store)
    assert first.code == 0, first.err
    write_mnist(root, 1)  # same names, same sizes, other content
    second = ep(*_args(root), "--store", store)
    assert second.code == 0, second.err
    id1, id2 = first.out.split()[1].rstrip(":"), second.out.split()[1].rstrip(":")
    assert id1 != id2
    assert sorted(p.name for p in (store / "runs").iterdir()) == sorted([id1, id2])
    s = Store(store)
    assert s.run(id1).spec()["config"]["data"]["content"] != s.run(id2).spec()["config"]["data"]["content"]
    write_mnist(root, 0)  # back to the first content: the first run is found, not trained again
    status = (store / "runs" / id1 / "status.json").read_bytes()
    third = ep(*_args(root), "--store", store)
    assert third.code == 0 and third.out.split()[1].rstrip(":") == id1
    assert (store / "runs" / id1 / "status.json").read_bytes() == status


def test_the_same_content_elsewhere_is_the_same_run(tmp_path):
    write_mnist(tmp_path / "a", 0)
    write_mnist(tmp_path / "b", 0)
    ids = {run_id(load_run_config(preset="laptop", overrides=["data.name='mnist'", f"data.root='{tmp_path / d}'"]))
           for d in "ab"}
    assert len(ids) == 1


def test_fingerprints_are_memoized_by_path_size_and_mtime(tmp_path, monkeypatch):
    write_mnist(tmp_path, 0)
    cfg = load_run_config(preset="laptop", overrides=["data.name='mnist'", f"data.root='{tmp_path}'"])
    first = run_id(cfg)
    calls = []
    monkeypatch.setattr(fp, "open", lambda *a, **k: calls.append(a[0]) or open(*a, **k), raising=False)
    assert run_id(cfg) == first
    assert calls == []  # no file was read again
    later = time.time() + 5
    os.utime(tmp_path / "train-labels-idx1-ubyte", (later, later))  # touched, same bytes: re-read, same id
    calls.clear()
    assert run_id(cfg) == first and [Path(c).name for c in calls] == ["train-labels-idx1-ubyte"]


def test_generated_data_keep_their_ids():
    assert run_id(RunConfig()) == "44136fa355b3678a"
    assert run_id(load_run_config(preset="laptop")) == "7f81c024637b00c2"
    assert run_id(load_run_config(preset="laptop", overrides=["data.root='/nonexistent'"])) == "7f81c024637b00c2"
    assert run_id(load_run_config(preset="paper")) == "9c84061f3d6a03fd"  # cifar10 without its files
