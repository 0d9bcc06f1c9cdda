"""The fold students' averaged predictions (pipeline.final=folds) and the report's choice of
the final model from out-of-fold evidence only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_distill.ensemble import average_predictions
from arena_distill.layout import FINAL_COLS, PROB_COLS, TTA_PROB_COLS
from arena_distill.report.metrics import final_model


def _table(ids, probs, *, label=None, tta=True) -> pd.DataFrame:
    df = pd.DataFrame({"id": ids})
    if label is not None:
        df["label"] = label
    df[list(PROB_COLS)] = probs
    if tta:
        df[list(TTA_PROB_COLS)] = probs[:, ::-1]
    df[list(FINAL_COLS)] = probs
    return df


def test_the_average_is_per_id_whatever_the_row_order():
    a = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    b = np.array([[0.2, 0.7, 0.1], [0.4, 0.4, 0.2]])
    t0 = _table(["x", "y"], a, label=[0, 2])
    t1 = _table(["y", "x"], b[::-1], label=[2, 0])  # same ids, other order
    out = average_predictions([t0, t1])
    assert out["id"].tolist() == ["x", "y"] and out["label"].tolist() == [0, 2]
    np.testing.assert_array_equal(out[list(FINAL_COLS)].to_numpy(), (a + b) / 2)
    np.testing.assert_array_equal(out[list(PROB_COLS)].to_numpy(), (a + b) / 2)
    np.testing.assert_array_equal(out[list(TTA_PROB_COLS)].to_numpy(), ((a + b) / 2)[:, ::-1])
    assert (out["n_models"] == 2).all()


def test_the_ensemble_logits_are_the_log_of_the_mean_probability_per_orientation():
    """What the stack stage reads as the final model's logits with pipeline.final=folds."""
    from arena_distill.layout import LOGIT_COLS, SWAP_LOGIT_COLS

    la = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    lb = np.array([[-1.0, 1.0, 0.0], [1.0, -2.0, 0.0]])
    p = np.full((2, 3), 1 / 3)
    t0, t1 = _table(["x", "y"], p), _table(["x", "y"], p)
    t0[list(LOGIT_COLS)], t1[list(LOGIT_COLS)] = la, lb
    t0[list(SWAP_LOGIT_COLS)], t1[list(SWAP_LOGIT_COLS)] = lb, la
    out = average_predictions([t0, t1])

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    want = np.log((softmax(la) + softmax(lb)) / 2)
    np.testing.assert_allclose(out[list(LOGIT_COLS)].to_numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[list(SWAP_LOGIT_COLS)].to_numpy(), want, rtol=0, atol=1e-12)
    # without logits in every table, none are written
    assert not set(LOGIT_COLS) & set(average_predictions([t0, _table(["x", "y"], p)]).columns)


def test_tables_that_do_not_match_are_refused():
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="same ids"):
        average_predictions([_table(["x", "y"], p), _table(["x", "z"], p)])
    with pytest.raises(ValueError, match="no prediction tables"):
        average_predictions([])
    # a block only some tables hold is left out; the submitted one is required
    out = average_predictions([_table(["x", "y"], p), _table(["x", "y"], p, tta=False)])
    assert not set(TTA_PROB_COLS) & set(out.columns)


def test_the_final_model_is_chosen_by_oof_evidence_only():
    oof = {
        "teacher/t": 0.90,
        "student/s": 1.00,
        "student/s+tta": 0.98,
        "student/s_ce_only": 0.80,  # the ablation is not the final model
        "baseline/prior": 1.09,
        "baseline/tfidf_lr": 1.01,
        "baseline/tfidf_lr+tta": 0.5,  # (never written by the baselines; ignored if it were)
    }
    fm = final_model(oof, 3)
    assert fm["recommended"] == "folds" and fm["student"] == "student/s"
    assert fm["evidence"] == {"folds": 0.98, "baseline/tfidf_lr": 1.01, "baseline/prior": 1.09}
    assert fm["inference_passes"] == {"merge": 1, "folds": 3, "full": 1}
    # the merge and the student on every row have no OOF of their own: named, never ranked
    assert set(fm["no_oof"]) == {"merge", "full"} and "full" not in fm["evidence"]
    assert "no out-of-fold score" in fm["no_oof"]["full"]
    assert fm["student_runs"] == {"merge": 3, "folds": 3, "full": 4}
    # a baseline (or a stacker) with a lower OOF log loss is the recommendation
    worse = {**oof, "student/s+tta": 1.05, "stacked": 0.97}
    assert final_model(worse, 3)["recommended"] == "stacked"
    assert final_model({"teacher/t": 0.9}, 3) is None


def test_the_report_scores_the_full_student_on_the_holdout_only_and_says_why():
    """A holdout ``full`` row better than everything still does not make it the
    recommendation; the report's text says it has no OOF score."""
    from arena_distill.report.metrics import recipe_gains
    from arena_distill.report.render import section_final_model

    oof = {"student/s": 1.00, "student/s+tta": 0.98, "baseline/tfidf_lr": 1.01}
    holdout = {"folds_mean": 0.99, "full": 0.90, "quantized": 1.00}
    fm = final_model(oof, 5)
    assert fm["recommended"] == "folds"
    text = section_final_model({"final_model": fm}, plots=False).markdown()
    assert "`full`" in text and "no out-of-fold score" in text and "6" in text
    gains = {g["step"]: g for g in recipe_gains(oof, holdout)}
    refit = gains["refit on every row"]
    assert refit["compared"] == "folds_mean → full" and refit["gain"] == pytest.approx(0.09)
