"""What every reader shares: raw files in, the ``on_bad_row`` policy, cell parsers.

:func:`read_raw` reads a file as it is; :class:`_Rows` collects one reader's records, applies
``on_bad_row`` (``"error"`` raises at the first bad row, ``"drop"`` records it with its reason in
``summary.dropped``) and finalises the table. The cell parsers turn ids, numbers and
``[{"role", "content"}, ...]`` conversations (the arena dumps, binarized UltraFeedback) into
plain values, raising :class:`DataError` with file, row and column on bad input; a content
part that is not text (an image) is skipped and counted as ``non_text_parts_ignored``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from arena_distill.data.normalize import clean_text, finalise_rows, is_missing, parse_turns
from arena_distill.data.schema import DataError
from arena_distill.data.summary import DataSummary

OnBadRow = Literal["error", "drop"]
_SEQUENCES = (list, tuple, np.ndarray)


# --------------------------------------------------------------------------- raw files


def _read_json_records(path: Path) -> list[dict]:
    """A JSON array of records, or JSON lines (one object per line)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = None  # not one JSON document: try JSON lines
    if isinstance(data, list):
        records = data
    elif isinstance(data, dict):
        records = [data]
    else:
        records = []
        # split on "\n" only: str.splitlines() would also split on U+2028 inside strings
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"line {n} is not valid JSON ({exc})", file=path) from None
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"record {bad} is not a JSON object", file=path)
    return records


def read_raw(path: str | Path) -> pd.DataFrame:
    """Read a .csv, .parquet, .jsonl or .json (records or JSON lines) file as it is.

    CSV cells are read as strings with ``keep_default_na=False`` so that text such as
    ``"null"`` or ``"NA"`` stays text; Kaggle's cells are JSON, parsed later per cell.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", file=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype=object, keep_default_na=False)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            df = pd.DataFrame.from_records(_read_json_records(path))
        else:
            raise DataError(
                f"unsupported file type {suffix!r} (expected .csv, .parquet, .jsonl, .json)",
                file=path,
            )
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=path) from None
    except (ValueError, OSError) as exc:  # parser, decoding and arrow errors
        raise DataError(f"cannot read file: {exc}", file=path) from None
    if len(df) == 0:
        raise DataError("file has no rows", file=path)
    return df


def _require(df: pd.DataFrame, columns: tuple[str, ...] | list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {missing}; found {list(df.columns)}",
            file=path,
            column=missing[0],
        )


def _id_str(value: object) -> str:
    """An id as text; integral numbers keep their digits (``30192.0`` -> ``"30192"``)."""
    if is_missing(value):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return str(value).strip()


# --------------------------------------------------------------------------- row policy


class _Rows:
    """Collects one reader's records and applies the ``on_bad_row`` policy."""

    def __init__(
        self,
        path: Path,
        *,
        source: str,
        summary: DataSummary,
        on_bad_row: OnBadRow,
        ids: list[str] | None = None,
        n_read: int,
    ) -> None:
        if on_bad_row not in ("error", "drop"):
            raise ValueError(f"on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
        self.path, self.source, self.summary, self.on_bad_row = path, source, summary, on_bad_row
        self.records: list[dict] = []
        self._seen: set[str] = set()
        summary.rows_read[source] += n_read
        dups = sorted(k for k, n in Counter(ids or ()).items() if n > 1)
        if dups and on_bad_row == "error":
            more = f" and {len(dups) - 20} more" if len(dups) > 20 else ""
            raise DataError(f"duplicate ids {dups[:20]}{more}", file=path, column="id")

    def turns(self, value: object, row: str, column: str) -> list[str]:
        return parse_turns(
            value, source=self.source, summary=self.summary, file=self.path, row=row, column=column
        )

    def text(self, value: object, row: str, column: str) -> str:
        return clean_text(
            value, source=self.source, summary=self.summary, file=self.path, row=row, column=column
        )

    def model(self, value: object, row: str, column: str) -> str | None:
        """A model name, or None when absent or blank."""
        if is_missing(value):
            return None
        name = self.text(value, row, column).strip()
        return name or None

    def count(self, event: str, n: int = 1) -> None:
        self.summary.count(self.source, event, n)

    def drop(self, row: str, reason: str) -> None:
        self.summary.drop(self.source, row, reason, str(self.path))

    def add(self, row: str, build: Callable[..., list[dict]], *args: Any) -> None:
        """Append ``build(*args)``'s records, or handle its DataError per ``on_bad_row``."""
        try:
            if not row:
                raise DataError("missing id", file=self.path, column="id")
            if row in self._seen:
                raise DataError("duplicate id", file=self.path, row=row, column="id")
            self._seen.add(row)
            self.records.extend(build(*args))
        except DataError as exc:
            if self.on_bad_row == "error":
                raise
            self.drop(row, f"{exc.column}: {exc.reason}" if exc.column else exc.reason)

    def finish(self) -> pd.DataFrame:
        return finalise_rows(self.records, source=self.source, summary=self.summary)


# --------------------------------------------------------------------------- cells


def _number(value: object) -> float | None:
    """A finite float from a number or numeric string; None for "N/A", missing, junk."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _as_sequence(
    value: object, what: str, rows: _Rows, row: str, column: str
) -> list | tuple | np.ndarray:
    """A list-like cell: parsed from JSON when it is a string (CSV / JSONL dumps)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise DataError(
                f"not valid JSON ({str(exc)[:120]})", file=rows.path, row=row, column=column
            ) from None
    if not isinstance(value, _SEQUENCES):
        raise DataError(
            f"expected a list of {what}, got {type(value).__name__}",
            file=rows.path,
            row=row,
            column=column,
        )
    return value


def _content(value: object, rows: _Rows, row: str, column: str) -> str:
    """A message's content: a string, or a list of parts whose text parts are joined."""
    if not isinstance(value, _SEQUENCES):
        return rows.text(value, row, column)
    texts = []
    for part in value:
        if not isinstance(part, dict):
            raise DataError("content part is not an object", file=rows.path, row=row, column=column)
        kind = part.get("type")
        if kind is None or (isinstance(kind, str) and kind == "text"):
            texts.append(rows.text(part.get("text"), row, column))
        else:
            rows.count("non_text_parts_ignored")
    return "\n".join(texts)


def _conversation(value: object, rows: _Rows, row: str, column: str) -> tuple[list[str], list[str]]:
    """(user turns, assistant turns) of a ``[{"role", "content"}, ...]`` message list."""
    user: list[str] = []
    assistant: list[str] = []
    for msg in _as_sequence(value, "messages", rows, row, column):
        role = msg.get("role") if isinstance(msg, dict) else None
        if not isinstance(role, str) or role not in ("user", "assistant"):
            raise DataError(
                f"each message needs role 'user' or 'assistant', got {role!r}",
                file=rows.path,
                row=row,
                column=column,
            )
        (user if role == "user" else assistant).append(
            _content(msg.get("content"), rows, row, column)
        )
    if not user:
        raise DataError("conversation has no user message", file=rows.path, row=row, column=column)
    return user, assistant
