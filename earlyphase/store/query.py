"""SQL across all runs with DuckDB, read-only: the views ``metrics(run_id, step, name, layer, split,
value)`` and ``runs(run_id, kind, status, created, spec)`` and nothing else.

A query is exactly one statement of the SELECT kind (classified by DuckDB's own parser before it
runs). The views are made first; then the connection is locked: external access only to the store's
metric files (``allowed_paths``), no extension autoloading, configuration frozen. So a query can
neither write (no COPY, CREATE, ATTACH, INSTALL: refused by kind, and COPY into the store's own
directory too, which an allowed-directories rule alone would let through) nor read any other file.
A damaged run (unreadable spec, status or metric file) is left out with a warning naming it, so one
bad run does not take the whole store's queries down. Results stream as Arrow record batches.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from .runs import Store

VIEWS = "the views are metrics(run_id, step, name, layer, split, value) and runs(run_id, kind, status, created, spec)"
Warn = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def runs_frame(store: Store, warn: Warn = _quiet) -> pd.DataFrame:
    rows = []
    for rd in store.runs():
        try:
            spec, status = rd.spec(), rd.status()
            if not isinstance(spec, dict) or not isinstance(status, dict):
                raise UserError(f"{rd.path} holds a spec or status that is not a JSON object")
        except UserError as e:
            warn(f"left out damaged run {rd.id}: {e}")
            continue
        created = (rd.path / "spec.json").stat().st_mtime
        rows.append({"run_id": rd.id, "kind": spec.get("kind", "train"), "status": status.get("status"),
                     "created": pd.Timestamp(created, unit="s"), "spec": json.dumps(spec, sort_keys=True)})
    return pd.DataFrame(rows, columns=["run_id", "kind", "status", "created", "spec"])


def metric_files(store: Store, warn: Warn = _quiet) -> list[Path]:
    """Every readable metric file of the store (a file whose Parquet footer does not read is left out)."""
    good = []
    for path in sorted(store.root.glob("runs/*/metrics/*.parquet")):
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as e:
            warn(f"left out damaged metric file {path} ({str(e).splitlines()[0][:80]}); "
                 "`earlyphase run` retrains its run, `earlyphase gc` lists it")
            continue
        good.append(path)
    return good


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def connect(store: Store, warn: Warn = _quiet) -> duckdb.DuckDBPyConnection:
    """A connection that sees the two views and nothing else, locked before it is returned."""
    con = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    con.register("runs_df", pa.Table.from_pandas(runs_frame(store, warn), preserve_index=False))  # Arrow: any pandas dtype
    con.execute("CREATE TEMP TABLE runs_table AS SELECT * FROM runs_df")
    con.unregister("runs_df")
    con.execute("CREATE TEMP VIEW runs AS SELECT * FROM runs_table")
    files = metric_files(store, warn)
    if files:
        con.execute(f"""CREATE TEMP VIEW metrics AS SELECT
            regexp_extract(filename, '[/\\\\]runs[/\\\\]([^/\\\\]+)[/\\\\]metrics', 1) AS run_id,
            step, name, layer, split, value
            FROM read_parquet({_sql_list(files)}, filename = true)""")
    else:
        con.execute("CREATE TEMP VIEW metrics AS SELECT ''::VARCHAR AS run_id, 0::BIGINT AS step, ''::VARCHAR AS name,"
                    " ''::VARCHAR AS layer, ''::VARCHAR AS split, 0.0::DOUBLE AS value WHERE false")
    con.execute(f"SET temp_directory = '{tempfile.gettempdir()}/earlyphase-duckdb'")
    con.execute(f"SET allowed_paths = {_sql_list(files)}")
    con.execute("SET allowed_directories = []")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_select(sql: str) -> None:
    """Exactly one statement, of the SELECT kind (DuckDB's parser says which); else a UserError."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise UserError(f"query failed: {str(e).splitlines()[0]}; {VIEWS}") from None
    if len(statements) != 1:
        raise UserError(f"query must be exactly one statement, got {len(statements)}; write one SELECT")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise UserError(f"query is read-only: a {kind.name} statement is refused; write one SELECT over the "
                        "views metrics(run_id, step, name, layer, split, value) and runs(...)")


@contextlib.contextmanager
def result(store: Store, sql: str, *, rows_per_batch: int = 65536,
           warn: Warn = _quiet) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
    """The result of one read-only SELECT: its schema and a stream of Arrow record batches (never all
    in memory); an SQL error, at planning or while streaming, is a UserError."""
    check_select(sql)
    con = connect(store, warn)
    try:
        try:
            reader = con.sql(sql).to_arrow_reader(rows_per_batch)
        except duckdb.Error as e:
            raise UserError(f"query failed: {str(e).splitlines()[0]}; {VIEWS}") from None
        yield reader.schema, _guarded(reader)
    finally:
        con.close()


def _guarded(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (duckdb.Error, pa.ArrowException) as e:
        raise UserError(f"query failed: {str(e).splitlines()[0]}") from None


def query(store: Store, sql: str, warn: Warn = _quiet) -> pd.DataFrame:
    """The whole result as a DataFrame (for the Python API and small results)."""
    check_select(sql)
    con = connect(store, warn)
    try:
        return con.execute(sql).df()
    except duckdb.Error as e:
        raise UserError(f"query failed: {str(e).splitlines()[0]}; {VIEWS}") from None
    finally:
        con.close()
