"""Scores of one stage's predictions: per-class and per-fold log loss, the class prior,
calibration bins, temperature scaling (cross-fitted over the folds, so it stays OOF) and the
log loss per bucket (length difference, number of turns, tie or not)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from arena_distill.metrics import EPS, class_prior, log_loss
from arena_distill.report.load import CLASSES, OOF, TS_SUFFIX, StagePredictions

N_TURN_BUCKETS = ("1", "2", "3+")


# --------------------------------------------------------------------------- scores


def per_class_log_loss(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """The mean log loss over the rows of each true class (None when a class has no rows)."""
    labels = np.asarray(labels)
    return {
        c: (log_loss(probs[labels == k], labels[labels == k]) if (labels == k).any() else None)
        for k, c in enumerate(CLASSES)
    }


def fold_log_loss(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> list[float]:
    """Log loss of each fold's rows, folds in increasing order."""
    return [log_loss(probs[folds == k], labels[folds == k]) for k in np.unique(folds)]


def prior_probs(train_labels: np.ndarray, n: int) -> np.ndarray:
    return np.tile(class_prior(train_labels), (n, 1))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Per class: mean predicted probability, observed frequency and count in equal-width
    bins of the predicted probability; ``ece`` is the count-weighted mean |gap| over the
    classes' bins (the classwise expected calibration error)."""
    edges = np.linspace(0, 1, n_bins + 1)
    out: dict = {"edges": edges.tolist(), "classes": {}}
    gaps, total = 0.0, 0
    for k, c in enumerate(CLASSES):
        p = probs[:, k]
        hit = (labels == k).astype(np.float64)
        b = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        mean_p, freq, count = [], [], []
        for i in range(n_bins):
            m = b == i
            count.append(int(m.sum()))
            mean_p.append(float(p[m].mean()) if m.any() else None)
            freq.append(float(hit[m].mean()) if m.any() else None)
            if m.any():
                gaps += m.sum() * abs(p[m].mean() - hit[m].mean())
        total += len(p)
        out["classes"][c] = {"mean_p": mean_p, "freq": freq, "count": count}
    out["ece"] = float(gaps / total) if total else None
    return out


def scaled_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of softmax(logits / T) (searched in log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / math.exp(log_t), axis=1)[rows, labels]))

    res = minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def _ts_input(sp: StagePredictions) -> np.ndarray:
    """Logits when the stage has them, else log-probabilities (the same softmax)."""
    if sp.logits is not None:
        return np.asarray(sp.logits, dtype=np.float64)
    return np.log(np.clip(sp.probs, EPS, 1.0))


def temperature_scale(sp: StagePredictions) -> tuple[StagePredictions, dict]:
    """``<stage>+ts``: temperature scaling cross-fitted over the folds.

    For each fold k, T is fitted on the other folds' OOF rows and applied to fold k's rows,
    so the scaled score is still out-of-fold. ``temperature`` (fitted on all rows) is what a
    whole-data model would use; it is reported, never applied to anything else.
    """
    if sp.section != OOF or sp.folds is None:
        raise ValueError("temperature scaling is fitted on OOF predictions only")
    z = _ts_input(sp)
    probs = np.empty_like(sp.probs)
    fold_t = []
    for k in np.unique(sp.folds):
        test = sp.folds == k
        t = fit_temperature(z[~test], sp.labels[~test]) if (~test).any() else 1.0
        fold_t.append(t)
        probs[test] = scaled_probs(z[test], t)
    t_all = fit_temperature(z, sp.labels)
    scaled = StagePredictions(
        sp.name + TS_SUFFIX, OOF, sp.ids, sp.labels, probs, sp.folds, None, sp.source
    )
    info = {
        "temperature": t_all,
        "fold_temperatures": fold_t,
        "method": "cross-fitted: each fold scaled with T fitted on the other folds",
        "log_loss_before": log_loss(sp.probs, sp.labels),
        "log_loss": log_loss(probs, sp.labels),
        "log_loss_in_sample": log_loss(scaled_probs(z, t_all), sp.labels),
    }
    return scaled, info


# --------------------------------------------------------------------------- buckets


def _words(turns) -> int:
    return sum(len(str(t).split()) for t in (turns if turns is not None else []))


def bucket_features(train: pd.DataFrame, n_len_buckets: int = 5) -> pd.DataFrame:
    """Per id: ``len_diff`` (words of A minus words of B, all turns) and its quantile bucket,
    ``turns`` bucket (1, 2, 3+) and ``tie`` bucket (tie / non-tie). Quantile edges come from
    all the rows given (cv and holdout alike), so both sections share the buckets."""
    diff = np.array(
        [
            _words(a) - _words(b)
            for a, b in zip(train["response_a"], train["response_b"], strict=True)
        ],
        dtype=np.int64,
    )
    if len(diff) and n_len_buckets > 1:
        qs = np.unique(np.quantile(diff, np.linspace(0, 1, n_len_buckets + 1)))
    else:
        qs = np.array([diff.min(), diff.max()] if len(diff) else [0, 0])
    inner = qs[1:-1]
    idx = np.searchsorted(inner, diff, side="right")
    bounds = [-np.inf, *inner.tolist(), np.inf]
    names = [
        f"{_fmt_edge(bounds[i])} ≤ d < {_fmt_edge(bounds[i + 1])}" for i in range(len(bounds) - 1)
    ]
    len_bucket = [f"{i + 1}: {names[i]}" for i in idx]
    n_turns = train["n_turns"].to_numpy(dtype=np.int64)
    turns = np.where(n_turns <= 1, "1", np.where(n_turns == 2, "2", "3+"))
    label = pd.to_numeric(train["label"], errors="coerce").to_numpy()
    return pd.DataFrame(
        {
            "id": train["id"].astype(str).to_numpy(),
            "len_diff": diff,
            "len_diff_bucket": len_bucket,
            "turns": turns,
            "tie": np.where(label == 2, "tie", "non-tie"),
        }
    ).set_index("id")


def _fmt_edge(x: float) -> str:
    if np.isinf(x):
        return "-∞" if x < 0 else "∞"
    return f"{x:g}"


BUCKET_KINDS = {"len_diff": "len_diff_bucket", "turns": "turns", "tie": "tie"}


def bucket_log_loss(sp: StagePredictions, features: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """``{kind: {bucket: {"n": rows, "log_loss": ...}}}`` for the kinds of ``BUCKET_KINDS``;
    each kind partitions the stage's rows."""
    feats = features.loc[sp.ids]
    out: dict[str, dict[str, dict]] = {}
    for kind, col in BUCKET_KINDS.items():
        values = feats[col].to_numpy()
        out[kind] = {}
        for b in sorted(set(values), key=_bucket_order):
            m = values == b
            out[kind][str(b)] = {
                "n": int(m.sum()),
                "log_loss": log_loss(sp.probs[m], sp.labels[m]),
            }
    return out


def _bucket_order(b: str):
    head = b.split(":")[0]
    return (0, int(head)) if head.isdigit() else (1, b)
