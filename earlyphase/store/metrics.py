"""Metrics in long format (step, name, layer, split, value) as Parquet files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import write_atomic

COLUMNS = ("step", "name", "layer", "split", "value")
SCHEMA = pa.schema([("step", pa.int64()), ("name", pa.string()), ("layer", pa.string()),
                    ("split", pa.string()), ("value", pa.float64())])

Row = tuple[int, str, str, str, float]


def write_metrics(path: Path, rows: list[Row]) -> None:
    cols = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    table = pa.Table.from_arrays([pa.array(list(c), type=SCHEMA.field(i).type) for i, c in enumerate(cols)],
                                 schema=SCHEMA)
    write_atomic(path, lambda tmp: pq.write_table(table, str(tmp)))


def read_metrics(directory: Path) -> pd.DataFrame:
    """All metric files of a run, as one DataFrame without duplicate observations."""
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(COLUMNS, ("int64", "object", "object", "object", "float64"))})
    df = pd.concat([pq.read_table(str(f), schema=SCHEMA).to_pandas() for f in files], ignore_index=True)
    df = df.drop_duplicates(subset=["step", "name", "layer", "split"], keep="first")
    return df.sort_values(["step", "name", "layer", "split"], kind="stable").reset_index(drop=True)


def read_rows(path: Path) -> list[Row]:
    if not path.is_file():
        return []
    t = pq.read_table(str(path), schema=SCHEMA).to_pydict()
    return list(zip(t["step"], t["name"], t["layer"], t["split"], t["value"]))
