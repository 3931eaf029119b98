"""Query results written to a binary stream as they arrive: CSV and JSON stream every
row in constant memory; the table format shows the first rows and says how to get the rest."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

import pandas as pd
import pyarrow as pa

TABLE_ROWS = 10_000


def write_result(schema: pa.Schema, batches: Iterator[pa.RecordBatch], fmt: str, out: BinaryIO) -> None:
    if fmt == "csv":
        _csv(schema, batches, out)
    else:
        {"json": _json, "table": _table}[fmt](batches, out)


def _csv(schema: pa.Schema, batches: Iterator[pa.RecordBatch], out: BinaryIO) -> None:
    """pandas' CSV dialect (fields quoted only where needed), one batch at a time."""
    out.write(pd.DataFrame(columns=schema.names).to_csv(index=False).encode())
    for batch in batches:
        out.write(batch.to_pandas().to_csv(index=False, header=False).encode())


def _json(batches: Iterator[pa.RecordBatch], out: BinaryIO) -> None:
    out.write(b"[")
    first = True
    for batch in batches:
        for row in batch.to_pylist():
            out.write((("" if first else ",\n") + json.dumps(row, default=str)).encode())
            first = False
    out.write(b"]\n")


def _table(batches: Iterator[pa.RecordBatch], out: BinaryIO) -> None:
    parts, rows, more = [], 0, False
    for batch in batches:
        if rows >= TABLE_ROWS:
            more = True
            break
        parts.append(batch.slice(0, TABLE_ROWS - rows).to_pandas())
        rows += len(parts[-1])
        more = more or batch.num_rows > len(parts[-1])
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    text = df.to_string(index=False) if not df.empty else "(no rows)"
    if more:
        text += f"\n(only the first {TABLE_ROWS} rows shown; --format csv or json streams them all)"
    out.write((text + "\n").encode())
