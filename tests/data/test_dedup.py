"""De-duplication of extra data against train (exact, swapped and normalisation variants)."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from arena_distill.data.dedup import dedup_against, normalise_for_hash, pair_key, swapped_key
from arena_distill.data.summary import DataSummary


def _turns(x: str | list[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def make_table(rows: list[tuple], source: str = "kaggle") -> pd.DataFrame:
    """Normalised table from (id, prompt, a, b[, label]) tuples; str = one turn."""
    records = []
    for r in rows:
        rid, p, a, b = r[:4]
        p, a, b = _turns(p), _turns(a), _turns(b)
        records.append(
            {
                "id": str(rid),
                "source": source,
                "prompt": p,
                "response_a": a,
                "response_b": b,
                "model_a": "ma",
                "model_b": "mb",
                "label": r[4] if len(r) > 4 else 0,
                "n_turns": len(p),
                "empty_a": all(not t.strip() for t in a),
                "empty_b": all(not t.strip() for t in b),
            }
        )
    df = pd.DataFrame(records)
    df["label"] = df["label"].astype("Int8")
    return df


def test_normalise_for_hash() -> None:
    assert (
        normalise_for_hash(["  Hello\tWORLD ", "ｆｕｌｌ\u00a0width"]) == "hello world full width"
    )
    assert normalise_for_hash([]) == ""
    assert normalise_for_hash([None, "x"]) == "x"


def test_pair_key_orientation_and_unambiguous_separator() -> None:
    assert pair_key(["p"], ["a"], ["b"]) != pair_key(["p"], ["b"], ["a"])
    assert swapped_key(["p"], ["a"], ["b"]) == pair_key(["p"], ["b"], ["a"])
    # Moving text across the prompt/response boundary must change the key.
    assert pair_key(["a b"], ["c"], ["d"]) != pair_key(["a"], ["b c"], ["d"])
    # A literal separator inside the text is whitespace after normalisation.
    assert pair_key(["a\x1fb"], ["c"], ["d"]) == pair_key(["a b"], ["c"], ["d"])
    assert pair_key(["P"], ["A  x"], ["b"]) == pair_key(["p"], ["a x"], ["B"])


def test_dedup_against_train_and_within_extra() -> None:
    train = make_table(
        [(1, "what is 2+2?", "4", "four"), (2, "hi", "hello", "hey"), (3, "x", "y", "z")]
    )
    extra = make_table(
        [
            ("e1", "what is 2+2?", "4", "four"),  # exact duplicate of train 1
            ("e2", "hi", "hey", "hello"),  # swapped duplicate of train 2
            ("e3", "  WHAT   is 2+2? ", "4\n", "FOUR"),  # case/whitespace variant of train 1
            ("e4", "what is 2+2?", "4", "five"),  # differs in B: kept
            ("e5", "new prompt", "a", "b"),  # new: kept
            ("e6", "new prompt", "a", "b"),  # duplicate of e5
            ("e7", "New Prompt", "b", "a"),  # swapped duplicate of e5
            ("e8", ["x", "y"], ["z", ""], ["", ""]),  # multi-turn, new: kept
        ],
        source="arena33k",
    )
    summary = DataSummary()
    kept = dedup_against(extra, train, summary=summary)
    assert kept["id"].tolist() == ["e4", "e5", "e8"]
    assert list(kept.index) == [0, 1, 2]
    assert list(kept.columns) == list(extra.columns)
    assert summary.dropped == [
        {"source": "arena33k", "id": "e1", "reason": "duplicate of train id 1", "file": None},
        {
            "source": "arena33k",
            "id": "e2",
            "reason": "duplicate of train id 2 (swapped)",
            "file": None,
        },
        {"source": "arena33k", "id": "e3", "reason": "duplicate of train id 1", "file": None},
        {"source": "arena33k", "id": "e6", "reason": "duplicate of extra id e5", "file": None},
        {
            "source": "arena33k",
            "id": "e7",
            "reason": "duplicate of extra id e5 (swapped)",
            "file": None,
        },
    ]
    assert summary.counts == {
        "arena33k/duplicate_of_train": 2,
        "arena33k/duplicate_of_train_swapped": 1,
        "arena33k/duplicate_of_extra": 1,
        "arena33k/duplicate_of_extra_swapped": 1,
    }


def test_dedup_source_name_and_no_duplicates() -> None:
    train = make_table([(1, "p", "a", "b")])
    extra = make_table([("e1", "p", "a", "c"), ("e2", "q", "a", "b")], source="x")
    summary = DataSummary()
    kept = dedup_against(extra, train, summary=summary, source_name="named")
    pd.testing.assert_frame_equal(kept, extra)
    assert summary.dropped == []
    extra2 = make_table([("e1", "p", "b", "a")])
    dedup_against(extra2, train, summary=summary, source_name="named")
    assert summary.dropped[0]["source"] == "named"


def test_turn_boundaries_are_not_text() -> None:
    """Turns are joined by a newline, which normalises to a space: ["a", "b"] == ["a b"].

    This is deliberate (re-exports often merge turns); pinned here so a change is noticed.
    """
    train = make_table([(1, ["a", "b"], ["c", "d"], ["e", "f"])])
    extra = make_table([("e1", "a b", "c d", "e f")])
    assert len(dedup_against(extra, train, summary=DataSummary())) == 0


@pytest.mark.parametrize("n_ref,n_extra", [(20_000, 10_000)])
def test_dedup_is_linear_time(n_ref: int, n_extra: int) -> None:
    ref = make_table([(i, f"prompt {i}", f"a{i}", f"b{i}") for i in range(n_ref)])
    # Every other extra row duplicates a reference row (alternately swapped).
    extra = make_table(
        [
            (f"e{i}", f"prompt {i}", f"a{i}", f"b{i}")
            if i % 4 == 0
            else (f"e{i}", f"prompt {i}", f"b{i}", f"a{i}")
            if i % 4 == 2
            else (f"e{i}", f"other {i}", "a", "b")
            for i in range(n_extra)
        ]
    )
    summary = DataSummary()
    start = time.perf_counter()
    kept = dedup_against(extra, ref, summary=summary)
    assert time.perf_counter() - start < 10
    assert len(kept) == n_extra // 2
    assert len(summary.dropped) == n_extra // 2
