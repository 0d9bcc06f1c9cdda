"""Submission writer and validator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_distill.submission import (
    SUBMISSION_COLUMNS,
    SubmissionError,
    build_submission,
    clip_normalise,
    read_submission,
    validate_submission,
    write_submission,
)

IDS = ["136060", "211333", "1233961"]


def good(ids=IDS) -> pd.DataFrame:
    return build_submission(ids, np.tile([0.5, 0.3, 0.2], (len(ids), 1)))


def test_writer_keeps_integer_ids_as_digits_and_round_trips(tmp_path):
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    df = write_submission(tmp_path / "s.csv", IDS, probs, expected_ids=IDS, clip_eps=1e-6)
    text = (tmp_path / "s.csv").read_text().splitlines()
    assert text[0] == "id,winner_model_a,winner_model_b,winner_tie"
    assert [line.split(",")[0] for line in text[1:]] == IDS
    back = read_submission(tmp_path / "s.csv")
    assert back["id"].tolist() == IDS
    np.testing.assert_array_equal(back.iloc[:, 1:].to_numpy(), df.iloc[:, 1:].to_numpy())
    # Kaggle reads the ids as ints: still the same ids
    assert pd.read_csv(tmp_path / "s.csv")["id"].tolist() == [int(i) for i in IDS]


def test_writer_clips_and_renormalises():
    p = clip_normalise(np.array([[1.0, 0.0, 0.0], [0.4, 0.2, 0.2]]), clip_eps=1e-3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.min() > 0 and p.max() < 1
    np.testing.assert_allclose(p[0], np.array([0.999, 0.001, 0.001]) / 1.001)
    np.testing.assert_allclose(p[1], [0.5, 0.25, 0.25])


@pytest.mark.parametrize(
    "bad", [np.array([[np.nan, 0.5, 0.5]]), np.array([[np.inf, 0, 0]]), np.ones((1, 2))]
)
def test_writer_refuses_non_finite_or_misshapen_probabilities(bad):
    with pytest.raises(SubmissionError):
        clip_normalise(bad)


def test_writer_refuses_a_wrong_number_of_ids(tmp_path):
    with pytest.raises(SubmissionError, match="2 ids but 3 rows"):
        write_submission(tmp_path / "s.csv", IDS[:2], np.full((3, 3), 1 / 3), expected_ids=IDS)
    assert not (tmp_path / "s.csv").exists()


def test_a_valid_submission_passes():
    validate_submission(good(), IDS, sample_ids=list(reversed(IDS)), clip_eps=1e-6)
    validate_submission(good([int(i) for i in IDS]), IDS)  # ids compared as text


def test_missing_id():
    with pytest.raises(SubmissionError, match=r"1 test ids missing, e\.g\. \['1233961'\]"):
        validate_submission(good(IDS[:2]), IDS)


def test_duplicate_id():
    with pytest.raises(SubmissionError, match=r"1 duplicate ids, e\.g\. \['136060'\]"):
        validate_submission(good([*IDS, IDS[0]]), IDS)


def test_unexpected_id():
    with pytest.raises(SubmissionError, match=r"ids not in the test set, e\.g\. \['999'\]"):
        validate_submission(good([*IDS, "999"]), IDS)


def test_ids_differing_from_the_sample_submission():
    with pytest.raises(SubmissionError, match="sample submission"):
        validate_submission(good(), IDS, sample_ids=[*IDS[:2], "5"])


def test_nan_rows_are_named():
    df = good()
    df.loc[1, "winner_tie"] = np.nan
    with pytest.raises(SubmissionError, match=r"1 rows with NaN/inf, e\.g\. ids \['211333'\]"):
        validate_submission(df, IDS)


def test_rows_not_summing_to_one():
    df = good()
    df.loc[2, "winner_model_a"] = 0.9
    with pytest.raises(SubmissionError, match=r"not summing to 1, e\.g\. ids \['1233961'\]"):
        validate_submission(df, IDS)


def test_values_outside_the_clipped_range():
    df = good()
    df.loc[0, list(SUBMISSION_COLUMNS[1:])] = [1.0, 0.0, 0.0]
    validate_submission(df, IDS)  # fine without clipping
    # what the writer makes of it passes with clipping
    validate_submission(
        build_submission(IDS, df.iloc[:, 1:].to_numpy(), clip_eps=1e-2), IDS, clip_eps=1e-2
    )
    with pytest.raises(SubmissionError, match="outside"):
        validate_submission(df, IDS, clip_eps=1e-6)
    df.loc[0, list(SUBMISSION_COLUMNS[1:])] = [1.2, -0.2, 0.0]
    with pytest.raises(SubmissionError, match="outside"):
        validate_submission(df, IDS)


def test_wrong_columns():
    df = good().rename(columns={"winner_tie": "tie"})
    with pytest.raises(SubmissionError, match="columns are"):
        validate_submission(df, IDS)
    with pytest.raises(SubmissionError, match="columns are"):
        validate_submission(good()[["id", "winner_model_b", "winner_model_a", "winner_tie"]], IDS)


def test_every_problem_is_reported_at_once():
    df = good([IDS[0], IDS[0], "7"])
    df.loc[2, "winner_model_b"] = np.nan
    with pytest.raises(SubmissionError) as err:
        validate_submission(df, IDS)
    msg = str(err.value)
    for part in ("duplicate", "missing", "not in the test set", "NaN"):
        assert part in msg
