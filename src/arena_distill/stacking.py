"""Stacking: a level-2 multinomial logistic regression over the run's predictions.

The level-2 model (the *stacker*) reads, per row, a few feature blocks:

* ``student``: the log-softmax of the student's logits. Out of fold it is fold k's student on
  fold k's validation rows (``students/<m>/oof.parquet``); on the holdout and test rows it is the
  final model's logits (the merged / quantized student, ``holdout/<name>/predictions.parquet``,
  ``predictions/predictions.parquet``). That mapping is the only one the final model allows:
  the stacker learns how much to trust "a student of this recipe" on rows it never trained on.
* ``baseline/<name>``: the log-probabilities of a classical baseline (``baselines.py``); out of
  fold its OOF predictions, on holdout/test rows the baseline refitted on every training row
  (the baselines stage's holdout model), shipped as plain arrays (:func:`export_baseline`).
* ``length``: the length features of ``baselines.length_features``.

Teachers (and the CE-only student) are not features: dump_logits writes their logits on the cv
rows only, so neither the holdout, the test rows nor Kaggle have them, and a feature the final
model cannot be given must not be learnt.

Swap symmetry: the stacker is fitted on every OOF row and its A/B swap (the student's logits on
the swapped input, the baselines' mirrored probabilities — exact for them, their regressions are
fitted swap-augmented —, the swapped rows' length features, the mirrored label), so
``stacked+tta`` (the mean of the prediction and the mirrored prediction on the swapped row) is
the same swap-TTA the models use.

Cross-fitting (:func:`cross_fit`): the level-2 model that scores fold k's rows is fitted on the
other folds' OOF rows only, with its L2 strength chosen by a (random-split) cross-validation
over those rows only; no row is scored by a model that saw it. The stacker applied to holdout /
test rows is the same procedure on every OOF row: C chosen by the same cross-validation over
all of them, then fitted on all of them. ``stages.stack.inner_cv`` chooses that CV: ``random``
splits (default), ``folds`` (leave one fold out: each fit is scored on features of a fold model
it never saw, which is how the stacker meets the final model) or ``both`` (the mean). With 3
folds an inner fold-split fit sees a third of the rows and chooses a stronger L2 (C = 0.01 where
the outer folds favour C = 10): the cross-fitted log loss was 0.01-0.06 worse on llmeval2 and
pandalm. A run whose fold students differ in kind (one at the prior, the others not) broke the
random choice: a fresh union run's cross-fitted OOF scored 1.2485 with ``random``, 0.9344 with
``folds``; the fix that costs the other runs nothing is :func:`flat_folds`: such a fold's rows
are scored but never fitted on (0.9329; README, "Stacking").

Everything applied at test time is plain numpy (:class:`Stacker`, :func:`predict_exported`):
the Kaggle path needs no scikit-learn. The ``embed_lr`` baseline also runs its sentence encoder
(transformers, as the model does); the stacker folder ships a copy of it (``encoder/``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from arena_distill.baselines import (
    N_CLASSES,
    Baseline,
    _text,
    absent_probability,
    class_probs,
    length_features,
)
from arena_distill.data.swap import swap_table
from arena_distill.embeddings import EncoderSpec, row_embeddings
from arena_distill.metrics import log_loss
from arena_distill.settings import INNER_CV

STACKER_DIR = "stacker"  # the folder shipped beside a model (Kaggle)
STACKER_FILE = "stacker.json"
STACKER_FORMAT = 1
ENCODER_DIR = "encoder"  # embed_lr's sentence encoder, inside the stacker folder
STUDENT = "student"
LENGTH = "length"
BASELINE_PREFIX = "baseline/"
CLASSES = ("a", "b", "tie")
LENGTH_NAMES = (
    "words_diff",
    "chars_diff",
    "newlines_diff",
    "empty_diff",
    "abs_words_diff",
    "words_sum",
    "same",
    "turns",
)
EPS = 1e-7
# the smallest spread a feature is standardised by (log-probabilities in nats, log counts)
MIN_SCALE = 0.1
# what the student column of the OOF rows becomes on the rows the final model predicts
MAPPING = {
    STUDENT: "out of fold: fold k's student (students/<student>/oof.parquet logit_*) on fold k's "
    "validation rows; holdout / test / Kaggle: the final model's logits (the merged or quantized "
    "student's logit_*, its swap_logit_* for the swapped orientation)",
    BASELINE_PREFIX + "<name>": "out of fold: baselines/<name>/oof.parquet; holdout / test / "
    "Kaggle: the baseline refitted on every training row (cv and extra), shipped as "
    "baseline_<name>.npz",
    LENGTH: "baselines.length_features of the row (recomputed from the answers everywhere)",
}


def mirror_labels(labels: np.ndarray) -> np.ndarray:
    """Labels of the A/B-swapped rows: A <-> B, tie stays."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.where(labels == 0, 1, np.where(labels == 1, 0, labels))


