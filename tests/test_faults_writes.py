"""Files and writers: atomic files get the mode a plain open would give them (a store shared by a
group stays readable), and temporaries a killed writer left behind are cleaned by the next writer."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from earlyphase.store.atomic import remove_stale_temporaries, umask, write_json_atomic


@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_atomic_files_follow_the_umask_not_mkstemps_0600(tmp_path, group_umask):
    assert umask() == 0o002
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664


def test_a_trained_run_is_group_readable_under_a_group_umask(tmp_path, group_umask):
    from earlyphase.cli import main

    store = tmp_path / "store"
    assert main(["train", "--quiet", "--store", str(store), "--set", "train.steps=3it", "--set", "data.n_train=100",
                 "--set", "data.n_test=50"]) == 0
    files = [p for p in store.rglob("*") if p.is_file() and p.name != ".lock"]
    assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o040 for p in files), \
        [(p.name, oct(p.stat().st_mode)) for p in files if not stat.S_IMODE(p.stat().st_mode) & 0o040]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".figure.png.abc123.tmp").write_bytes(b"half a figure")
    (tmp_path / "figure.png").write_bytes(b"whole")
    (tmp_path / "notes.tmp").write_text("not ours: no leading dot")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "notes.tmp"]
