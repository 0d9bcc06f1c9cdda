"""Classical baselines: the prior, and swap-augmented logistic regressions that treat A and B alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_distill.baselines import fit_baseline, length_features
from arena_distill.data.readers import read_competition
from arena_distill.data.summary import DataSummary
from arena_distill.data.swap import mirror_probs, swap_table
from arena_distill.demo import generate_demo
from arena_distill.metrics import log_loss, prior_log_loss


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    paths = generate_demo(tmp_path_factory.mktemp("b"), n_train=400, n_test=10, seed=3)
    rows = read_competition(paths["train"], summary=DataSummary(), source="demo")
    return rows.iloc[:300].reset_index(drop=True), rows.iloc[300:].reset_index(drop=True)


def test_prior_predicts_the_class_mix(demo):
    train, valid = demo
    probs = fit_baseline("prior", train).predict_proba(valid)
    y_train, y_valid = train["label"].astype(int), valid["label"].astype(int)
    assert log_loss(probs, y_valid) == pytest.approx(prior_log_loss(y_train, y_valid))


@pytest.mark.parametrize("name", ["length_lr", "tfidf_lr"])
def test_regressions_are_swap_symmetric_and_beat_the_prior(demo, name):
    train, valid = demo
    model = fit_baseline(name, train)
    probs = model.predict_proba(valid)
    swapped = model.predict_proba(swap_table(valid))
    np.testing.assert_allclose(mirror_probs(swapped), probs, atol=2e-3)
    y_train, y_valid = train["label"].astype(int), valid["label"].astype(int)
    assert log_loss(probs, y_valid) < prior_log_loss(y_train, y_valid) - 0.05


def test_length_features_are_antisymmetric_where_they_should_be(demo):
    train, _ = demo
    f, g = length_features(train), length_features(swap_table(train))
    np.testing.assert_allclose(f[:, :4], -g[:, :4])  # differences change sign
    np.testing.assert_allclose(f[:, 4:], g[:, 4:])  # |difference|, total, identical, turns do not


def test_unknown_baseline_is_refused(demo):
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline("xgboost", demo[0])
