"""Readers: every supported preference source in, the normalised table out.

Each reader takes ``path``, a :class:`DataSummary` (``summary``), a ``source`` name (the
``source`` column and the summary key) and ``on_bad_row``: ``"error"`` (default) raises
:class:`DataError` at the first bad row, ``"drop"`` skips it and records it with its reason
in ``summary.dropped`` -- a row never disappears silently. File-level problems (missing
file, missing column, no rows) always raise.

Besides the text repairs counted by :mod:`arena_distill.data.normalize`, readers count
``non_text_parts_ignored`` (arena140k image parts) and ``completions_unusable``
(UltraFeedback completions without a score or response).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from arena_distill.data.normalize import clean_text, finalise_rows, is_missing, parse_turns
from arena_distill.data.schema import LABEL_A, LABEL_B, LABEL_COLUMNS, LABEL_TIE, DataError
from arena_distill.data.summary import DataSummary

OnBadRow = Literal["error", "drop"]
_SEQUENCES = (list, tuple, np.ndarray)
ARENA33K_WINNERS = {
    "model_a": LABEL_A,
    "model_b": LABEL_B,
    "tie": LABEL_TIE,
    "tie (bothbad)": LABEL_TIE,
}
ARENA140K_WINNERS = {
    "model_a": LABEL_A,
    "model_b": LABEL_B,
    "tie": LABEL_TIE,
    "both_bad": LABEL_TIE,
}
UF_PAIRINGS = ("best_vs_worst", "random_pair", "all_pairs")
UF_SCORES = ("overall_score", "mean_rating")


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


# --------------------------------------------------------------------------- competition


def _number(value: object) -> float | None:
    """A finite float from a number or numeric string; None for "N/A", missing, junk."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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


# --------------------------------------------------------------------------- arena dumps


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


def _read_arena(
    path: str | Path,
    *,
    summary: DataSummary,
    source: str,
    on_bad_row: OnBadRow,
    id_column: str,
    winners: dict[str, int],
) -> pd.DataFrame:
    """Shared reader of the arena conversation dumps (one judged battle per row)."""
    path = Path(path)
    df = read_raw(path)
    columns = (id_column, "model_a", "model_b", "winner", "conversation_a", "conversation_b")
    _require(df, columns, path)
    ids = [_id_str(v) for v in df[id_column].tolist()]
    rows = _Rows(
        path, source=source, summary=summary, on_bad_row=on_bad_row, ids=ids, n_read=len(df)
    )

    def build(
        rid: str, ma: object, mb: object, winner: object, conv_a: object, conv_b: object
    ) -> list[dict]:
        if not isinstance(winner, str) or winner not in winners:
            raise DataError(
                f"winner must be one of {sorted(winners)}, got {winner!r}",
                file=path,
                row=rid,
                column="winner",
            )
        user_a, resp_a = _conversation(conv_a, rows, rid, "conversation_a")
        user_b, resp_b = _conversation(conv_b, rows, rid, "conversation_b")
        if user_a != user_b:
            raise DataError(
                "user turns of conversation_a and conversation_b differ",
                file=path,
                row=rid,
                column="conversation_b",
            )
        return [
            {
                "id": rid,
                "prompt": user_a,
                "response_a": resp_a,
                "response_b": resp_b,
                "model_a": rows.model(ma, rid, "model_a"),
                "model_b": rows.model(mb, rid, "model_b"),
                "label": winners[winner],
            }
        ]

    for rid, *cells in zip(ids, *(df[c].tolist() for c in columns[1:]), strict=True):
        rows.add(rid, build, rid, *cells)
    return rows.finish()


def read_arena33k(
    path: str | Path,
    *,
    summary: DataSummary,
    source: str = "arena33k",
    on_bad_row: OnBadRow = "error",
) -> pd.DataFrame:
    """lmsys/chatbot_arena_conversations: ``question_id, model_a, model_b, winner,
    conversation_a, conversation_b``.

    ``winner`` in {model_a, model_b, tie, tie (bothbad)}; both ties are label 2. Prompt
    turns are the user messages (they must be the same in both conversations), response
    turns the assistant messages.
    """
    return _read_arena(
        path,
        summary=summary,
        source=source,
        on_bad_row=on_bad_row,
        id_column="question_id",
        winners=ARENA33K_WINNERS,
    )


