"""De-duplication of extra training data against the competition train set.

The 1st-place solution added the "33k" LMSYS arena set as extra training data, but that set
overlaps the Kaggle train set (same conversations, sometimes with A and B swapped). Training
on such a row while validating on its twin leaks the label, so every extra row whose
(prompt, A, B) matches a train row, in either orientation, is dropped; ~21k rows remain.

Matching is on a normalised text (NFKC, lowercase, whitespace collapsed) so that trivial
re-encodings of the same conversation still count as duplicates. Lookups are dict/set based:
linear in the number of rows.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .summary import DataSummary

# An ASCII "unit separator". ``str.isspace("\x1f")`` is True, so ``normalise_for_hash`` turns
# any occurrence inside the text into a plain space: the separator cannot occur in its output,
# which makes the joined (prompt, A, B) string unambiguous.
_SEP = "\x1f"


def normalise_for_hash(turns: Sequence[str | None]) -> str:
    """Canonical text of a list of turns: joined by newlines, NFKC, lowercased, whitespace
    runs collapsed to one space, stripped. ``None`` turns count as empty strings."""
    text = "\n".join("" if t is None else str(t) for t in turns)
    text = unicodedata.normalize("NFKC", text).lower()
    # str.split() splits on exactly the str.isspace() characters (what re's \s matches) and
    # drops leading/trailing runs; it is ~4x faster than a regex substitution.
    return " ".join(text.split())


def pair_key(prompt: Sequence[str], a: Sequence[str], b: Sequence[str]) -> str:
    """SHA-1 hex digest identifying the judged pair (prompt, A, B) up to normalisation."""
    joined = _SEP.join(normalise_for_hash(x) for x in (prompt, a, b))
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()


def swapped_key(prompt: Sequence[str], a: Sequence[str], b: Sequence[str]) -> str:
    """Key of the same pair with A and B exchanged (``pair_key(prompt, b, a)``)."""
    return pair_key(prompt, b, a)


def _keys(df: pd.DataFrame) -> list[str]:
    return [
        pair_key(p, a, b)
        for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"], strict=True)
    ]


def dedup_against(
    extra: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    summary: DataSummary,
    source_name: str | None = None,
    reference_name: str = "train",
    own_name: str = "extra",
) -> pd.DataFrame:
    """Rows of ``extra`` that duplicate neither a ``reference`` row nor an earlier ``extra`` row.

    A row is a duplicate when its (prompt, A, B) key, or the key with A and B swapped, equals
    the key of a reference row (the competition train set) or of an earlier kept extra row
    (the first occurrence is kept). Each dropped row is recorded in ``summary`` with a reason
    such as ``"duplicate of train id 123 (swapped)"`` or ``"duplicate of extra id x7"``, and
    counted as the event ``duplicate_of_train[_swapped]`` / ``duplicate_of_extra[_swapped]``.
    The source recorded is ``source_name`` if given, else the row's ``source`` column.
    ``reference_name`` / ``own_name`` name the two tables in reasons and events (the
    pseudo_label stage checks its pool against ``test`` and ``extra`` too, as ``pool``).

    Returns the kept rows in their original order with a fresh index.
    """
    ref_ids: dict[str, str] = {}
    for key, rid in zip(_keys(reference), reference["id"], strict=True):
        ref_ids.setdefault(key, str(rid))

    if source_name is not None:
        sources = [source_name] * len(extra)
    elif "source" in extra.columns:
        sources = [str(s) for s in extra["source"]]
    else:
        sources = ["extra"] * len(extra)
    kept_ids: dict[str, str] = {}  # key -> id of the kept extra row it came from
    keep = [False] * len(extra)
    rows = zip(extra["prompt"], extra["response_a"], extra["response_b"], strict=True)
    for i, (rid, src, (p, a, b)) in enumerate(zip(extra["id"], sources, rows, strict=True)):
        key, swap = pair_key(p, a, b), pair_key(p, b, a)
        reason = event = None
        for table, where in ((ref_ids, reference_name), (kept_ids, own_name)):
            if key in table:
                reason, event = f"duplicate of {where} id {table[key]}", f"duplicate_of_{where}"
            elif swap in table:
                reason = f"duplicate of {where} id {table[swap]} (swapped)"
                event = f"duplicate_of_{where}_swapped"
            if reason is not None:
                break
        if reason is None:
            keep[i] = True
            kept_ids[key] = str(rid)
        else:
            # The reason names the twin (one entry per row); the count aggregates per kind.
            summary.drop(src, rid, reason)
            summary.count(src, event)
    return extra.loc[np.asarray(keep, dtype=bool)].reset_index(drop=True)
