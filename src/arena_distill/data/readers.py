"""Readers: every supported preference source in, the normalised table out.

Each reader takes ``path``, a :class:`DataSummary` (``summary``), a ``source`` name (the
``source`` column and the summary key) and ``on_bad_row``: ``"error"`` (default) raises
:class:`DataError` at the first bad row, ``"drop"`` skips it and records it with its reason
in ``summary.dropped`` -- a row never disappears silently. File-level problems (missing
file, missing column, no rows) always raise.

Besides the text repairs counted by :mod:`arena_distill.data.normalize`, readers count
``non_text_parts_ignored`` (arena140k image parts) and ``completions_unusable``
(UltraFeedback completions without a score or response).

This module holds the Kaggle competition layout (train/test, sample submission, labels) and
the dispatch (:data:`READERS`, :func:`load_source`); the other layouts live in
:mod:`arena_distill.data.arena_sets` (33k, arena-140k) and
:mod:`arena_distill.data.ultrafeedback`, the pieces they share in :mod:`arena_distill.data.rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_distill.data.arena_sets import read_arena33k, read_arena140k
from arena_distill.data.rows import OnBadRow, _id_str, _number, _require, _Rows, read_raw
from arena_distill.data.schema import LABEL_COLUMNS, DataError
from arena_distill.data.summary import DataSummary
from arena_distill.data.ultrafeedback import read_ultrafeedback

__all__ = [
    "READERS",
    "attach_labels",
    "load_source",
    "read_arena33k",
    "read_arena140k",
    "read_competition",
    "read_raw",
    "read_sample_submission",
    "read_ultrafeedback",
]


# --------------------------------------------------------------------------- competition


def _flag(value: object) -> int | None:
    """0 or 1 from an int, a float 0.0/1.0, a bool or a string "0"/"1"; None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    number = _number(value)
    return int(number) if number in (0.0, 1.0) else None


def _one_hot_label(values: tuple, row: str, path: Path) -> int:
    flags = [_flag(v) for v in values]
    if None in flags or sum(flags) != 1:  # type: ignore[arg-type]
        raise DataError(
            f"labels must be one-hot (exactly one 1) over {list(LABEL_COLUMNS)}, got {list(values)}",
            file=path,
            row=row,
            column="/".join(LABEL_COLUMNS),
        )
    return flags.index(1)


def read_competition(
    path: str | Path,
    *,
    summary: DataSummary,
    source: str = "kaggle",
    on_bad_row: OnBadRow = "error",
) -> pd.DataFrame:
    """The Kaggle competition layout (``train.csv`` / ``test.csv`` and files like it).

    Required: ``id, prompt, response_a, response_b``; ``model_a``/``model_b`` optional;
    the three ``winner_*`` columns all present (one-hot labels) or all absent (label <NA>,
    as in ``test.csv``). Extra columns are ignored. Duplicate ids raise (``"drop"``: the
    first occurrence is kept, later ones are recorded as dropped).
    """
    path = Path(path)
    df = read_raw(path)
    _require(df, ("id", "prompt", "response_a", "response_b"), path)
    found = [c for c in LABEL_COLUMNS if c in df.columns]
    if 0 < len(found) < len(LABEL_COLUMNS):
        missing = [c for c in LABEL_COLUMNS if c not in found]
        raise DataError(
            f"label columns {missing} missing (found {found}); give all three or none",
            file=path,
            column=missing[0],
        )
    n = len(df)
    ids = [_id_str(v) for v in df["id"].tolist()]
    rows = _Rows(path, source=source, summary=summary, on_bad_row=on_bad_row, ids=ids, n_read=n)
    texts = zip(*(df[c].tolist() for c in ("prompt", "response_a", "response_b")), strict=True)
    model_a = df["model_a"].tolist() if "model_a" in df.columns else [None] * n
    model_b = df["model_b"].tolist() if "model_b" in df.columns else [None] * n
    labels = zip(*(df[c].tolist() for c in found), strict=True) if found else [None] * n

    def build(rid: str, text: tuple, ma: object, mb: object, label: tuple | None) -> list[dict]:
        prompt, a, b = (
            rows.turns(v, rid, c)
            for v, c in zip(text, ("prompt", "response_a", "response_b"), strict=True)
        )
        return [
            {
                "id": rid,
                "prompt": prompt,
                "response_a": a,
                "response_b": b,
                "model_a": rows.model(ma, rid, "model_a"),
                "model_b": rows.model(mb, rid, "model_b"),
                "label": None if label is None else _one_hot_label(label, rid, path),
            }
        ]

    for rid, text, ma, mb, label in zip(ids, texts, model_a, model_b, labels, strict=True):
        rows.add(rid, build, rid, text, ma, mb, label)
    return rows.finish()


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    """Kaggle's ``sample_submission.csv``: ``id`` (str) and the three winner columns (float)."""
    path = Path(path)
    df = read_raw(path)
    _require(df, ("id", *LABEL_COLUMNS), path)
    out = pd.DataFrame({"id": pd.Series([_id_str(v) for v in df["id"]], dtype=object)})
    for col in LABEL_COLUMNS:
        try:
            out[col] = pd.to_numeric(df[col]).astype("float64")
        except (TypeError, ValueError) as exc:
            raise DataError(f"not numeric: {exc}", file=path, column=col) from None
    return out


def attach_labels(table: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Fill ``label`` of ``table`` from a labels file (``id`` + one-hot winner columns).

    Used where a test set's answers are known (the demo's ``test_labels.csv``). The labels
    file must cover exactly the table's ids.
    """
    path = Path(path)
    df = read_raw(path)
    _require(df, ("id", *LABEL_COLUMNS), path)
    ids = [_id_str(v) for v in df["id"].tolist()]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:10]
        raise DataError(f"duplicate ids {dup}", file=path, column="id")
    flags = zip(*(df[c].tolist() for c in LABEL_COLUMNS), strict=True)
    labels = {rid: _one_hot_label(v, rid, path) for rid, v in zip(ids, flags, strict=True)}
    missing = [i for i in table["id"] if i not in labels]
    unexpected = sorted(set(labels) - set(table["id"]))
    if missing or unexpected:
        raise DataError(
            f"labels must cover exactly the table's ids: missing {missing[:5]}"
            f" ({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)",
            file=path,
            column="id",
        )
    out = table.copy()
    out["label"] = pd.array([labels[i] for i in out["id"]], dtype="Int8")
    return out


# --------------------------------------------------------------------------- dispatch

READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "competition": read_competition,
    "arena33k": read_arena33k,
    "arena140k": read_arena140k,
    "ultrafeedback": read_ultrafeedback,
}


def load_source(
    path: str | Path,
    format: str,
    *,
    summary: DataSummary,
    source: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Read ``path`` with the reader named ``format`` (a key of :data:`READERS`).

    ``source`` defaults to the reader's own default name; ``options`` go to the reader.
    """
    reader = READERS.get(format)
    if reader is None:
        raise DataError(
            f"unknown data format {format!r}; known formats: {sorted(READERS)}", file=path
        )
    if source is not None:
        options["source"] = source
    return reader(path, summary=summary, **options)