def read_arena140k(
    path: str | Path,
    *,
    summary: DataSummary,
    source: str = "arena140k",
    on_bad_row: OnBadRow = "error",
) -> pd.DataFrame:
    """lmarena-ai/arena-human-preference-140k: ``id, model_a, model_b, winner,
    conversation_a, conversation_b``.

    ``winner`` in {model_a, model_b, tie, both_bad}; tie and both_bad are label 2. A message
    content is a string or a list of parts; text parts are joined with ``"\\n"``, other parts
    (images) are ignored and counted as ``non_text_parts_ignored``.
    """
    return _read_arena(
        path,
        summary=summary,
        source=source,
        on_bad_row=on_bad_row,
        id_column="id",
        winners=ARENA140K_WINNERS,
    )


# --------------------------------------------------------------------------- ultrafeedback


def _mean_rating(annotations: object) -> float | None:
    """Mean of the numeric ``Rating`` values over the annotation aspects ("N/A" ignored)."""
    if not isinstance(annotations, dict):
        return None
    ratings = []
    for aspect in annotations.values():
        for item in aspect if isinstance(aspect, _SEQUENCES) else [aspect]:
            if isinstance(item, dict):
                rating = _number(item.get("Rating"))
                if rating is not None:
                    ratings.append(rating)
    return sum(ratings) / len(ratings) if ratings else None


def _pair_label(score_a: float, score_b: float, tie_margin: float) -> int:
    if abs(score_a - score_b) <= tie_margin:
        return LABEL_TIE
    return LABEL_A if score_a > score_b else LABEL_B


def _choose_pairs(
    scores: dict[int, float], pairing: str, rng: random.Random, cap: int | None
) -> list[tuple[int, int]]:
    """Completion index pairs ``(i, j)`` with ``i < j`` for one instruction."""
    idx = sorted(scores)
    if pairing == "best_vs_worst":
        order = sorted(idx, key=lambda k: (-scores[k], k))
        pairs = [(order[0], order[-1])]
    elif pairing == "random_pair":
        pairs = [tuple(rng.sample(idx, 2))]
    else:
        pairs = list(combinations(idx, 2))
        if cap is not None and len(pairs) > cap:
            pairs = rng.sample(pairs, cap)
    return sorted((min(p), max(p)) for p in pairs)


