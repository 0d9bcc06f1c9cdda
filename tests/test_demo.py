"""The demo data: Kaggle shapes, the promised quirks, determinism, and a learnable signal."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from arena_distill.data.schema import LABEL_COLUMNS
from arena_distill.demo import generate_demo

TRAIN_COLUMNS = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    paths = generate_demo(tmp_path_factory.mktemp("demo"))
    return {name: pd.read_csv(path) for name, path in paths.items()}


def _read_bytes(paths: dict) -> dict:
    return {name: path.read_bytes() for name, path in paths.items()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = _read_bytes(generate_demo(tmp_path / "a", n_train=200, n_test=50, seed=7))
    again = _read_bytes(generate_demo(tmp_path / "b", n_train=200, n_test=50, seed=7))
    other = _read_bytes(generate_demo(tmp_path / "c", n_train=200, n_test=50, seed=8))
    assert first == again
    assert all(first[name] != other[name] for name in first)


def test_files_have_kaggle_columns_and_sizes(demo):
    assert list(demo["train"].columns) == TRAIN_COLUMNS
    assert list(demo["test"].columns) == ["id", "prompt", "response_a", "response_b"]
    assert list(demo["sample_submission"].columns) == ["id", *LABEL_COLUMNS]
    assert list(demo["test_labels"].columns) == ["id", *LABEL_COLUMNS]
    assert len(demo["train"]) == 1500
    assert len(demo["test"]) == len(demo["test_labels"]) == 300
    assert np.allclose(demo["sample_submission"][list(LABEL_COLUMNS)].to_numpy(), 1 / 3)


def test_ids_are_unique_integers_and_files_agree(demo):
    ids = pd.concat([demo["train"]["id"], demo["test"]["id"]])
    assert ids.dtype.kind == "i" and ids.is_unique
    assert demo["sample_submission"]["id"].tolist() == demo["test"]["id"].tolist()
    assert demo["test_labels"]["id"].tolist() == demo["test"]["id"].tolist()


def test_labels_are_one_hot_with_about_30_percent_ties(demo):
    for name in ("train", "test_labels"):
        labels = demo[name][list(LABEL_COLUMNS)].to_numpy()
        assert set(np.unique(labels)) == {0, 1} and (labels.sum(axis=1) == 1).all()
    shares = demo["train"][list(LABEL_COLUMNS)].mean()
    assert 0.25 <= shares["winner_tie"] <= 0.35
    assert 0.28 <= shares["winner_model_a"] <= 0.42 and 0.28 <= shares["winner_model_b"] <= 0.42
    assert demo["train"][["model_a", "model_b"]].stack().nunique() == 15
    assert (demo["train"]["model_a"] != demo["train"]["model_b"]).all()


def test_cells_are_json_lists_with_multi_turn_nulls_empties_and_twins(demo):
    df = demo["train"]
    cells = {col: df[col].map(json.loads) for col in ("prompt", "response_a", "response_b")}
    turns = {col: cell.map(len) for col, cell in cells.items()}
    assert (turns["prompt"] == turns["response_a"]).all()
    assert (turns["prompt"] == turns["response_b"]).all()
    assert 0.08 <= (turns["prompt"] > 1).mean() <= 0.18 and turns["prompt"].max() == 3
    responses = pd.concat([cells["response_a"], cells["response_b"]])
    assert all(isinstance(s, str) for p in cells["prompt"] for s in p)
    assert responses.map(lambda turns: None in turns).sum() >= 5
    assert responses.map(lambda turns: turns == [""]).sum() >= 5
    assert (df["response_a"] == df["response_b"]).sum() >= 5
    words = [len(s.split()) for turns in responses for s in turns if s]
    assert min(words) <= 5 and max(words) >= 300


def _text(cells: pd.Series) -> pd.Series:
    return cells.map(lambda cell: "\n".join(turn or "" for turn in json.loads(cell)))


def test_a_bag_of_words_model_beats_the_prior(demo):
    """The labels must be learnable from the text: TF-IDF(A) - TF-IDF(B) + lengths, no names."""
    train = demo["train"]
    test = demo["test"].merge(demo["test_labels"], on="id")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    vec.fit(pd.concat([_text(train["response_a"]), _text(train["response_b"])]))

    def features(df: pd.DataFrame) -> sparse.csr_matrix:
        a, b = _text(df["response_a"]), _text(df["response_b"])
        len_a = np.log1p(a.str.split().str.len().to_numpy())
        len_b = np.log1p(b.str.split().str.len().to_numpy())
        lengths = np.c_[len_a - len_b, np.abs(len_a - len_b), len_a + len_b]
        return sparse.hstack([vec.transform(a) - vec.transform(b), lengths]).tocsr()

    y_train = train[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    y_test = test[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    model = LogisticRegression(max_iter=2000).fit(features(train), y_train)
    prior = np.bincount(y_train, minlength=3) / len(y_train)
    prior_loss = log_loss(y_test, np.tile(prior, (len(y_test), 1)), labels=[0, 1, 2])
    model_loss = log_loss(y_test, model.predict_proba(features(test)), labels=[0, 1, 2])
    assert model_loss <= prior_loss - 0.05
    assert model_loss >= 0.5  # learnable, not trivial
