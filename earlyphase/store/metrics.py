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


class MetricFileError(Exception):
    """A metric file that does not read (missing footer, truncated, another schema)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(str(path), schema=SCHEMA)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise MetricFileError(path, str(e).splitlines()[0][:80]) from None


def check_metric_file(path: Path, rd) -> None:
    """The file's Parquet footer reads and its schema is the metrics' (cheap: no data pages)."""
    try:
        schema = pq.read_schema(str(path))
    except (OSError, pa.ArrowException, ValueError) as e:
        raise rd.damaged(f"metrics/{path.name}", f"unreadable ({str(e).splitlines()[0][:80]})") from None
    if not schema.remove_metadata().equals(SCHEMA):
        raise rd.damaged(f"metrics/{path.name}", "not a metrics table (other columns)")


def read_metrics(directory: Path) -> pd.DataFrame:
    """All metric files of a run, as one DataFrame without duplicate observations."""
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(COLUMNS, ("int64", "object", "object", "object", "float64"))})
    df = pd.concat([_read_table(f).to_pandas() for f in files], ignore_index=True)
    df = df.drop_duplicates(subset=["step", "name", "layer", "split"], keep="first")
    return df.sort_values(["step", "name", "layer", "split"], kind="stable").reset_index(drop=True)


def read_rows(path: Path) -> list[Row]:
    if not path.is_file():
        return []
    t = _read_table(path).to_pydict()
    return list(zip(t["step"], t["name"], t["layer"], t["split"], t["value"]))
