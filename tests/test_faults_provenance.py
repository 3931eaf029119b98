"""Provenance records the git commit (and whether tracked files differ from it) when the package
runs from a git checkout; nothing otherwise; never part of the run id."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from earlyphase.train.provenance import git_state


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode != 0, reason="needs git")
def test_git_commit_and_dirty_flag_of_a_checkout(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "f.py").write_text("x = 1\n")
    _git(tmp_path, "add", "f.py")
    _git(tmp_path, "commit", "-qm", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_state.__wrapped__(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "untracked.txt").write_text("not tracked: not dirty")
    assert git_state.__wrapped__(tmp_path)["git_dirty"] is False
    (tmp_path / "f.py").write_text("x = 2\n")
    assert git_state.__wrapped__(tmp_path) == {"git_commit": head, "git_dirty": True}


def test_no_git_state_outside_a_checkout(tmp_path):
    assert git_state.__wrapped__(tmp_path) == {}


def test_a_trained_run_records_the_checkout_it_ran_from(ep, tmp_path):
    from earlyphase.store import Store

    r = ep("train", "--quiet", "--store", tmp_path / "s", "--set", "train.steps=3it", "--set", "data.n_train=100",
           "--set", "data.n_test=50")
    assert r.code == 0, r.err
    (rd,) = Store(tmp_path / "s").runs()
    expected = git_state()
    assert {k: rd.provenance().get(k) for k in ("git_commit", "git_dirty")} == \
        {k: expected.get(k) for k in ("git_commit", "git_dirty")}
    if (Path(__file__).resolve().parents[1] / ".git").exists():  # the suite runs from a checkout
        assert len(rd.provenance()["git_commit"]) == 40
    assert "git" not in (rd.path / "spec.json").read_text()
