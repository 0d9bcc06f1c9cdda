"""The Kaggle submission file: writer and validator.

``submission.csv`` has the columns ``id, winner_model_a, winner_model_b, winner_tie``, one row
per test id (exactly the test ids, each once), finite probabilities in ``[0, 1]`` summing to 1
per row. The writer clips probabilities away from 0 and 1 by ``clip_eps`` (a confident wrong
answer costs at most ``-log(clip_eps)``) and renormalises; ids are written as given, so
Kaggle's integer ids stay digits in the CSV text. Every problem found is named in one
``SubmissionError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from arena_distill.data.schema import LABEL_COLUMNS

SUBMISSION_COLUMNS = ("id", *LABEL_COLUMNS)
SHOW = 5  # ids shown per problem


class SubmissionError(ValueError):
    """A submission that Kaggle would reject or mis-score; the message lists every problem."""


def clip_normalise(probs: np.ndarray, clip_eps: float = 1e-6) -> np.ndarray:
    """Probabilities clipped to ``[clip_eps, 1 - clip_eps]`` and renormalised per row.

    Refuses non-finite values or negative rows instead of hiding them.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise SubmissionError(f"probabilities must be (N, 3) [A, B, tie], got shape {p.shape}")
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise SubmissionError(f"{int(bad.sum())} rows hold NaN or infinite probabilities")
    if not 0 <= clip_eps < 1 / 3:
        raise SubmissionError(f"clip_eps must be in [0, 1/3), got {clip_eps}")
    p = np.clip(p, clip_eps, 1 - clip_eps)
    return p / p.sum(axis=1, keepdims=True)


def _ids(values: Iterable) -> list[str]:
    return [str(v) for v in values]


def _head(items: Iterable) -> list:
    return sorted(items, key=str)[:SHOW]


def id_problems(ids: Sequence, expected: Sequence, what: str = "test") -> list[str]:
    """Missing, unexpected and duplicate ids of ``ids`` against ``expected`` (as strings)."""
    got = _ids(ids)
    want = set(_ids(expected))
    problems = []
    dup = [i for i, n in Counter(got).items() if n > 1]
    if dup:
        problems.append(f"{len(dup)} duplicate ids, e.g. {_head(dup)}")
    have = set(got)
    missing = want - have
    if missing:
        problems.append(f"{len(missing)} {what} ids missing, e.g. {_head(missing)}")
    unexpected = have - want
    if unexpected:
        problems.append(f"{len(unexpected)} ids not in the {what} set, e.g. {_head(unexpected)}")
    return problems


def validate_submission(
    df: pd.DataFrame,
    expected_ids: Sequence,
    *,
    sample_ids: Sequence | None = None,
    clip_eps: float = 0.0,
    atol: float = 1e-6,
) -> None:
    """Raise ``SubmissionError`` naming every problem of ``df``; return None when it is valid.

    Checks: the columns (exactly ``SUBMISSION_COLUMNS``, in order), the ids against the test
    set (and the sample submission's when given), finite values, row sums within ``atol`` of 1
    and values in ``[0, 1]`` or, with ``clip_eps > 0``, in ``[clip_eps / 3, 1 - clip_eps]``
    (what ``clip_normalise`` guarantees: renormalising can take a clipped value below
    ``clip_eps``, never below a third of it).
    """
    problems: list[str] = []
    cols = list(df.columns)
    if cols != list(SUBMISSION_COLUMNS):
        problems.append(f"columns are {cols}, expected {list(SUBMISSION_COLUMNS)}")
    if "id" in df.columns:
        ids = _ids(df["id"])
        if any(i.strip() in ("", "nan", "None") for i in ids):
            problems.append("some ids are empty or NaN")
        problems += id_problems(ids, expected_ids, "test")
        if sample_ids is not None:
            problems += [
                p + " (sample submission)"
                for p in id_problems(ids, sample_ids, "sample submission")
                if "duplicate" not in p
            ]
    else:
        ids = [str(i) for i in range(len(df))]
    present = [c for c in LABEL_COLUMNS if c in df.columns]
    if len(present) == len(LABEL_COLUMNS):
        try:
            p = df[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            problems.append(f"non-numeric probabilities: {exc}")
        else:
            nonfinite = ~np.isfinite(p).all(axis=1)
            if nonfinite.any():
                rows = [ids[i] for i in np.flatnonzero(nonfinite)]
                problems.append(f"{len(rows)} rows with NaN/inf, e.g. ids {_head(rows)}")
            finite = ~nonfinite
            if clip_eps > 0:
                low, high = clip_eps / 3 * (1 - 1e-9), 1 - clip_eps * (1 - 1e-9)
            else:
                low, high = -atol, 1 + atol
            out = finite & ((p < low) | (p > high)).any(axis=1)
            if out.any():
                rows = [ids[i] for i in np.flatnonzero(out)]
                problems.append(
                    f"{len(rows)} rows with values outside [{max(low, 0):.3g}, {min(high, 1):.9g}],"
                    f" e.g. ids {_head(rows)}"
                )
            sums = np.abs(p.sum(axis=1) - 1) > atol
            bad = finite & sums
            if bad.any():
                rows = [ids[i] for i in np.flatnonzero(bad)]
                problems.append(f"{len(rows)} rows not summing to 1, e.g. ids {_head(rows)}")
    if problems:
        raise SubmissionError("invalid submission: " + "; ".join(problems))


def build_submission(ids: Sequence, probs: np.ndarray, *, clip_eps: float = 1e-6) -> pd.DataFrame:
    """The submission table: ids as given, probabilities clipped and renormalised."""
    p = clip_normalise(probs, clip_eps)
    if len(ids) != len(p):
        raise SubmissionError(f"{len(ids)} ids but {len(p)} rows of probabilities")
    df = pd.DataFrame({"id": list(ids)})
    for k, col in enumerate(LABEL_COLUMNS):
        df[col] = p[:, k]
    return df


def read_submission(path: str | Path) -> pd.DataFrame:
    """A submission CSV with its ids as strings (as the data stage keeps them)."""
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=[""])


def write_submission(
    path: str | Path,
    ids: Sequence,
    probs: np.ndarray,
    *,
    expected_ids: Sequence,
    sample_ids: Sequence | None = None,
    clip_eps: float = 1e-6,
) -> pd.DataFrame:
    """Validate, write ``path`` and check the written file again; returns the table."""
    df = build_submission(ids, probs, clip_eps=clip_eps)
    validate_submission(df, expected_ids, sample_ids=sample_ids, clip_eps=clip_eps)
    path = Path(path)
    # 17 significant digits: the floats round-trip exactly
    df.to_csv(path, index=False, float_format="%.17g")
    validate_submission(
        read_submission(path), expected_ids, sample_ids=sample_ids, clip_eps=clip_eps
    )
    return df
