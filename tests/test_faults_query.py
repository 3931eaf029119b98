"""`earlyphase query` is read-only: it sees the two views and nothing else (issue: the store and the
CLI under faults and hostile input, item 1). Each refused statement is one line, exit 2, and the
store is byte-for-byte as it was; large results stream."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from earlyphase.store import Store

TINY = ["--quiet", "--threads", "1", "--set", "train.steps=10it", "--set", "data.n_train=200",
        "--set", "data.n_test=100"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from earlyphase.cli import main

    root = tmp_path_factory.mktemp("qtemplate") / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARLYPHASE_HOME", str(tmp_path_factory.getbasetemp() / "home"))
        assert main(["train", "--store", str(root), *TINY]) == 0
    return root


@pytest.fixture
def store(template, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(template, dst)
    return dst


def _one_line(res, *needles: str) -> None:
    assert res.code == 2, (res.code, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.err, res.err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _hostile(store: Path, outside: Path) -> list[str]:
    rid = next(p.name for p in (store / "runs").iterdir())
    return [
        f"COPY (SELECT 'x' AS status) TO '{store}/runs/{rid}/status.json' (FORMAT csv)",  # into the store
        f"COPY (SELECT 1) TO '{outside}/evil.csv'",
        "CREATE TABLE t AS SELECT 1", "DROP VIEW metrics", f"ATTACH '{outside}/x.db' AS x", "INSTALL httpfs",
        "LOAD httpfs", "SET enable_external_access = true", "SELECT 1; SELECT 2", "PRAGMA version",
        "CALL pragma_version()", "EXPLAIN SELECT 1", "PIVOT metrics ON name",
        "SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM glob('/etc/*')",
        f"SELECT * FROM read_text('{store}/runs/{rid}/spec.json')",  # inside the store, but not a metric file
        f"SELECT * FROM glob('{store}/**')", f"SELECT * FROM read_csv('{outside}/secret.csv')",
        f"SELECT * FROM query('COPY (SELECT 1) TO ''{outside}/q.csv''')",
    ]


def test_every_hostile_statement_is_refused_in_one_line_and_changes_nothing(ep, store, tmp_path, snapshot):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n42\n")
    before, around = snapshot(store), snapshot(outside)
    for sql in _hostile(store, outside):
        res = ep("query", sql, "--store", store)
        _one_line(res)
        assert "42" not in res.out and "root:" not in res.out, sql
    assert snapshot(store) == before and snapshot(outside) == around
    # the store still works afterwards
    res = ep("query", "SELECT count(*) AS n FROM runs", "--store", store, "--format", "json")
    assert res.code == 0 and json.loads(res.out) == [{"n": 1}]


@pytest.mark.parametrize("sql,needle", [("CREATE TABLE t AS SELECT 1", "CREATE"), ("SELECT 1; SELECT 2", "exactly one"),
                                        (f"COPY (SELECT 1) TO 'x.csv'", "COPY")])
def test_refusals_name_the_reason(ep, store, sql, needle):
    _one_line(ep("query", sql, "--store", store), needle)


def test_the_two_views_and_selects_of_every_form_work(ep, store):
    for sql in ("SELECT count(*) AS n FROM metrics", "FROM runs SELECT run_id", "WITH a AS (SELECT 1 AS n) SELECT * FROM a",
                "DESCRIBE metrics", "SELECT name, max(value) FROM metrics GROUP BY name"):
        assert ep("query", sql, "--store", store).code == 0, sql


def test_a_damaged_run_is_left_out_with_a_warning_and_the_rest_answers(ep, store):
    from earlyphase.cli import main

    assert main(["train", "--store", str(store), *TINY, "--set", "seed=1"]) == 0
    runs = sorted((store / "runs").iterdir())
    bad = runs[0]
    part = next((bad / "metrics").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:40])  # truncated
    (runs[1] / "status.json").write_text("[1, 2]")  # valid JSON, not an object
    res = ep("query", "SELECT count(DISTINCT run_id) AS n FROM metrics", "--store", store, "--format", "json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == [{"n": 1}]
    assert "warning" in res.err and bad.name in res.err
    res = ep("query", "SELECT count(*) AS n FROM runs", "--store", store, "--format", "json")
    assert res.code == 0 and json.loads(res.out) == [{"n": 1}] and runs[1].name in res.err


def _query_max_rss(store: Path, sql: str) -> tuple[int, int]:
    """(lines printed, peak RSS in MiB) of `earlyphase query --format csv` in its own process."""
    proc = subprocess.Popen([sys.executable, "-m", "earlyphase.cli", "query", sql, "--store", str(store),
                             "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = 0
    for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
        lines += chunk.count(b"\n")
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return lines, usage.ru_maxrss // 1024


def test_ten_million_rows_stream_as_csv_in_bounded_memory(store):
    _, base = _query_max_rss(store, "SELECT 1 AS i")
    lines, peak = _query_max_rss(store, "SELECT range AS i, range * 0.5 AS x FROM range(10000000)")
    assert lines == 10_000_001
    assert peak - base < 100, (base, peak)  # the rows as Arrow are 160 MB, as CSV text ~190 MB


def test_a_reader_that_goes_away_ends_the_command_quietly(store):
    """`earlyphase query ... | head -1`: the reader closes the pipe after one line."""
    proc = subprocess.Popen([sys.executable, "-m", "earlyphase.cli", "query", "SELECT range AS i FROM range(3000000)",
                             "--store", str(store), "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"i\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err
