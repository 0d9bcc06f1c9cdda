"""The run's data layout: what the data stage writes, how later stages select rows from it,
and the prediction tables stages exchange. Imports no torch, so the report, the baselines and
the Kaggle path read a column name or a split without loading a model library.

``data/`` (the data stage's output folder):

* ``train.parquet`` labelled competition rows (``cv`` folds and the ``holdout``),
* ``extra.parquet`` training-only labelled rows, ``pretrain.parquet`` post-pretraining rows,
  ``test.parquet`` rows to predict (when the data config has a test set),
* ``folds.csv`` ``id, split, fold``: ``split`` is ``cv`` (``fold`` 0..K-1), ``extra`` or
  ``holdout`` (``fold`` -1).

A prediction table (``oof.parquet``, ``predictions.parquet``) has one row per id:
``logit_*`` / ``p_*`` in the original orientation, and with swap-TTA ``swap_logit_*`` (computed
on the A/B-swapped input, mirrored back) and ``tta_p_*`` (the mean of both orientations'
probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arena_distill.data.folds import read_folds
from arena_distill.data.swap import mirror_probs
from arena_distill.data.tableio import load_table
from arena_distill.io import require_stage_output
from arena_distill.metrics import classification_metrics, log_loss, probs_from_logits

# --- files of the data stage ---------------------------------------------------------------
TRAIN, EXTRA, PRETRAIN, TEST = "train.parquet", "extra.parquet", "pretrain.parquet", "test.parquet"
FOLDS = "folds.csv"
SUMMARY = "summary.json"
# what every training-side stage is built from: a change in any of them makes its output stale
LABELLED_FILES = (TRAIN, EXTRA, FOLDS)

# --- splits of folds.csv --------------------------------------------------------------------
CV, EXTRA_SPLIT, HOLDOUT = "cv", "extra", "holdout"

# --- prediction tables ----------------------------------------------------------------------
LOGIT_COLS = ("logit_a", "logit_b", "logit_tie")
PROB_COLS = ("p_a", "p_b", "p_tie")
SWAP_LOGIT_COLS = ("swap_logit_a", "swap_logit_b", "swap_logit_tie")
TTA_PROB_COLS = ("tta_p_a", "tta_p_b", "tta_p_tie")
FINAL_COLS = ("final_p_a", "final_p_b", "final_p_tie")  # what a submission was written from


def n_folds(folds: pd.DataFrame) -> int:
    """The number of cv folds of a folds table."""
    cv = folds.loc[folds["split"] == CV, "fold"]
    if cv.empty:
        raise ValueError("the folds table has no cv rows")
    return int(cv.max()) + 1


def split_ids(folds: pd.DataFrame, split: str) -> set[str]:
    """The ids of one split (``cv``, ``extra`` or ``holdout``) of a folds table."""
    return set(folds.loc[folds["split"] == split, "id"].astype(str))


def rows_in_split(table: pd.DataFrame, folds: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of ``table`` whose id is in ``split``, in table order, with a fresh index."""
    ids = split_ids(folds, split)
    return table[table["id"].astype(str).isin(ids)].reset_index(drop=True)


def fold_dir(out_dir: str | Path, fold: int) -> Path:
    """Where a per-fold stage (teacher, distill) keeps fold ``fold``."""
    return Path(out_dir) / f"fold_{fold}"


@dataclass
class RunData:
    """The data stage's labelled output, loaded."""

    data_dir: Path
    train: pd.DataFrame  # competition rows (cv + holdout)
    extra: pd.DataFrame  # training-only rows
    folds: pd.DataFrame  # id, split, fold

    @property
    def labelled(self) -> pd.DataFrame:
        return pd.concat([self.train, self.extra], ignore_index=True)

    @property
    def n_folds(self) -> int:
        return n_folds(self.folds)

    @property
    def files(self) -> list[Path]:
        """The files a training-side output is built from (``LABELLED_FILES``)."""
        return [self.data_dir / f for f in LABELLED_FILES]

    def rows(self, split: str) -> pd.DataFrame:
        """The competition rows of one split (``cv`` or ``holdout``), in table order."""
        return rows_in_split(self.train, self.folds, split)


def read_run_data(data_dir: str | Path) -> RunData:
    """``train.parquet``, ``extra.parquet`` and ``folds.csv`` of a finished data stage."""
    data_dir = Path(data_dir)
    return RunData(
        data_dir=data_dir,
        train=load_table(data_dir / TRAIN),
        extra=load_table(data_dir / EXTRA),
        folds=read_folds(data_dir / FOLDS),
    )


def data_dir(cfg) -> Path:
    """The finished data stage's output folder of the run ``cfg`` describes."""
    return require_stage_output(cfg.stages.data.out_dir, stage="data", files=list(LABELLED_FILES))


def load_run_data(cfg) -> RunData:
    """The labelled rows and folds of the run ``cfg`` describes (its data stage's output)."""
    return read_run_data(data_dir(cfg))


def prediction_table(
    ids: Sequence[str],
    logits: np.ndarray,
    swapped_logits: np.ndarray | None = None,
    **columns,
) -> pd.DataFrame:
    """One row per id: logits and probabilities, and with ``swapped_logits`` (computed on the
    A/B-swapped inputs) those mirrored back plus the swap-TTA average of probabilities."""
    df = pd.DataFrame({"id": list(ids), **columns})
    df[list(LOGIT_COLS)] = logits
    probs = probs_from_logits(logits)
    df[list(PROB_COLS)] = probs
    if swapped_logits is not None:
        mirrored = mirror_probs(swapped_logits)
        df[list(SWAP_LOGIT_COLS)] = mirrored
        df[list(TTA_PROB_COLS)] = (probs + probs_from_logits(mirrored)) / 2
    return df


def score_predictions(df: pd.DataFrame) -> dict[str, float]:
    """log loss / accuracy of a prediction table with a ``label`` column (and TTA if present)."""
    labels = df["label"].to_numpy(dtype=np.int64)
    out = classification_metrics(df[list(LOGIT_COLS)].to_numpy(), labels)
    if set(TTA_PROB_COLS) <= set(df.columns):
        out["log_loss_tta"] = log_loss(df[list(TTA_PROB_COLS)].to_numpy(), labels)
    out["rows"] = int(len(df))
    return out
