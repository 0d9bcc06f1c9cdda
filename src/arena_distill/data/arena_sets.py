"""Readers of the arena conversation dumps: the 33k set and arena-140k (one battle per row).

Both dumps hold ``model_a, model_b, winner, conversation_a, conversation_b`` and an id column;
they differ in the id column's name and the ``winner`` values. Prompt turns are the user
messages (the same in both conversations), response turns the assistant messages. The reader
arguments are those of :mod:`arena_distill.data.readers`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from arena_distill.data.rows import OnBadRow, _conversation, _id_str, _require, _Rows, read_raw
from arena_distill.data.schema import LABEL_A, LABEL_B, LABEL_TIE, DataError
from arena_distill.data.summary import DataSummary

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
