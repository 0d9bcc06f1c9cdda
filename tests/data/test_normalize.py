"""parse_turns / clean_text / finalise_rows: repairs are exact, counted, and never crash."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arena_distill.data.normalize import clean_text, finalise_rows, parse_turns
from arena_distill.data.schema import DataError, check_table, empty_table
from arena_distill.data.summary import DataSummary


def parse(value, summary=None):
    return parse_turns(
        value, source="s", summary=summary or DataSummary(), file="f.csv", row="7", column="prompt"
    )


@pytest.mark.parametrize(
    ("value", "expected", "events"),
    [
        ('["hi", "there"]', ["hi", "there"], {}),
        ('["hi", null]', ["hi", ""], {"s/null_to_empty": 1}),
        ('"hi"', ["hi"], {}),
        ("null", [""], {"s/null_to_empty": 1}),
        ("[]", [""], {"s/empty_turn_list": 1}),
        ("", [""], {"s/missing_to_empty": 1}),
        (None, [""], {"s/missing_to_empty": 1}),
        (float("nan"), [""], {"s/missing_to_empty": 1}),
        (pd.NA, [""], {"s/missing_to_empty": 1}),
        ("[1, true, 2.5]", ["1", "True", "2.5"], {"s/non_string_to_str": 3}),
        ('["\\ud83d"]', ["\ufffd"], {"s/surrogates_repaired": 1}),
        ('["a\\ud83d\\ude00"]', ["a\U0001f600"], {}),  # a valid escaped pair is joined by json
        (["a", None], ["a", ""], {"s/null_to_empty": 1}),
        (("a", "b"), ["a", "b"], {}),
        (np.array(["x", "y"], dtype=object), ["x", "y"], {}),
        (np.array([], dtype=object), [""], {"s/empty_turn_list": 1}),
        (["\ud83d\ude00", "\udc00"], ["\U0001f600", "\ufffd"], {"s/surrogates_repaired": 2}),
    ],
)
def test_parse_turns(value, expected, events):
    summary = DataSummary()
    out = parse(value, summary)
    assert out == expected
    assert all(type(t) is str for t in out)
    assert dict(summary.counts) == events


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ('["unterminated', "not valid JSON"),
        ("hello", "not valid JSON"),
        ('{"a": 1}', "got an object"),
        ('[["nested"]]', "nested list"),
        ('[{"a": 1}]', "got a dict"),
        ("[" * 100_000, "not valid JSON"),
        ({"a": 1}, "got a dict"),
        (b"bytes", "got a bytes"),
    ],
)
def test_parse_turns_rejects(value, match):
    with pytest.raises(DataError, match=match) as info:
        parse(value)
    err = info.value
    assert (err.file, err.row, err.column) == ("f.csv", "7", "prompt")
    assert "file f.csv" in str(err) and "row id='7'" in str(err) and "column 'prompt'" in str(err)


def test_clean_text():
    summary = DataSummary()
    assert clean_text(np.str_("x"), source="s", summary=summary) == "x"
    assert clean_text(None, source="s", summary=summary) == ""
    assert clean_text(np.int64(3), source="s", summary=summary) == "3"
    assert dict(summary.counts) == {"s/null_to_empty": 1, "s/non_string_to_str": 1}


def test_finalise_rows_pads_and_flags():
    summary = DataSummary()
    records = [
        {
            "id": 1,
            "prompt": ["p1", "p2"],
            "response_a": ["a"],
            "response_b": ["b1", "b2"],
            "model_a": "m",
            "model_b": None,
            "label": 0,
        },
        {
            "id": "2",
            "prompt": ["p"],
            "response_a": [" "],
            "response_b": [""],
            "model_a": None,
            "model_b": None,
            "label": None,
        },
    ]
    df = finalise_rows(records, source="s", summary=summary)
    check_table(df)
    assert list(df.columns) == list(empty_table().columns)
    assert df.dtypes.to_dict() == empty_table().dtypes.to_dict()
    assert df["id"].tolist() == ["1", "2"]
    assert df["response_a"].tolist() == [["a", ""], [" "]]
    assert df["n_turns"].tolist() == [2, 1]
    assert df["empty_a"].tolist() == [False, True]
    assert df["empty_b"].tolist() == [False, True]
    assert df["label"].tolist() == [0, pd.NA]
    assert df["model_b"].tolist() == [None, None]
    assert dict(summary.counts) == {
        "s/turns_padded": 1,
        "s/empty_response_a": 1,
        "s/empty_response_b": 1,
    }
    assert summary.rows_kept["s"] == 2


def test_finalise_rows_empty():
    df = finalise_rows([], source="s", summary=DataSummary())
    assert df.dtypes.to_dict() == empty_table().dtypes.to_dict() and len(df) == 0


# ----------------------------------------------------------------- property: never crash

# Include lone surrogates ("Cs"), which st.text() leaves out by default.
any_text = st.text(
    alphabet=st.characters(categories=["Cs", "L", "N", "P", "S", "Z", "Cc"]), max_size=40
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)


def _check_total(value) -> None:
    try:
        out = parse(value)
    except DataError:
        return
    assert isinstance(out, list) and out
    for turn in out:
        assert type(turn) is str
        turn.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_parse_turns_total_on_json_values(value):
    _check_total(value)  # as an already-parsed value (parquet / JSONL)
    _check_total(json.dumps(value))  # as a JSON cell (CSV)


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_parse_turns_total_on_arbitrary_text(text):
    _check_total(text)
    _check_total(json.dumps([text]))
    _check_total(json.dumps([text], ensure_ascii=False))
