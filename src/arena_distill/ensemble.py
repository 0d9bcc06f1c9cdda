"""The fold students' averaged predictions (``pipeline.final: folds``), no torch.

Every fold's student predicts every row (the predict stage with that fold's adapter); the final
prediction of a row is the mean of the folds' probabilities: the submitted ones (``final_p_*``,
after swap-TTA, fallbacks and post-processing), and the plain and TTA columns for the report.
A log loss is convex in the probabilities, so the average never scores worse than the mean of
its members' scores (Jensen); it costs one forward pass per fold (``planner``: ``n_models``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from arena_distill.layout import (
    FINAL_COLS,
    LOGIT_COLS,
    PROB_COLS,
    SWAP_LOGIT_COLS,
    TTA_PROB_COLS,
)
from arena_distill.metrics import probs_from_logits

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
