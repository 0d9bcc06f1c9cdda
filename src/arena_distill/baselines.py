"""Classical baselines on the same rows and folds as the pipeline: the floor a model must beat.

- ``prior``: the training rows' class mix, predicted for every row.
- ``length_lr``: multinomial logistic regression on length features of the two answers.
- ``tfidf_lr``: the same with TF-IDF(answer A) − TF-IDF(answer B) added (the public
  "TF-IDF + linear model" baselines of the competition).
- ``embed_lr``: the length features with emb(A) − emb(B) added, the frozen sentence
  embeddings of each side (``embeddings.py``; ``stages.baselines.encoder``): a reward model
  with a frozen encoder and a linear head, each answer embedded on its own.

Both regressions are trained with swap augmentation (every row also added A/B-swapped with its
label mirrored), so they treat A and B alike. Features of a row are antisymmetric under the
swap except the symmetric ones (total length, turns), which is what lets the model predict ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import softmax
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from arena_distill.data.folds import split_by_fold
from arena_distill.data.swap import swap_table
from arena_distill.embeddings import EncoderSpec, row_embeddings
from arena_distill.features import _text, length_features  # noqa: F401 (re-exported)
from arena_distill.layout import LOGIT_COLS
from arena_distill.metrics import class_prior

BASELINES = ("prior", "length_lr", "tfidf_lr", "embed_lr")
N_CLASSES = 3


def absent_probability(n_rows: int, n_classes: int = N_CLASSES) -> float:
    """The probability given to a class the training rows never show (hh_harmless has no ties):
    add-one-half smoothing of its zero count over ``n_rows`` rows (Jeffreys prior)."""
    return 0.5 / (n_rows + 0.5 * n_classes)


def class_scores(scores: np.ndarray) -> np.ndarray:
    """A linear model's decision scores as one column per class it was fitted on: a binary
    regression's single column ``z`` becomes ``[0, z]`` (softmax of it = the sigmoid)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.shape[1] == 1:
        scores = np.column_stack([np.zeros(len(scores)), scores[:, 0]])
    return scores


def class_probs(
    scores: np.ndarray, classes: Sequence[int], floor: float, n_classes: int = N_CLASSES
) -> np.ndarray:
    """``(n, 3)`` probabilities from a linear model's decision scores over the classes it was
    fitted on (:func:`class_scores`, softmax, :func:`expand_classes`)."""
    return expand_classes(softmax(class_scores(scores), axis=1), classes, floor, n_classes)


def expand_classes(
    probs: np.ndarray, classes: Sequence[int], floor: float, n_classes: int = N_CLASSES
) -> np.ndarray:
    """``(n, len(classes))`` probabilities of the classes a model was fitted on as ``(n, 3)``:
    every absent class gets ``floor``, the fitted ones share the rest in their proportions."""
    classes = [int(c) for c in classes]
    probs = np.asarray(probs, dtype=np.float64)
    if classes == list(range(n_classes)):
        return probs
    out = np.full((len(probs), n_classes), float(floor))
    out[:, classes] = probs * (1.0 - floor * (n_classes - len(classes)))
    return out


@dataclass
class Baseline:
    """A fitted baseline: ``predict_proba(rows) -> (n, 3)`` in the rows' orientation."""

    name: str
    prior: np.ndarray | None = None
    scaler: StandardScaler | None = None
    tfidf: TfidfVectorizer | None = None
    model: LogisticRegression | None = None
    floor: float = 0.0  # the probability of a class the training rows lack (absent_probability)
    encoder: EncoderSpec | None = None  # embed_lr's sentence encoder

    def features(self, df: pd.DataFrame, *, fit: bool = False):
        dense = length_features(df)
        dense = self.scaler.fit_transform(dense) if fit else self.scaler.transform(dense)
        if self.encoder is not None:
            ea, eb = row_embeddings(self.encoder, df)
            return np.hstack([ea - eb, dense])
        if self.tfidf is None:
            return dense
        a = self.tfidf.transform([_text(t) for t in df["response_a"]])
        b = self.tfidf.transform([_text(t) for t in df["response_b"]])
        return sparse.hstack([a - b, sparse.csr_matrix(dense)]).tocsr()

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        if self.name == "prior":
            return np.tile(self.prior, (len(df), 1))
        probs = self.model.predict_proba(self.features(df))
        return expand_classes(probs, self.model.classes_, self.floor)