def mirror(x: np.ndarray) -> np.ndarray:
    """(n, 3) per-class columns of the swapped rows: A <-> B."""
    return np.asarray(x)[:, [1, 0, 2]]


def _logp(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    return np.log(p / p.sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- features


@dataclass
class Features:
    """The level-2 inputs of some rows: ``x`` in the rows' orientation, ``x_swap`` on the
    A/B-swapped rows (None when the student has no swapped-input logits)."""

    names: list[str]
    x: np.ndarray
    x_swap: np.ndarray | None


def feature_names(baselines: Sequence[str], *, student: bool, length: bool) -> list[str]:
    names = [f"{STUDENT}:{c}" for c in CLASSES] if student else []
    for b in baselines:
        names += [f"{BASELINE_PREFIX}{b}:{c}" for c in CLASSES]
    if length:
        names += [f"{LENGTH}:{n}" for n in LENGTH_NAMES]
    return names


def build_features(
    rows: pd.DataFrame,
    *,
    student_logits: np.ndarray | None,
    student_swap_logits: np.ndarray | None,
    baseline_probs: Mapping[str, np.ndarray],
    length: bool,
) -> Features:
    """Features of ``rows`` (a normalised table: answers, empty flags, turns).

    ``student_logits``: (n, 3) on the rows as they are; ``student_swap_logits``: (n, 3) computed
    on the swapped input and mirrored back (``swap_logit_*`` of a prediction table), or None;
    ``baseline_probs``: name -> (n, 3) probabilities in the rows' orientation."""
    n = len(rows)
    blocks, swapped = [], []
    has_swap = student_logits is None or student_swap_logits is not None
    if student_logits is not None:
        blocks.append(log_softmax(np.asarray(student_logits, dtype=np.float64), axis=1))
        if student_swap_logits is not None:
            raw = mirror(np.asarray(student_swap_logits, dtype=np.float64))  # as computed
            swapped.append(log_softmax(raw, axis=1))
    for name, probs in baseline_probs.items():
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (n, 3):
            raise ValueError(f"baseline {name}: {probs.shape} predictions for {n} rows")
        blocks.append(_logp(probs))
        swapped.append(_logp(mirror(probs)))
    if length:
        blocks.append(length_features(rows))
        swapped.append(length_features(swap_table(rows)))
    names = feature_names(list(baseline_probs), student=student_logits is not None, length=length)
    x = np.column_stack(blocks) if blocks else np.zeros((n, 0))
    x_swap = (np.column_stack(swapped) if swapped else np.zeros((n, 0))) if has_swap else None
    if x.shape[1] != len(names):
        raise AssertionError(f"{x.shape[1]} feature columns for {len(names)} names")
    return Features(names, x, x_swap)


# --------------------------------------------------------------------------- the stacker


@dataclass
class Stacker:
    """A fitted level-2 model: standardise, then multinomial logits; plain numpy."""

    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (K, F): one row per fitted class (one row for a binary regression)
    intercept: np.ndarray  # (K,)
    c: float | None  # None: a passthrough (one input's own probabilities)
    passthrough: str | None = None  # that input's block name
    # the classes the rows showed (a set without ties: [0, 1]); the others get ``floor``
    classes: tuple[int, ...] = (0, 1, 2)
    floor: float = 0.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n, K) decision scores (a binary regression's: one column)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return z @ self.coef.T + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return class_probs(self.logits(x), self.classes, self.floor)

    def predict(self, feats: Features) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, swap-TTA probabilities or None) of ``feats``."""
        p = self.predict_proba(feats.x)
        if feats.x_swap is None:
            return p, None
        return p, (p + mirror(self.predict_proba(feats.x_swap))) / 2

    def to_dict(self) -> dict:
        return {
            "features": list(self.features),
            "classes": list(CLASSES),
            "c": None if self.c is None else float(self.c),
            "passthrough": self.passthrough,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "fitted_classes": list(self.classes),
            "floor": float(self.floor),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Stacker:
        return cls(
            features=list(d["features"]),
            mean=np.asarray(d["mean"], dtype=np.float64),
            scale=np.asarray(d["scale"], dtype=np.float64),
            coef=np.asarray(d["coef"], dtype=np.float64),
            intercept=np.asarray(d["intercept"], dtype=np.float64),
            c=None if d["c"] is None else float(d["c"]),
            passthrough=d.get("passthrough"),
            classes=tuple(int(k) for k in d.get("fitted_classes", range(N_CLASSES))),
            floor=float(d.get("floor", 0.0)),
        )


def _augmented(feats: Features, labels: np.ndarray, idx: np.ndarray):
    x, y = feats.x[idx], np.asarray(labels, dtype=np.int64)[idx]
    if feats.x_swap is None:
        return x, y
    return np.vstack([x, feats.x_swap[idx]]), np.concatenate([y, mirror_labels(y)])


def fit_stacker(
    feats: Features, labels: np.ndarray, idx: np.ndarray, *, c: float, seed: int
) -> Stacker:
    """Fit on rows ``idx`` (and their swaps when the features have them)."""
    x, y = _augmented(feats, labels, idx)
    scaler = StandardScaler().fit(x)
    # a feature that barely moves over the training rows is not blown up to unit spread: a
    # student at the prior (hh_harmless: log-probabilities with a spread of ~0.003) differs
    # between its OOF fold models and the final model it is applied to by more than that, and
    # standardised its tiny shift swung the holdout prediction (log loss 1.19 against 0.69)
    scale = np.maximum(scaler.scale_.astype(np.float64), MIN_SCALE)
    if len(np.unique(y)) < 2:
        raise ValueError(f"the stacker's training rows have one class only ({int(y[0])})")
    model = LogisticRegression(C=c, max_iter=10000, tol=1e-8, random_state=seed)
    model.fit((x - scaler.mean_) / scale, y)
    classes = tuple(int(k) for k in model.classes_)
    return Stacker(
        features=list(feats.names),
        mean=scaler.mean_.astype(np.float64),
        scale=scale,
        coef=model.coef_.astype(np.float64),
        intercept=model.intercept_.astype(np.float64),
        c=float(c),
        classes=classes,
        # a class none of the rows has (a set without ties): a small smoothed probability
        floor=absent_probability(len(y)) if len(classes) < N_CLASSES else 0.0,
    )


def _split_labels(
    idx: np.ndarray, inner: str, n_splits: int, seed: int, groups: np.ndarray | None
) -> list[np.ndarray]:
    """The splits (a split label per row of ``idx``) of the CV choosing C: ``n_splits`` random
    splits, the row groups (leave one group out; needs two groups among ``idx``), or both."""
    schemes = []
    if inner in ("folds", "both") and groups is not None:
        g = np.asarray(groups)[idx]
        if len(np.unique(g)) >= 2:
            schemes.append(np.unique(g, return_inverse=True)[1])
    if inner in ("random", "both") or not schemes:
        schemes.append(np.random.default_rng(seed).permutation(len(idx)) % n_splits)
    return schemes


def choose_c(
    feats: Features,
    labels: np.ndarray,
    idx: np.ndarray,
    cs: Sequence[float],
    *,
    n_splits: int,
    seed: int,
    groups: np.ndarray | None = None,
    inner: str = "random",
) -> tuple[float, dict[str, float]]:
    """The L2 strength among ``cs`` with the lowest cross-validated log loss over rows ``idx``
    only; with the score per C. ``inner`` (:data:`INNER_CV`): ``random``, ``n_splits`` random
    splits drawn with ``seed``; ``folds``, leave one of ``groups`` out (a label per row of
    ``feats``: the fold whose model made the row's features; random splits when ``idx`` holds
    one group only); ``both``, a C's score is the mean of the two: it must do well on rows of
    the fold models it was fitted on and on a fold model it never saw."""
    if inner not in INNER_CV:
        raise ValueError(f"inner CV {inner!r}: one of {INNER_CV}")
    idx = np.asarray(idx, dtype=np.int64)
    if len(cs) == 1:
        return float(cs[0]), {}
    y = np.asarray(labels, dtype=np.int64)
    scores: dict[str, float] = {}
    for c in cs:
        losses = []
        for split in _split_labels(idx, inner, n_splits, seed, groups):
            probs = np.zeros((len(idx), 3))
            for g in np.unique(split):
                valid, train = split == g, split != g
                stacker = fit_stacker(feats, labels, idx[train], c=c, seed=seed)
                probs[valid] = stacker.predict_proba(feats.x[idx[valid]])
            losses.append(log_loss(probs, y[idx]))
        scores[repr(float(c))] = float(np.mean(losses))
    best = min(cs, key=lambda c: scores[repr(float(c))])
    return float(best), scores


def blocks_of(names: Sequence[str]) -> list[str]:
    """The inputs with probabilities of their own (``student``, ``baseline/<name>``)."""
    heads = dict.fromkeys(n.split(":")[0] for n in names if ":" in n)
    return [b for b in heads if b != LENGTH and all(f"{b}:{c}" in names for c in CLASSES)]


def passthrough_stacker(names: Sequence[str], block: str) -> Stacker:
    """The stacker that returns input ``block``'s own probabilities (softmax of its log-probs)."""
    f = len(names)
    coef = np.zeros((3, f))
    for k, c in enumerate(CLASSES):
        coef[k, list(names).index(f"{block}:{c}")] = 1.0
    return Stacker(list(names), np.zeros(f), np.ones(f), coef, np.zeros(3), None, block)


def select_and_fit(
    feats: Features,
    labels: np.ndarray,
    idx: np.ndarray,
    cs: Sequence[float],
    *,
    n_splits: int,
    seed: int,
    passthrough: bool,
    groups: np.ndarray | None = None,
    inner: str = "random",
) -> tuple[Stacker, str, dict[str, float]]:
    """The stacker for rows ``idx``: the regression at the C of :func:`choose_c`, fitted on
    them, or with ``passthrough`` one input's own probabilities when its log loss on those rows
    (out of fold already) beats the regression's cross-validated one. (stacker, what was
    chosen, every candidate's score)."""
    split = dict(n_splits=n_splits, seed=seed, groups=groups, inner=inner)
    c, scores = choose_c(feats, labels, idx, cs, **split)
    scores = {f"C={k}": v for k, v in scores.items()}
    if passthrough:
        y = np.asarray(labels, dtype=np.int64)[idx]
        if len(cs) == 1:  # no CV was needed to choose C: score it now
            _, one = choose_c(feats, labels, idx, [c, c], **split)
            scores[f"C={c!r}"] = one[repr(float(c))]
        for block in blocks_of(feats.names):
            stacker = passthrough_stacker(feats.names, block)
            scores[block] = log_loss(stacker.predict_proba(feats.x[idx]), y)
        best = min(scores, key=scores.get)
        if not best.startswith("C="):
            return passthrough_stacker(feats.names, best), best, scores
    return fit_stacker(feats, labels, idx, c=c, seed=seed), f"C={c!r}", scores


def student_spreads(feats: Features, folds: np.ndarray) -> dict[int, float]:
    """Per fold: how much the student's OOF log-probabilities move over the fold's rows (the
    largest of the three columns' standard deviations); {} without a student block."""
    cols = [feats.names.index(f"{STUDENT}:{c}") for c in CLASSES if f"{STUDENT}:{c}" in feats.names]
    if len(cols) != len(CLASSES):
        return {}
    folds = np.asarray(folds)
    return {
        int(k): float(feats.x[folds == k][:, cols].std(axis=0).max())
        for k in sorted(set(folds.tolist()))
    }


def flat_folds(spreads: Mapping[int, float], ratio: float) -> list[int]:
    """The folds whose student barely moves next to the others' (spread < ``ratio`` x the
    largest fold's): a fold model that stayed at the prior while the others learned. Its rows'
    student features mean something else than the other folds' (constant vs informative), so
    the stacker is not fitted on them (they are still scored). Never every fold."""
    if not spreads or ratio <= 0:
        return []
    top = max(spreads.values())
    return [k for k, v in spreads.items() if v < ratio * top]


@dataclass
class CrossFit:
    """Cross-fitted level-2 predictions of every OOF row."""

    probs: np.ndarray
    tta_probs: np.ndarray | None
    choices: list[str]  # per fold: "C=<c>" or the input passed through
    fold_log_loss: list[float]


def cross_fit(
    feats: Features,
    labels: np.ndarray,
    folds: np.ndarray,
    cs: Sequence[float],
    *,
    n_splits: int,
    seed: int,
    passthrough: bool = False,
    inner: str = "random",
    skip_folds: Sequence[int] = (),
) -> CrossFit:
    """Fold k's rows scored by a stacker fitted (and chosen: :func:`select_and_fit`, its C by
    the ``inner`` CV over those rows, grouped by their folds) on the other folds' rows only;
    not on the rows of ``skip_folds`` (:func:`flat_folds`) unless no other rows are left."""
    folds = np.asarray(folds, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    probs = np.zeros((len(y), 3))
    tta = np.zeros((len(y), 3)) if feats.x_swap is not None else None
    choices, scores = [], []
    for k in sorted(set(folds.tolist())):
        valid = np.flatnonzero(folds == k)
        train = np.flatnonzero((folds != k) & ~np.isin(folds, list(skip_folds)))
        if len(train) == 0:
            train = np.flatnonzero(folds != k)
        stacker, choice, _ = select_and_fit(
            feats,
            y,
            train,
            cs,
            n_splits=n_splits,
            seed=seed,
            passthrough=passthrough,
            groups=folds,
            inner=inner,
        )
        sub = Features(
            feats.names, feats.x[valid], None if feats.x_swap is None else feats.x_swap[valid]
        )
        p, pt = stacker.predict(sub)
        probs[valid] = p
        if tta is not None:
            tta[valid] = pt
        choices.append(choice)
        scores.append(log_loss(p, y[valid]))
    return CrossFit(probs, tta, choices, scores)


# --------------------------------------------------------------------------- baselines as arrays

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern


def export_baseline(base: Baseline) -> dict[str, np.ndarray]:
    """A fitted baseline as plain arrays (``np.savez``; loads with ``allow_pickle=False``)."""
    if base.name == "prior":
        return {"name": np.array(base.name), "prior": np.asarray(base.prior, dtype=np.float64)}
    out = {
        "name": np.array(base.name),
        "scaler_mean": base.scaler.mean_.astype(np.float64),
        "scaler_scale": base.scaler.scale_.astype(np.float64),
        "coef": base.model.coef_.astype(np.float64),
        "intercept": base.model.intercept_.astype(np.float64),
        "classes": np.asarray(base.model.classes_, dtype=np.int64),
        "floor": np.asarray(base.floor, dtype=np.float64),
    }
    if base.encoder is not None:
        enc = base.encoder
        out["encoder"] = np.array(enc.path)
        out["encoder_max_length"] = np.asarray(enc.max_length, dtype=np.int64)
        out["encoder_batch_size"] = np.asarray(enc.batch_size, dtype=np.int64)
        out["encoder_prompt_words"] = np.asarray(enc.prompt_words, dtype=np.int64)
        out["n_embed"] = np.asarray(out["coef"].shape[1] - len(out["scaler_mean"]), dtype=np.int64)
    if base.tfidf is not None:
        tf = base.tfidf
        if not (tf.lowercase and tf.sublinear_tf and tf.use_idf and tf.norm == "l2"):
            raise ValueError("only lowercased, sublinear, l2-normalised TF-IDF is exported")
        if tf.analyzer != "word" or tf.token_pattern != _TOKEN.pattern or tf.stop_words:
            raise ValueError("only the default word analyzer is exported")
        vocab = sorted(tf.vocabulary_.items(), key=lambda kv: kv[1])
        out["vocab"] = np.array([t for t, _ in vocab], dtype=str)
        out["idf"] = tf.idf_.astype(np.float64)
        out["ngram_range"] = np.asarray(tf.ngram_range, dtype=np.int64)
    return out


def _terms(text: str, ngram_range: tuple[int, int]) -> list[str]:
    tokens = _TOKEN.findall(text.lower())
    lo, hi = ngram_range
    out = []
    for n in range(lo, min(hi, len(tokens)) + 1):
        out += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return out


def _tfidf_rows(texts: Sequence[str], index: Mapping[str, int], idf, ngram_range):
    """Per text: (column indices, l2-normalised sublinear tf-idf values)."""
    out = []
    for text in texts:
        counts: dict[int, int] = {}
        for term in _terms(text, ngram_range):
            j = index.get(term)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        vals = (np.log(np.fromiter(counts.values(), dtype=np.float64)) + 1.0) * idf[cols]
        norm = np.sqrt(np.sum(vals * vals))
        out.append((cols, vals / norm if norm > 0 else vals))
    return out


def predict_exported(arrays: Mapping[str, np.ndarray], rows: pd.DataFrame) -> np.ndarray:
    """:func:`export_baseline`'s arrays applied to ``rows``: ``Baseline.predict_proba``."""
    if "prior" in arrays:
        return np.tile(np.asarray(arrays["prior"], dtype=np.float64), (len(rows), 1))
    dense = (length_features(rows) - arrays["scaler_mean"]) / arrays["scaler_scale"]
    coef = np.asarray(arrays["coef"], dtype=np.float64)
    classes = arrays["classes"] if "classes" in arrays else np.arange(N_CLASSES)
    floor = float(arrays["floor"]) if "floor" in arrays else 0.0
    if "n_embed" in arrays:  # embed_lr: the encoder's embeddings of both sides
        spec = EncoderSpec(
            path=str(arrays["encoder"]),
            max_length=int(arrays["encoder_max_length"]),
            batch_size=int(arrays["encoder_batch_size"]),
            prompt_words=int(arrays["encoder_prompt_words"]),
        )
        ea, eb = row_embeddings(spec, rows)
        d = int(arrays["n_embed"])
        logits = (ea - eb) @ coef[:, :d].T + dense @ coef[:, d:].T + arrays["intercept"]
        return class_probs(logits, classes, floor)
    if "vocab" not in arrays:
        return class_probs(dense @ coef.T + arrays["intercept"], classes, floor)
    n_vocab = len(arrays["vocab"])
    index = {str(t): j for j, t in enumerate(arrays["vocab"])}
    ngram = tuple(int(v) for v in arrays["ngram_range"])
    idf = np.asarray(arrays["idf"], dtype=np.float64)
    side_a = _tfidf_rows([_text(t) for t in rows["response_a"]], index, idf, ngram)
    side_b = _tfidf_rows([_text(t) for t in rows["response_b"]], index, idf, ngram)
    text_coef = coef[:, :n_vocab]
    logits = dense @ coef[:, n_vocab:].T + arrays["intercept"]
    for i, ((ca, va), (cb, vb)) in enumerate(zip(side_a, side_b, strict=True)):
        logits[i] += text_coef[:, ca] @ va - text_coef[:, cb] @ vb
    return class_probs(logits, classes, floor)


# --------------------------------------------------------------------------- the shipped folder


def save_stacker_dir(
    folder: str | Path,
    stacker: Stacker,
    baselines: Mapping[str, Mapping[str, np.ndarray]],
    *,
    length: bool,
    student: bool,
    extra: Mapping | None = None,
) -> Path:
    """``stacker.json`` (weights, feature names, mapping) and ``baseline_<name>.npz``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arrays in baselines.items():
        arrays = dict(arrays)
        if "encoder" in arrays:
            # embed_lr's encoder ships with the stacker (the Kaggle path has no other copy)
            source = Path(str(arrays["encoder"]))
            if not (folder / ENCODER_DIR).is_dir():
                shutil.copytree(
                    source, folder / ENCODER_DIR, ignore=shutil.ignore_patterns(".*", "README.md")
                )
            arrays["encoder"] = np.array(ENCODER_DIR)  # relative to the stacker folder
        np.savez(folder / f"baseline_{name}.npz", **arrays)
    data = {
        "format": STACKER_FORMAT,
        **stacker.to_dict(),
        "student": student,
        "baselines": list(baselines),
        "length": length,
        "mapping": MAPPING,
        **dict(extra or {}),
    }
    (folder / STACKER_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return folder


@dataclass
class ShippedStacker:
    """A stacker folder read back: what the Kaggle path applies."""

    stacker: Stacker
    baselines: dict[str, dict[str, np.ndarray]]
    length: bool
    student: bool

    def features(
        self, rows: pd.DataFrame, logits: np.ndarray | None, swap_logits: np.ndarray | None
    ) -> Features:
        feats = build_features(
            rows,
            student_logits=logits if self.student else None,
            student_swap_logits=swap_logits if self.student else None,
            baseline_probs={n: predict_exported(a, rows) for n, a in self.baselines.items()},
            length=self.length,
        )
        if feats.names != self.stacker.features:
            raise ValueError(f"features {feats.names} differ from {self.stacker.features}")
        return feats

    def predict(
        self, rows: pd.DataFrame, logits: np.ndarray | None, swap_logits: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return self.stacker.predict(self.features(rows, logits, swap_logits))


def load_stacker_dir(folder: str | Path) -> ShippedStacker:
    folder = Path(folder)
    data = json.loads((folder / STACKER_FILE).read_text())
    if data.get("format") != STACKER_FORMAT:
        raise ValueError(f"{folder / STACKER_FILE}: format {data.get('format')!r}")
    baselines = {}
    for name in data["baselines"]:
        with np.load(folder / f"baseline_{name}.npz", allow_pickle=False) as z:
            baselines[name] = {k: z[k] for k in z.files}
        if "encoder" in baselines[name]:
            baselines[name]["encoder"] = np.array(str(folder / str(baselines[name]["encoder"])))
    return ShippedStacker(
        Stacker.from_dict(data), baselines, bool(data["length"]), bool(data["student"])
    )
