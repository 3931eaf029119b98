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


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from earlyphase.cli import main

    store = tmp_path_factory.mktemp("ro") / "store"
    assert main(["train", "--quiet", "--store", str(store), "--set", "train.steps=3it", "--set", "data.n_train=100",
                 "--set", "data.n_test=50"]) == 0
    (store / "runs" / next((store / "runs").iterdir()).name / ".lock").unlink()  # as if copied from elsewhere
    return store


def test_reading_commands_never_write(ep, trained, snapshot):
    rid = next((trained / "runs").iterdir()).name
    before = snapshot(trained)
    for argv in (["ls"], ["show", rid[:6]], ["query", "SELECT count(*) FROM metrics"]):
        res = ep(*argv, "--store", trained)
        assert res.code == 0, (argv, res.err)
    assert snapshot(trained) == before  # not even a lock file or a directory


def test_a_mistyped_store_is_an_error_and_is_not_created(ep, tmp_path):
    for argv in (["ls"], ["show", "abc"], ["query", "SELECT 1"]):
        res = ep(*argv, "--store", tmp_path / "typo")
        assert res.code == 2 and "no store at" in res.err and res.err.count("\n") == 1, res.err
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("prefix", ["d5be*", "../x", "..", "a/b", "ZZ", "0" * 17, ""])
def test_show_takes_only_a_hex_prefix(ep, trained, prefix):
    res = ep("show", prefix, "--store", trained)
    assert res.code == 2 and "hex digits" in res.err and res.err.count("\n") == 1 and "Traceback" not in res.err
