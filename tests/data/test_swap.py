"""A/B swap augmentation and test-time mirroring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arena_distill.data.schema import DataError
from arena_distill.data.swap import mirror_probs, swap_table, with_swapped


def make_table(n: int = 4) -> pd.DataFrame:
    labels = [0, 1, 2, None][:n] + [0] * max(0, n - 4)
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "source": ["kaggle"] * n,
            "prompt": [[f"p{i}"] for i in range(n)],
            "response_a": [[f"a{i}"] for i in range(n)],
            "response_b": [[""] if i == 0 else [f"b{i}"] for i in range(n)],
            "model_a": [f"ma{i}" for i in range(n)],
            "model_b": [None if i == 1 else f"mb{i}" for i in range(n)],
            "label": pd.array(labels, dtype="Int8"),
            "n_turns": [1] * n,
            "empty_a": [False] * n,
            "empty_b": [i == 0 for i in range(n)],
        }
    )


def test_swap_table_exchanges_columns_and_labels() -> None:
    df = make_table()
    sw = swap_table(df)
    assert sw["response_a"].tolist() == df["response_b"].tolist()
    assert sw["response_b"].tolist() == df["response_a"].tolist()
    assert sw["model_a"].tolist() == df["model_b"].tolist()
    assert sw["model_b"].tolist() == df["model_a"].tolist()
    assert sw["empty_a"].tolist() == [True, False, False, False]
    assert sw["empty_b"].tolist() == [False] * 4
    assert sw["label"].tolist() == [1, 0, 2, pd.NA]
    assert sw["label"].dtype == df["label"].dtype
    assert sw["swapped"].tolist() == [True] * 4
    assert sw["id"].tolist() == df["id"].tolist()
    assert sw["prompt"].tolist() == df["prompt"].tolist()
    # The input is untouched.
    pd.testing.assert_frame_equal(df, make_table())


def test_swap_twice_is_identity() -> None:
    df = make_table()
    df["swapped"] = False
    pd.testing.assert_frame_equal(swap_table(swap_table(df)), df)
    # Without the column, swapping twice returns the data plus swapped=False.
    plain = make_table()
    pd.testing.assert_frame_equal(swap_table(swap_table(plain)), plain.assign(swapped=False))


def test_with_swapped() -> None:
    df = make_table()
    both = with_swapped(df)
    assert len(both) == 2 * len(df)
    assert both["swapped"].tolist() == [False] * 4 + [True] * 4
    assert both["id"].tolist() == df["id"].tolist() * 2
    assert not both.duplicated(["id", "swapped"]).any()
    assert list(both.index) == list(range(8))
    pd.testing.assert_frame_equal(both.iloc[:4], df.assign(swapped=False))
    pd.testing.assert_frame_equal(
        both.iloc[4:].reset_index(drop=True), swap_table(df.assign(swapped=False))
    )
    with pytest.raises(DataError, match="already contains swapped rows"):
        with_swapped(both)


def test_swap_requires_paired_columns() -> None:
    with pytest.raises(DataError, match="model_a"):
        swap_table(make_table().drop(columns="model_b"))
    with pytest.raises(DataError, match="response_a"):
        swap_table(make_table().drop(columns=["response_a", "response_b"]))


def test_mirror_probs() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_array_equal(mirror_probs(p), [[0.2, 0.7, 0.1], [0.3, 0.1, 0.6]])
    np.testing.assert_array_equal(mirror_probs(mirror_probs(p)), p)
    out = mirror_probs(p)
    out[0, 0] = 9.0
    assert p[0, 1] == 0.2  # a copy, not a view
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        mirror_probs(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        mirror_probs(np.zeros(3))


def test_mirror_matches_swapped_labels() -> None:
    """A one-hot of the swapped label, mirrored, is the one-hot of the original label."""
    df = make_table()
    lab = df["label"].iloc[:3].to_numpy(dtype=int)
    sw = swap_table(df)["label"].iloc[:3].to_numpy(dtype=int)
    np.testing.assert_array_equal(mirror_probs(np.eye(3)[sw]), np.eye(3)[lab])


_text = st.text(max_size=5)
_row = st.tuples(
    st.lists(_text, min_size=1, max_size=3),
    st.sampled_from([0, 1, 2, None]),
    st.one_of(st.none(), _text),
    st.one_of(st.none(), _text),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(_row, max_size=8))
def test_swap_involution_property(rows: list[tuple]) -> None:
    n = len(rows)
    df = pd.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "prompt": pd.Series([list(r[0]) for r in rows], dtype=object),
            "response_a": pd.Series([[t + "a" for t in r[0]] for r in rows], dtype=object),
            "response_b": pd.Series([[t + "b" for t in r[0]] for r in rows], dtype=object),
            "model_a": pd.Series([r[2] for r in rows], dtype=object),
            "model_b": pd.Series([r[3] for r in rows], dtype=object),
            "label": pd.array([r[1] for r in rows], dtype="Int8"),
            "empty_a": pd.Series([r[4] for r in rows], dtype=bool),
            "empty_b": pd.Series([r[5] for r in rows], dtype=bool),
            "swapped": pd.Series([False] * n, dtype=bool),
        }
    )
    once = swap_table(df)
    pd.testing.assert_frame_equal(swap_table(once), df)
    # Label counts: A and B exchange, ties and unknowns stay.
    before, after = df["label"].value_counts(dropna=False), once["label"].value_counts(dropna=False)
    assert after.get(0, 0) == before.get(1, 0)
    assert after.get(1, 0) == before.get(0, 0)
    assert after.get(2, 0) == before.get(2, 0)
    assert once["label"].isna().sum() == df["label"].isna().sum()
