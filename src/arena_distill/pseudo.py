"""Pseudo-labels: the teachers' soft labels on unlabelled rows, which rows to keep, and how the
student reads them back. The ``pseudo_label`` stage writes them, the ``distill`` stage trains on
them (teacher terms only, ``losses.DistillLoss``'s ``pseudo_weight``).

The pseudo_label stage's output folder (``stages.pseudo_label.out_dir``):

- ``rows.parquet``   the kept pool rows, a normalised table (``label`` null)
- ``logits.parquet`` ``id, teacher, fold, swapped, logit_a, logit_b, logit_tie`` for every kept
  row: fold ``k`` is teacher fold k's adapter, fold ``-1`` the mean over the folds (the log of
  the mean probability); ``swapped`` logits were computed on the swapped input and are not
  mirrored (a swapped training row pairs with them, as with ``dump_logits``)
- ``scores.parquet`` every scored row: ``id, source, p_a, p_b, p_tie`` (the ensemble: the mean
  probability over teachers, folds and both orientations, the swapped one mirrored back),
  ``confidence`` (its largest probability), ``agreement`` (the share of the teacher × fold ×
  orientation predictions whose argmax is the ensemble's), ``kept``, ``reason`` (why not kept)
- ``summary.json``   the pool's ``DataSummary``: rows read, normalisations, every dropped row
  with its reason (duplicate, over ``max_rows``, not selected)
- ``manifest.json``  counts: read, dropped by reason, scored, kept
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_distill.data.swap import mirror_probs
from arena_distill.layout import LOGIT_COLS, PROB_COLS
from arena_distill.metrics import probs_from_logits

ROWS, LOGITS, SCORES = "rows.parquet", "logits.parquet", "scores.parquet"
MEAN_FOLD = -1  # the ``fold`` of the mean over a teacher's folds in ``logits.parquet``
FILES = (ROWS, LOGITS)  # what the student is built from


def fold_mean_logits(per_fold: list[np.ndarray]) -> np.ndarray:
    """The log of the mean probability over folds: logits whose softmax is the fold average."""
    probs = np.mean([probs_from_logits(x) for x in per_fold], axis=0)
    return np.log(np.clip(probs, 1e-12, None))


def ensemble_scores(ids: list[str], predictions: dict[tuple[str, int, bool], np.ndarray]):
    """Soft labels and per-row confidence / agreement from every (teacher, fold, swapped)
    prediction (logits on the input in that orientation, ``(n, 3)`` in ``ids`` order).

    Returns a table ``id, p_a, p_b, p_tie, confidence, agreement``."""
    probs = []
    for (_, _, swapped), logits in sorted(predictions.items()):
        p = probs_from_logits(logits)
        probs.append(mirror_probs(p) if swapped else p)  # back to the original orientation
    stack = np.stack(probs)  # (n_predictions, n_rows, 3)
    mean = stack.mean(axis=0)
    best = mean.argmax(axis=1)
    agreement = (stack.argmax(axis=2) == best[None, :]).mean(axis=0)
    table = pd.DataFrame({"id": list(ids)})
    table[list(PROB_COLS)] = mean
    table["confidence"] = mean.max(axis=1)
    table["agreement"] = agreement
    return table


def select_rows(
    scores: pd.DataFrame,
    *,
    min_confidence: float = 0.0,
    min_agreement: float = 0.0,
    top_fraction: float = 1.0,
    rank_by: str = "confidence",
) -> pd.DataFrame:
    """``scores`` with ``kept`` and ``reason`` (empty when kept): a row is kept when its
    confidence >= ``min_confidence`` and its agreement >= ``min_agreement``; of those, the best
    ``ceil(top_fraction · n)`` by ``rank_by`` (ties: table order)."""
    out = scores.copy()
    reason = pd.Series("", index=out.index, dtype=object)
    low_conf = out["confidence"] < min_confidence
    reason[low_conf] = f"confidence below min_confidence {min_confidence}"
    low_agree = ~low_conf & (out["agreement"] < min_agreement)
    reason[low_agree] = f"agreement below min_agreement {min_agreement}"
    passed = out.index[reason == ""]
    n_keep = math.ceil(top_fraction * len(passed) - 1e-9)
    if n_keep < len(passed):
        order = out.loc[passed, rank_by].to_numpy()
        ranked = passed[np.argsort(-order, kind="stable")]
        reason[ranked[n_keep:]] = f"outside the top {top_fraction} by {rank_by}"
    out["kept"] = (reason == "").to_numpy()
    out["reason"] = reason.to_numpy()
    return out


Lookup = dict[tuple[str, int, str, bool], np.ndarray]


@dataclass
class PseudoRows:
    """The kept pseudo-labelled rows and their teachers' logits, as the student reads them."""

    folder: Path
    rows: pd.DataFrame  # normalised table of the kept rows
    logits: Lookup  # {(teacher, fold, id, swapped): logits}; fold MEAN_FOLD: the fold mean

    @property
    def files(self) -> list[Path]:
        return [self.folder / f for f in FILES]

    def teacher_logits(
        self, teachers: list[str], fold: int, rid: str, swapped: bool
    ) -> list[list[float]]:
        """``n_teachers × 3`` logits of one row for student fold ``fold`` (``MEAN_FOLD``: the
        folds' mean)."""
        out = []
        for t in teachers:
            value = self.logits.get((t, fold, rid, swapped))
            if value is None:
                raise KeyError(
                    f"{self.folder / LOGITS}: no logits of teacher {t!r} fold {fold} for pool "
                    f"id {rid!r} ({'swapped' if swapped else 'original'}); rerun pseudo_label"
                )
            out.append(value.tolist())
        return out


def read_pseudo(folder: str | Path) -> PseudoRows:
    """The pseudo_label stage's kept rows and logits."""
    from arena_distill.data.tableio import load_table

    folder = Path(folder)
    table = pd.read_parquet(folder / LOGITS)
    values = table[list(LOGIT_COLS)].to_numpy(dtype=np.float32)
    keys = zip(table["teacher"], table["fold"], table["id"], table["swapped"], strict=True)
    lookup = {
        (str(t), int(f), str(i), bool(s)): v for (t, f, i, s), v in zip(keys, values, strict=True)
    }
    return PseudoRows(folder, load_table(folder / ROWS), lookup)