def fit_baseline(
    name: str,
    train: pd.DataFrame,
    *,
    c: float = 1.0,
    max_features: int = 20000,
    ngram_max: int = 2,
    seed: int = 2025,
    encoder: EncoderSpec | None = None,
) -> Baseline:
    """Fit baseline ``name`` on labelled rows ``train`` (swap-augmented for the regressions);
    ``encoder``: embed_lr's sentence encoder (the other baselines ignore it)."""
    labels = train["label"].to_numpy(dtype=np.int64)
    if name == "prior":
        return Baseline(name, prior=class_prior(labels))
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    if name == "embed_lr" and encoder is None:
        raise ValueError("baseline embed_lr needs an encoder (stages.baselines.encoder)")
    both = pd.concat([train, swap_table(train)], ignore_index=True)
    y = both["label"].to_numpy(dtype=np.int64)
    base = Baseline(name, scaler=StandardScaler())
    if name == "embed_lr":
        base.encoder = encoder
    if name == "tfidf_lr":
        base.tfidf = TfidfVectorizer(
            max_features=max_features, ngram_range=(1, ngram_max), sublinear_tf=True, min_df=2
        )
        base.tfidf.fit([_text(t) for col in ("response_a", "response_b") for t in train[col]])
    x = base.features(both, fit=True)
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"baseline {name}: the training rows have one class only ({int(y[0])}); "
            "a regression needs two"
        )
    # lbfgs's default tol (1e-4) stops TF-IDF LR far from its optimum, at a point that depends
    # on the BLAS thread count (llmeval2 holdout 1.0475 with 1 thread, 1.1034 with 2); at 1e-8
    # both reach 1.0198 (a few hundred iterations, seconds)
    base.model = LogisticRegression(C=c, max_iter=10000, tol=1e-8, random_state=seed)
    base.model.fit(x, y)
    # a class no training row has (a set without ties) gets a small smoothed probability
    base.floor = absent_probability(len(y)) if len(base.model.classes_) < N_CLASSES else 0.0
    return base


def baseline_options(settings, seed: int) -> dict:
    """``fit_baseline``'s keyword arguments from the ``stages.baselines`` settings (every stage
    that fits a baseline: baselines, dump_logits, stack)."""
    encoder = None
    if settings.encoder is not None:
        encoder = EncoderSpec(
            path=str(settings.encoder),
            max_length=int(settings.encoder_max_length),
            batch_size=int(settings.encoder_batch_size),
            prompt_words=int(settings.encoder_prompt_words),
            cache_dir=None if settings.embed_cache is None else str(settings.embed_cache),
        )
    return dict(
        c=settings.c,
        max_features=settings.max_features,
        ngram_max=settings.ngram_max,
        seed=int(seed),
        encoder=encoder,
    )


# ---------------------------------------------------------------------------------------------
# A baseline as a teacher (``pipeline.teachers: [baseline/<name>]``)
# ---------------------------------------------------------------------------------------------

BASELINE_TEACHER = "baseline/"  # a teacher named baseline/<name> is the classical baseline <name>


def baseline_of(teacher: str) -> str | None:
    """``<name>`` for a teacher named ``baseline/<name>``; None for a model config."""
    return teacher[len(BASELINE_TEACHER) :] if teacher.startswith(BASELINE_TEACHER) else None


def dump_overrides(teacher: str) -> list[str]:
    """The ``dump_logits`` overrides that write ``teacher``'s dump: ``model=<m>`` for a model
    config; for a classical teacher the baseline and its folder, where distill reads it."""
    name = baseline_of(teacher)
    if name is None:
        return [f"model={teacher}"]
    return [
        f"stages.dump_logits.baseline={name}",
        f"stages.dump_logits.out_dir=${{stages.distill.logits_dir}}/{teacher}",
    ]


def baseline_logits(probs: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Logits whose softmax is ``probs``: log-probabilities (clipped away from 0), centred per
    row (a softmax is blind to a shift)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0))
    return (logp - logp.mean(axis=1, keepdims=True)).astype(np.float32)


def fold_logit_table(
    name: str,
    labelled: pd.DataFrame,
    folds: pd.DataFrame,
    n_folds: int,
    *,
    in_sample: bool = True,
    out_of_fold: bool = False,
    orientations: Sequence[bool] = (False, True),
    **options,
) -> pd.DataFrame:
    """A baseline's logits in the layout of a transformer teacher's dump (``dump_logits``).

    For every fold k the baseline is fitted on fold k's training rows only, as the fold-k
    teacher is trained on them, and scores the same rows a teacher's fold-k model scores:
    fold k's training rows (``split=train``, in-sample, what the student of fold k learns from)
    and, with ``out_of_fold``, fold k's validation rows (``split=valid``). Each orientation is
    computed on the input in that orientation (the swapped rows are the A/B-swapped input, not
    mirrored). Columns: ``fold, id, swapped, split, logit_a, logit_b, logit_tie``.
    """
    parts = []
    for fold in range(n_folds):
        train_rows, valid_rows = split_by_fold(labelled, folds, fold)
        model = fit_baseline(name, train_rows, **options)
        splits = {"train": train_rows} if in_sample else {}
        if out_of_fold:
            splits["valid"] = valid_rows
        for split, rows in splits.items():
            for swapped in orientations:
                shown = swap_table(rows) if swapped else rows
                part = pd.DataFrame(
                    {"fold": fold, "id": rows["id"].astype(str).tolist(), "swapped": bool(swapped)}
                )
                part["split"] = split
                part[list(LOGIT_COLS)] = baseline_logits(model.predict_proba(shown))
                parts.append(part)
    return pd.concat(parts, ignore_index=True)
