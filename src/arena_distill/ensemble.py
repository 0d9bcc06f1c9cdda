"""The fold students' averaged predictions (``pipeline.final: folds``), no torch.

Every fold's student predicts every row (the predict stage with that fold's adapter); the final
prediction of a row is the mean of the folds' probabilities: the submitted ones (``final_p_*``,
after swap-TTA, fallbacks and post-processing), and the plain and TTA columns for the report.
A log loss is convex in the probabilities, so the average never scores worse than the mean of
its members' scores (Jensen); it costs one forward pass per fold (``planner``: ``n_models``).

:func:`write_ensemble` writes the averaged output folder; the ``ensemble`` stage and the Kaggle
predictor of a ``final: folds`` package (``kaggle.predict_csv``) both call it, so the two write
the same files from the same fold predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_distill.io import atomic_dir, write_json, write_manifest
from arena_distill.layout import (
    FINAL_COLS,
    LOGIT_COLS,
    PROB_COLS,
    SWAP_LOGIT_COLS,
    TTA_PROB_COLS,
)
from arena_distill.metrics import accuracy, log_loss, probs_from_logits
from arena_distill.submission import write_submission

AVERAGED = (PROB_COLS, TTA_PROB_COLS, FINAL_COLS)
# logits of the ensemble: the log of the folds' mean probability in that orientation (a
# log-probability is its own log-softmax), what the stack stage reads as the model's logits
LOGITS_AVERAGED = (LOGIT_COLS, SWAP_LOGIT_COLS)


def average_predictions(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per id of the first table: the mean over ``tables`` of every probability block
    all of them hold (``p_*``, ``tta_p_*``, ``final_p_*``), ``label`` kept when present.
    Every table must hold the same ids (any order)."""
    if not tables:
        raise ValueError("no prediction tables to average")
    ids = tables[0]["id"].astype(str).tolist()
    aligned = []
    for i, t in enumerate(tables):
        t = t.assign(id=t["id"].astype(str)).set_index("id")
        if t.index.duplicated().any() or set(t.index) != set(ids):
            raise ValueError(f"prediction table {i} does not hold the same ids as table 0")
        aligned.append(t.loc[ids])
    out = pd.DataFrame({"id": ids})
    if "label" in aligned[0].columns:
        out["label"] = aligned[0]["label"].to_numpy()
    for cols in AVERAGED:
        if all(set(cols) <= set(t.columns) for t in aligned):
            mean = np.mean([t[list(cols)].to_numpy(dtype=np.float64) for t in aligned], axis=0)
            out[list(cols)] = mean
    for cols in LOGITS_AVERAGED:
        if all(set(cols) <= set(t.columns) for t in aligned):
            probs = [probs_from_logits(t[list(cols)].to_numpy()) for t in aligned]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[list(cols)] = np.log(np.mean(probs, axis=0))
    if not set(FINAL_COLS) <= set(out.columns):
        raise ValueError(f"the tables do not all hold the submitted probabilities {FINAL_COLS}")
    out["n_models"] = len(tables)
    return out


def ensemble_metrics(table: pd.DataFrame, split: str, n_models: int) -> dict[str, Any]:
    """The rows, the models averaged and, when every row has a label, the log loss and
    accuracy of the plain, TTA and submitted probabilities."""
    metrics: dict[str, Any] = {"split": split, "rows": len(table), "models": int(n_models)}
    if "label" in table.columns and table["label"].notna().all():
        y = table["label"].astype(int).to_numpy()
        metrics["scores"] = {
            name: {
                "log_loss": log_loss(table[list(cols)].to_numpy(), y),
                "accuracy": accuracy(table[list(cols)].to_numpy(), y),
            }
            for name, cols in (("plain", PROB_COLS), ("tta", TTA_PROB_COLS), ("final", FINAL_COLS))
            if set(cols) <= set(table.columns)
        }
    return metrics


def write_ensemble(
    out_dir: str | Path,
    table: pd.DataFrame,
    *,
    metrics: Mapping[str, Any],
    manifest: Mapping[str, Any],
    sample_ids: Sequence[str] | None = None,
    clip_eps: float = 1e-6,
) -> Path:
    """``out_dir`` written atomically from an averaged table (:func:`average_predictions`):
    ``submission.csv`` (its ``final_p_*``, validated against its ids and ``sample_ids``),
    ``predictions.parquet``, ``metrics.json`` and ``manifest.json`` (``manifest``: the keyword
    arguments of ``io.write_manifest`` but the folder)."""
    out_dir = Path(out_dir)
    ids = table["id"].tolist()
    with atomic_dir(out_dir) as tmp:
        write_submission(
            tmp / "submission.csv",
            ids,
            table[list(FINAL_COLS)].to_numpy(),
            expected_ids=ids,
            sample_ids=sample_ids,
            clip_eps=float(clip_eps),
        )
        table.to_parquet(tmp / "predictions.parquet", index=False)
        write_json(tmp / "metrics.json", dict(metrics))
        write_manifest(tmp, **dict(manifest))
    return out_dir
