"""Classical baselines on the same rows and folds as the pipeline: the floor a model must beat.

- ``prior``: the training rows' class mix, predicted for every row.
- ``length_lr``: multinomial logistic regression on length features of the two answers.
- ``tfidf_lr``: the same with TF-IDF(answer A) − TF-IDF(answer B) added (the public
  "TF-IDF + linear model" baselines of the competition).

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
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from arena_distill.data.swap import swap_table
from arena_distill.metrics import class_prior

BASELINES = ("prior", "length_lr", "tfidf_lr")


def _text(turns: Sequence[str]) -> str:
    return "\n".join(t or "" for t in turns)


def length_features(df: pd.DataFrame) -> np.ndarray:
    """Per row: log word counts of A and B, their difference and ratio, characters, newlines,
    empty flags (antisymmetric parts change sign under the swap), total length and turns."""
    a = [_text(t) for t in df["response_a"]]
    b = [_text(t) for t in df["response_b"]]
    wa = np.log1p([len(x.split()) for x in a])
    wb = np.log1p([len(x.split()) for x in b])
    ca = np.log1p([len(x) for x in a])
    cb = np.log1p([len(x) for x in b])
    na = np.log1p([x.count("\n") for x in a])
    nb = np.log1p([x.count("\n") for x in b])
    ea = df["empty_a"].to_numpy(dtype=float)
    eb = df["empty_b"].to_numpy(dtype=float)
    same = np.array([x.strip() == y.strip() for x, y in zip(a, b, strict=True)], dtype=float)
    return np.column_stack(
        [
            wa - wb,
            ca - cb,
            na - nb,
            ea - eb,
            np.abs(wa - wb),
            wa + wb,
            same,
            np.log1p(df["n_turns"].to_numpy(dtype=float)),
        ]
    )


@dataclass
class Baseline:
    """A fitted baseline: ``predict_proba(rows) -> (n, 3)`` in the rows' orientation."""

    name: str
    prior: np.ndarray | None = None
    scaler: StandardScaler | None = None
    tfidf: TfidfVectorizer | None = None
    model: LogisticRegression | None = None

    def features(self, df: pd.DataFrame, *, fit: bool = False):
        dense = length_features(df)
        dense = self.scaler.fit_transform(dense) if fit else self.scaler.transform(dense)
        if self.tfidf is None:
            return dense
        a = self.tfidf.transform([_text(t) for t in df["response_a"]])
        b = self.tfidf.transform([_text(t) for t in df["response_b"]])
        return sparse.hstack([a - b, sparse.csr_matrix(dense)]).tocsr()

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        if self.name == "prior":
            return np.tile(self.prior, (len(df), 1))
        return self.model.predict_proba(self.features(df))


def fit_baseline(
    name: str,
    train: pd.DataFrame,
    *,
    c: float = 1.0,
    max_features: int = 20000,
    ngram_max: int = 2,
    seed: int = 2025,
) -> Baseline:
    """Fit baseline ``name`` on labelled rows ``train`` (swap-augmented for the regressions)."""
    labels = train["label"].to_numpy(dtype=np.int64)
    if name == "prior":
        return Baseline(name, prior=class_prior(labels))
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    both = pd.concat([train, swap_table(train)], ignore_index=True)
    y = both["label"].to_numpy(dtype=np.int64)
    base = Baseline(name, scaler=StandardScaler())
    if name == "tfidf_lr":
        base.tfidf = TfidfVectorizer(
            max_features=max_features, ngram_range=(1, ngram_max), sublinear_tf=True, min_df=2
        )
        base.tfidf.fit([_text(t) for col in ("response_a", "response_b") for t in train[col]])
    x = base.features(both, fit=True)
    base.model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    base.model.fit(x, y)
    return base
