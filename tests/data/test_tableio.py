"""save_table / load_table round-trip the normalised table exactly, and write atomically."""

from __future__ import annotations

import pandas as pd
import pytest

from arena_distill.data.normalize import finalise_rows
from arena_distill.data.schema import DataError, empty_table
from arena_distill.data.summary import DataSummary
from arena_distill.data.tableio import load_table, save_table


def table() -> pd.DataFrame:
    records = [
        {
            "id": "1",
            "prompt": ["p1", "p2"],
            "response_a": ["a1", "a2"],
            "response_b": ["b1", ""],
            "model_a": "m",
            "model_b": None,
            "label": 0,
        },
        {
            "id": "2",
            "prompt": ["π ✓ \U0001f600"],
            "response_a": [""],
            "response_b": ["b"],
            "model_a": None,
            "model_b": "n",
            "label": None,
        },
        {
            "id": "3",
            "prompt": [""],
            "response_a": ["x"],
            "response_b": ["y"],
            "model_a": None,
            "model_b": None,
            "label": 2,
        },
    ]
    return finalise_rows(records, source="s", summary=DataSummary())


def test_round_trip_exact(tmp_path):
    df = table()
    df["fold"] = [0, 1, -1]  # an extra column added by a later stage survives too
    path = save_table(df, tmp_path / "sub" / "table.parquet")
    back = load_table(path)
    pd.testing.assert_frame_equal(back, df)
    assert type(back["prompt"][0]) is list and type(back["prompt"][0][0]) is str
    assert back["model_b"][0] is None
    assert str(back["label"].dtype) == "Int8" and back["label"].isna().tolist() == [
        False,
        True,
        False,
    ]
    assert [p.name for p in path.parent.iterdir()] == ["table.parquet"]  # no temp file left


def test_round_trip_empty_and_overwrite(tmp_path):
    path = tmp_path / "t.parquet"
    save_table(table(), path)
    save_table(empty_table(), path)
    pd.testing.assert_frame_equal(load_table(path), empty_table())


def test_save_rejects_invalid_and_keeps_old_file(tmp_path):
    path = save_table(table(), tmp_path / "t.parquet")
    bad = table()
    bad.loc[1, "id"] = "1"
    with pytest.raises(DataError, match="duplicate ids"):
        save_table(bad, path)
    pd.testing.assert_frame_equal(load_table(path), table())


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="table not found"):
        load_table(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read parquet"):
        load_table(tmp_path / "junk.parquet")
    pd.DataFrame({"id": ["1"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="missing normalised columns"):
        load_table(tmp_path / "other.parquet")
