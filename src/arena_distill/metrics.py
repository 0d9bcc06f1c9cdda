"""The competition metric and the numbers reported beside it."""

from __future__ import annotations

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
