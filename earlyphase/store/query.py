"""SQL across all runs with DuckDB: views ``metrics(run_id, step, name, layer, split, value)`` and
``runs(run_id, kind, status, created, spec)``."""
from __future__ import annotations

import json

import duckdb
import pandas as pd
import pyarrow as pa

from ..errors import UserError
from .runs import Store


def runs_frame(store: Store) -> pd.DataFrame:
    rows = []
    for rd in store.runs():
        spec = rd.spec()
        status = rd.status()
        created = (rd.path / "spec.json").stat().st_mtime
        rows.append({"run_id": rd.id, "kind": spec.get("kind", "train"), "status": status.get("status"),
                     "created": pd.Timestamp(created, unit="s"), "spec": json.dumps(spec, sort_keys=True)})
    return pd.DataFrame(rows, columns=["run_id", "kind", "status", "created", "spec"])


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("runs_df", pa.Table.from_pandas(runs_frame(store), preserve_index=False))  # Arrow: any pandas dtype
    con.execute("CREATE VIEW runs AS SELECT * FROM runs_df")
    pattern = str(store.root / "runs" / "*" / "metrics" / "*.parquet").replace("'", "''")
    if any(store.root.glob("runs/*/metrics/*.parquet")):
        con.execute(f"""CREATE VIEW metrics AS SELECT
            regexp_extract(filename, '[/\\\\]runs[/\\\\]([^/\\\\]+)[/\\\\]metrics', 1) AS run_id,
            step, name, layer, split, value
            FROM read_parquet('{pattern}', filename = true)""")
    else:
        con.execute("CREATE VIEW metrics AS SELECT ''::VARCHAR AS run_id, 0::BIGINT AS step, ''::VARCHAR AS name,"
                    " ''::VARCHAR AS layer, ''::VARCHAR AS split, 0.0::DOUBLE AS value WHERE false")
    return con


def query(store: Store, sql: str) -> pd.DataFrame:
    con = connect(store)
    try:
        return con.execute(sql).df()
    except duckdb.Error as e:
        raise UserError(f"query failed: {str(e).splitlines()[0]}; the views are "
                        "metrics(run_id, step, name, layer, split, value) and runs(run_id, kind, status, created, spec)") from None
