"""Turn raw cells into clean turn lists, and records into the normalised table.

Every reader funnels its text through :func:`parse_turns` / :func:`clean_text` and its rows
through :func:`finalise_rows`, so the repairs are the same for every source and each one is
counted in the :class:`~arena_distill.data.summary.DataSummary` under ``<source>/<event>``:

``missing_to_empty``     a missing cell (None, NaN, blank string) became ``[""]``
``null_to_empty``        a JSON ``null`` (or missing) turn / text became ``""``
``empty_turn_list``      an empty list ``[]`` became ``[""]``
``surrogates_repaired``  a string with lone UTF-16 surrogates was repaired (U+FFFD)
``non_string_to_str``    a number / bool turn was converted with ``str()``
``turns_padded``         a row whose prompt / A / B turn counts differed was padded with ``""``
``empty_response_a/b``   every turn of response A / B is empty or whitespace (flagged, kept)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from arena_distill.data.schema import DataError, check_table
from arena_distill.data.summary import DataSummary

_NUMBER_TYPES = (bool, int, float, np.number, np.bool_)


def is_missing(value: object) -> bool:
    """True for None, ``pd.NA`` and float NaN (what pandas uses for an absent cell)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _repair_surrogates(text: str) -> str:
    """Join valid surrogate pairs and replace lone surrogates with U+FFFD.

    ``json.loads('"\\ud83d"')`` succeeds but yields a string UTF-8 cannot encode, which would
    crash the tokenizer or the parquet writer much later; repairing here keeps it visible.
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _str_or_repaired(text: str, source: str, summary: DataSummary) -> str:
    text = str.__str__(text)  # numpy.str_ and other subclasses -> plain str
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        summary.count(source, "surrogates_repaired")
        return _repair_surrogates(text)
    return text


def clean_text(
    value: object,
    *,
    source: str,
    summary: DataSummary,
    file: str | Path | None = None,
    row: object | None = None,
    column: str | None = None,
) -> str:
    """One text value (a turn, an instruction, a message content) as valid UTF-8 ``str``.

    None / NaN become ``""`` (``null_to_empty``), numbers and bools are ``str()``-ed
    (``non_string_to_str``); containers and other types raise :class:`DataError`.
    """
    if isinstance(value, str):
        return _str_or_repaired(value, source, summary)
    if is_missing(value):
        summary.count(source, "null_to_empty")
        return ""
    if isinstance(value, _NUMBER_TYPES):
        try:
            text = str(value)
        except ValueError as exc:  # an int too long for str() (Python's digit limit)
            raise DataError(
                f"unusable number in text: {exc}", file=file, row=row, column=column
            ) from None
        summary.count(source, "non_string_to_str")
        return text
    kind = "nested list" if isinstance(value, (list, tuple, np.ndarray)) else type(value).__name__
    raise DataError(f"expected a string turn, got a {kind}", file=file, row=row, column=column)


def parse_turns(
    value: object,
    *,
    source: str,
    summary: DataSummary,
    file: str | Path | None = None,
    row: object | None = None,
    column: str | None = None,
) -> list[str]:
    """Parse one prompt / response cell into a non-empty list of turns (valid UTF-8 strings).

    Accepts Kaggle's JSON-list strings (``'["hi", null]'``), already-parsed lists, tuples and
    numpy arrays (parquet), a JSON string scalar (one turn), and missing cells. Anything else
    (invalid JSON, a dict, a nested list) raises :class:`DataError` naming file, row and
    column; no other exception escapes, so readers can drop bad rows on request.
    """
    where = {"file": file, "row": row, "column": column}
    if isinstance(value, str):
        if not value.strip():
            summary.count(source, "missing_to_empty")
            return [""]
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise DataError(f"not valid JSON ({str(exc)[:120]})", **where) from None
        if isinstance(value, dict):
            raise DataError("expected a JSON list of strings, got an object", **where)
    elif is_missing(value):
        summary.count(source, "missing_to_empty")
        return [""]
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            summary.count(source, "empty_turn_list")
            return [""]
        return [clean_text(item, source=source, summary=summary, **where) for item in value]
    # A JSON scalar (string, null, number) is one turn.
    return [clean_text(value, source=source, summary=summary, **where)]


def _is_empty(turns: list[str]) -> bool:
    return not any(t.strip() for t in turns)


def finalise_rows(records: list[dict], *, source: str, summary: DataSummary) -> pd.DataFrame:
    """Build the normalised table from records with keys ``id, prompt, response_a,
    response_b, model_a, model_b, label`` (label: 0/1/2 or None).

    Unequal turn counts are padded with ``""`` at the end (a reader that lost a turn still
    yields a usable row, and the padding is counted); empty answers are flagged, not dropped,
    because "one side said nothing" is a real and informative arena outcome.
    """
    columns: dict[str, list] = {c: [] for c in ("prompt", "response_a", "response_b")}
    n_turns, empty_a, empty_b = [], [], []
    for rec in records:
        turns = [rec["prompt"], rec["response_a"], rec["response_b"]]
        n = max(len(t) for t in turns)
        if any(len(t) != n for t in turns):
            summary.count(source, "turns_padded")
            turns = [t + [""] * (n - len(t)) for t in turns]
        for name, t in zip(columns, turns, strict=True):
            columns[name].append(t)
        n_turns.append(n)
        empty_a.append(_is_empty(turns[1]))
        empty_b.append(_is_empty(turns[2]))
    summary.count(source, "empty_response_a", sum(empty_a))
    summary.count(source, "empty_response_b", sum(empty_b))
    df = pd.DataFrame(
        {
            "id": pd.Series([str(r["id"]) for r in records], dtype=object),
            "source": pd.Series([source] * len(records), dtype=object),
            **{name: pd.Series(vals, dtype=object) for name, vals in columns.items()},
            "model_a": pd.Series([r.get("model_a") for r in records], dtype=object),
            "model_b": pd.Series([r.get("model_b") for r in records], dtype=object),
            "label": pd.array([r.get("label") for r in records], dtype="Int8"),
            "n_turns": pd.Series(n_turns, dtype="int64"),
            "empty_a": pd.Series(empty_a, dtype=bool),
            "empty_b": pd.Series(empty_b, dtype=bool),
        }
    )
    check_table(df, name=source)
    summary.rows_kept[source] += len(df)
    return df