def read_ultrafeedback(
    path: str | Path,
    *,
    summary: DataSummary,
    source: str = "ultrafeedback",
    on_bad_row: OnBadRow = "error",
    pairing: str = "best_vs_worst",
    score: str = "overall_score",
    tie_margin: float = 0.0,
    seed: int = 2025,
    max_pairs_per_prompt: int | None = None,
) -> pd.DataFrame:
    """UltraFeedback (AI-judged) as arena pairs, for the "UT" pre-training data.

    Raw form (openbmb/UltraFeedback: ``instruction``, ``completions`` = list of
    ``{model, response, overall_score, annotations}``):

    * ``score="overall_score"`` uses the completion's ``overall_score``;
      ``score="mean_rating"`` the mean of the numeric ``Rating`` of its annotation aspects
      (helpfulness, honesty, instruction_following, truthfulness; "N/A" ignored).
      A completion without a usable score or response is skipped (``completions_unusable``).
    * ``pairing="best_vs_worst"``: one pair per instruction, the highest- against the
      lowest-scored completion (ties in score broken by completion order);
      ``"random_pair"``: one pair of two distinct completions drawn at random;
      ``"all_pairs"``: every unordered pair, at most ``max_pairs_per_prompt`` of them (a
      seeded random sample) when that is set.
    * An instruction with fewer than 2 usable completions is dropped and recorded in
      ``summary.dropped`` (reason ``"fewer than 2 usable completions"``), whatever
      ``on_bad_row`` says: it is expected, not bad data.
    * Ids are ``f"ut-{row_index}-{i}-{j}"`` with completion indices ``i < j``.

    Binarized form (HuggingFaceH4/ultrafeedback_binarized: ``chosen``, ``rejected``
    message lists, ``score_chosen``, ``score_rejected``), detected by its columns: one pair
    per row, id ``f"ut-{row_index}"``; ``pairing``, ``score`` and ``max_pairs_per_prompt``
    do not apply.

    Both forms: which completion goes to A is a coin flip from a generator seeded with
    ``(seed, row_index)``, so the output is deterministic and a row's draw does not depend
    on the rows before it. Label: ``|score_A - score_B| <= tie_margin`` is a tie (2),
    otherwise the higher score wins.
    """
    if pairing not in UF_PAIRINGS:
        raise ValueError(f"pairing must be one of {UF_PAIRINGS}, got {pairing!r}")
    if score not in UF_SCORES:
        raise ValueError(f"score must be one of {UF_SCORES}, got {score!r}")
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt}")
    path = Path(path)
    df = read_raw(path)
    rows = _Rows(path, source=source, summary=summary, on_bad_row=on_bad_row, n_read=len(df))

    def rng_for(r: int) -> random.Random:
        return random.Random(f"{seed}:{r}")

    def build_raw(r: int, instruction: object, completions: object) -> list[dict]:
        rid = f"ut-{r}"
        prompt = [rows.text(instruction, rid, "instruction")]
        usable: dict[int, tuple[str, str | None, float]] = {}
        for k, comp in enumerate(
            _as_sequence(completions, "completions", rows, rid, "completions")
        ):
            if not isinstance(comp, dict):
                raise DataError(
                    "completion is not an object", file=path, row=rid, column="completions"
                )
            value = (
                comp.get("overall_score")
                if score == "overall_score"
                else _mean_rating(comp.get("annotations"))
            )
            number, response = _number(value), comp.get("response")
            if number is None or is_missing(response):
                rows.count("completions_unusable")
                continue
            text = rows.text(response, rid, "completions")
            usable[k] = (text, rows.model(comp.get("model"), rid, "completions"), number)
        if len(usable) < 2:
            rows.drop(rid, "fewer than 2 usable completions")
            return []
        rng = rng_for(r)
        pairs = _choose_pairs(
            {k: v[2] for k, v in usable.items()}, pairing, rng, max_pairs_per_prompt
        )
        records = []
        for i, j in pairs:
            a, b = (j, i) if rng.random() < 0.5 else (i, j)
            (text_a, model_a, score_a), (text_b, model_b, score_b) = usable[a], usable[b]
            records.append(
                {
                    "id": f"ut-{r}-{i}-{j}",
                    "prompt": prompt,
                    "response_a": [text_a],
                    "response_b": [text_b],
                    "model_a": model_a,
                    "model_b": model_b,
                    "label": _pair_label(score_a, score_b, tie_margin),
                }
            )
        return records

    def build_binarized(
        r: int, chosen: object, rejected: object, s_chosen: object, s_rejected: object
    ) -> list[dict]:
        rid = f"ut-{r}"
        user_c, resp_c = _conversation(chosen, rows, rid, "chosen")
        user_r, resp_r = _conversation(rejected, rows, rid, "rejected")
        if user_c != user_r:
            raise DataError(
                "user turns of chosen and rejected differ", file=path, row=rid, column="rejected"
            )
        scores = (_number(s_chosen), _number(s_rejected))
        if None in scores:
            raise DataError(
                f"scores must be numbers, got {s_chosen!r}, {s_rejected!r}",
                file=path,
                row=rid,
                column="score_chosen/score_rejected",
            )
        sides = [(resp_c, scores[0]), (resp_r, scores[1])]
        if rng_for(r).random() < 0.5:
            sides.reverse()
        (resp_a, score_a), (resp_b, score_b) = sides
        label = _pair_label(score_a, score_b, tie_margin)  # type: ignore[arg-type]
        return [
            {
                "id": rid,
                "prompt": user_c,
                "response_a": resp_a,
                "response_b": resp_b,
                "model_a": None,
                "model_b": None,
                "label": label,
            }
        ]

    if "instruction" in df.columns or "completions" in df.columns:
        _require(df, ("instruction", "completions"), path)
        build, columns = build_raw, ("instruction", "completions")
    elif "chosen" in df.columns or "rejected" in df.columns:
        columns = ("chosen", "rejected", "score_chosen", "score_rejected")
        _require(df, columns, path)
        build = build_binarized
    else:
        raise DataError(
            "neither raw UltraFeedback (instruction, completions) nor binarized "
            f"(chosen, rejected, score_chosen, score_rejected) columns; found {list(df.columns)}",
            file=path,
        )
    for r, cells in enumerate(zip(*(df[c].tolist() for c in columns), strict=True)):
        rows.add(f"ut-{r}", build, r, *cells)
    return rows.finish()


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
