"""A/B swap augmentation and test-time mirroring.

Human preference is symmetric under exchanging the two answers: "A wins" on (prompt, A, B) is
"B wins" on (prompt, B, A), and a tie stays a tie. The 1st-place solution exploits this twice:
training on both orientations removes the model's position bias, and averaging a prediction
with the mirrored prediction on the swapped input (test-time augmentation) reduces variance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import LABEL_A, LABEL_B, LABEL_TIE, DataError

# Column pairs exchanged by a swap; columns not listed (prompt, n_turns, id ...) are unchanged.
SWAP_PAIRS = (("response_a", "response_b"), ("model_a", "model_b"), ("empty_a", "empty_b"))
SWAPPED = "swapped"


def swap_table(df: pd.DataFrame) -> pd.DataFrame:
    """The same judgements with A and B exchanged.

    Responses, models and empty flags are exchanged and labels map 0 <-> 1 (tie and <NA> are
    unchanged). The boolean column ``swapped`` records the orientation relative to the
    original data: it is set to True when absent and toggled when present, so swapping twice
    returns a table with the original orientation (and ``swap_table(swap_table(x))`` equals
    ``x`` whenever ``x`` already has the column). Ids are kept.
    """
    if "response_a" not in df.columns:
        raise DataError("cannot swap a table without response_a/response_b columns")
    rename: dict[str, str] = {}
    for a, b in SWAP_PAIRS:
        if (a in df.columns) != (b in df.columns):
            raise DataError(f"cannot swap: column {a!r} or {b!r} is missing (need both or none)")
        if a in df.columns:
            rename.update({a: b, b: a})
    # Renaming the columns (rather than assigning values) keeps every column's dtype exactly.
    out = df.rename(columns=rename)[list(df.columns)].copy()
    if "label" in df.columns:
        label = df["label"]
        is_a = label.eq(LABEL_A).fillna(False).to_numpy(dtype=bool)
        is_b = label.eq(LABEL_B).fillna(False).to_numpy(dtype=bool)
        new = label.copy()
        new[is_a] = LABEL_B
        new[is_b] = LABEL_A
        out["label"] = new
    if SWAPPED in df.columns:
        out[SWAPPED] = ~df[SWAPPED].astype(bool)
    else:
        out[SWAPPED] = True
    return out


def with_swapped(df: pd.DataFrame) -> pd.DataFrame:
    """Original rows (``swapped=False``) followed by their A/B swaps (``swapped=True``).

    Ids are unchanged, so ``(id, swapped)`` identifies a row. The index is fresh.
    Raises DataError if ``df`` already contains swapped rows (augmenting twice would create
    duplicate ``(id, swapped)`` pairs).
    """
    original = df.copy()
    if SWAPPED in original.columns and original[SWAPPED].astype(bool).any():
        raise DataError("table already contains swapped rows; pass only the original rows")
    original[SWAPPED] = False
    return pd.concat([original, swap_table(original)], ignore_index=True)


def mirror_probs(p: np.ndarray) -> np.ndarray:
    """Map (N, 3) ``[A, B, tie]`` probabilities or logits predicted on swapped inputs back to
    the original orientation by exchanging columns 0 and 1. Returns a new array; applying it
    twice is the identity."""
    arr = np.asarray(p)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"mirror_probs expects an (N, 3) array of [A, B, tie], got {arr.shape}")
    return arr[:, [LABEL_B, LABEL_A, LABEL_TIE]]
