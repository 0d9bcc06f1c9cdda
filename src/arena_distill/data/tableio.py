"""Save and load the normalised table as parquet, so that it round-trips exactly.

Plain ``DataFrame.to_parquet`` / ``read_parquet`` would hand list columns back as numpy
arrays, and pandas' string inference would turn ``None`` models into NaN; the explicit
arrow schema and conversion here give back exactly what was saved (lists of ``str``,
nullable ``Int8`` labels, ``None`` models). Extra columns (e.g. a fold number added by a
later stage) are kept with arrow's own type inference.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from arena_distill.data.schema import DataError, check_table
from arena_distill.io import write_parquet

_TURNS = pa.list_(pa.string())
ARROW_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "source": pa.string(),
    "prompt": _TURNS,
    "response_a": _TURNS,
    "response_b": _TURNS,
    "model_a": pa.string(),
    "model_b": pa.string(),
    "label": pa.int8(),
    "n_turns": pa.int64(),
    "empty_a": pa.bool_(),
    "empty_b": pa.bool_(),
}
# Columns whose values come back as Python objects (lists, str, None), not a numpy dtype.
_OBJECT_COLUMNS = ("id", "source", "prompt", "response_a", "response_b", "model_a", "model_b")


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    arrays, names = [], []
    for name in df.columns:
        series = df[name]
        if name in ARROW_TYPES:
            values = series.tolist() if name in _OBJECT_COLUMNS else series
            arrays.append(pa.array(values, type=ARROW_TYPES[name], from_pandas=True))
        else:
            arrays.append(pa.Array.from_pandas(series))
        names.append(str(name))
    return pa.Table.from_arrays(arrays, names=names)


def _from_arrow(table: pa.Table) -> pd.DataFrame:
    columns: dict[str, object] = {}
    for name in table.column_names:
        column = table.column(name)
        if name in _OBJECT_COLUMNS:
            columns[name] = pd.Series(column.to_pylist(), dtype=object)
        elif name == "label":
            columns[name] = pd.array(column.to_pylist(), dtype="Int8")
        elif name == "n_turns":
            columns[name] = pd.Series(column.to_pylist(), dtype="int64")
        elif name in ("empty_a", "empty_b"):
            columns[name] = pd.Series(column.to_pylist(), dtype=bool)
        else:
            columns[name] = column.to_pandas()
    return pd.DataFrame(columns)


def save_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Check ``df`` against the schema and write it to ``path`` as parquet, atomically.

    The file is written to a temporary name in the same folder and then renamed with
    ``os.replace``, so a crash never leaves a half-written table for the next stage.
    """
    check_table(df, name=str(path))
    return write_parquet(_to_arrow(df), path)


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`save_table`, with the normalised dtypes, and check it."""
    path = Path(path)
    if not path.is_file():
        raise DataError("table not found", file=path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet table: {exc}", file=path) from None
    df = _from_arrow(table)
    check_table(df, name=str(path))
    return df
