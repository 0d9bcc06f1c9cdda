"""The competition metric and the numbers reported beside it (scores, and the cost of
computing them: throughput)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy.special import log_softmax, softmax

# Kaggle's log loss clips probabilities away from 0 and 1 like this.
EPS = 1e-15


def probs_from_logits(logits: np.ndarray) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean 3-class log loss (the competition metric); rows are renormalised after clipping."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    p = p / p.sum(axis=1, keepdims=True)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def log_loss_from_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    lp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(lp[np.arange(len(labels)), labels]))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def class_prior(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return counts / counts.sum()


def prior_log_loss(train_labels: np.ndarray, eval_labels: np.ndarray) -> float:
    """Log loss of always predicting the training rows' class mix: the floor to beat."""
    prior = class_prior(train_labels)
    return log_loss(np.tile(prior, (len(eval_labels), 1)), eval_labels)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs = probs_from_logits(logits)
    return {"log_loss": log_loss(probs, labels), "accuracy": accuracy(probs, labels)}


# --------------------------------------------------------------------------- throughput
# A "row" here is one sequence the model ran on: an A/B-swapped input counts on its own, so
# swap-TTA prediction counts two rows per id and a "full swap" training pair counts two.
# Tokens are non-pad tokens (the lengths of the examples' ``input_ids``).


def count_tokens(examples: Iterable[Mapping]) -> tuple[int, int]:
    """``(rows, tokens)`` of examples as ``train.examples_for`` / ``make_examples`` build them
    (``{"input_ids": [...], ...}``, or ``{"pair": [ex, ex], ...}`` for a full-swap pair, whose
    two members both count)."""
    rows = tokens = 0
    for ex in examples:
        for e in ex["pair"] if "pair" in ex else (ex,):
            rows += 1
            tokens += len(e["input_ids"])
    return rows, tokens


def _rate(count: float, seconds: float) -> float | None:
    """count / seconds over the seconds as reported (rounded to 1 ms), so that a reader who
    divides the reported numbers gets the reported rate; None when no time was measured."""
    seconds = round(float(seconds), 3)
    return round(count / seconds, 3) if seconds > 0 else None


def training_throughput(rows: int, tokens: int, seconds: float) -> dict[str, float | int | None]:
    """Training cost: ``rows`` / ``tokens`` actually processed (every epoch counted) over the
    train phase's ``seconds``. Rates are None when ``seconds`` is not positive."""
    return {
        "train_examples": int(rows),
        "train_tokens": int(tokens),
        "train_seconds": round(float(seconds), 3),
        "train_examples_per_s": _rate(rows, seconds),
        "train_tokens_per_s": _rate(tokens, seconds),
    }


def inference_throughput(rows: int, tokens: int, seconds: float) -> dict[str, float | int | None]:
    """Inference cost: ``rows`` sequences predicted (both orientations under swap-TTA) with
    ``tokens`` non-pad tokens in ``seconds``. Rates are None when ``seconds`` is not positive."""
    return {
        "rows": int(rows),
        "tokens": int(tokens),
        "seconds": round(float(seconds), 3),
        "rows_per_s": _rate(rows, seconds),
        "tokens_per_s": _rate(tokens, seconds),
    }
