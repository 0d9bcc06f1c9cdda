"""The normalised table every reader returns, and the project's data error.

One row is one pairwise judgement. Columns (a ``pandas.DataFrame``):

==============  ===========================================================================
``id``          str, unique within a table (Kaggle's integer ids are kept as their digits)
``source``      str, where the row came from (``kaggle``, ``arena33k``, ``ultrafeedback`` ...)
``prompt``      list[str], one string per turn
``response_a``  list[str], same number of turns as ``prompt``
``response_b``  list[str], same number of turns as ``prompt``
``model_a``     str or None when unknown
``model_b``     str or None when unknown
``label``       Int8 (nullable): 0 = A wins, 1 = B wins, 2 = tie; <NA> when unknown (test)
``n_turns``     int, ``len(prompt)``
``empty_a``     bool, every turn of ``response_a`` is empty or whitespace
``empty_b``     bool, every turn of ``response_b`` is empty or whitespace
==============  ===========================================================================
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LABEL_A, LABEL_B, LABEL_TIE = 0, 1, 2
LABEL_NAMES = ("A", "B", "tie")
# Kaggle's one-hot label columns, in label order.
LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
TEXT_COLUMNS = ("prompt", "response_a", "response_b")
COLUMNS = (
    "id",
    "source",
    "prompt",
    "response_a",
    "response_b",
    "model_a",
    "model_b",
    "label",
    "n_turns",
    "empty_a",
    "empty_b",
)


class DataError(ValueError):
    """Bad input data. The message names the file, the row (id) and the column when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: object | None = None,
        column: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.row = row
        self.column = column
        self.reason = message
        where = []
        if file is not None:
            where.append(f"file {self.file}")
        if row is not None:
            where.append(f"row id={row!r}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def empty_table() -> pd.DataFrame:
    """A normalised table with no rows and the right dtypes."""
    return pd.DataFrame(
        {
            "id": pd.Series([], dtype=object),
            "source": pd.Series([], dtype=object),
            "prompt": pd.Series([], dtype=object),
            "response_a": pd.Series([], dtype=object),
            "response_b": pd.Series([], dtype=object),
            "model_a": pd.Series([], dtype=object),
            "model_b": pd.Series([], dtype=object),
            "label": pd.Series([], dtype="Int8"),
            "n_turns": pd.Series([], dtype="int64"),
            "empty_a": pd.Series([], dtype=bool),
            "empty_b": pd.Series([], dtype=bool),
        }
    )


def check_table(df: pd.DataFrame, name: str = "table") -> None:
    """Raise DataError unless ``df`` has the normalised columns and invariants."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"missing normalised columns {missing}", file=name)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise DataError(
            f"duplicate ids {sorted(map(str, dup.unique()))[:10]}", file=name, column="id"
        )
    for i, (rid, p, a, b) in enumerate(
        zip(df["id"], df["prompt"], df["response_a"], df["response_b"], strict=True)
    ):
        if not (len(p) == len(a) == len(b)):
            raise DataError(
                f"turn counts differ (prompt {len(p)}, A {len(a)}, B {len(b)}) at position {i}",
                file=name,
                row=rid,
            )
    labels = df["label"].dropna()
    if len(labels) and not labels.isin([LABEL_A, LABEL_B, LABEL_TIE]).all():
        raise DataError("labels must be 0 (A), 1 (B) or 2 (tie)", file=name, column="label")
