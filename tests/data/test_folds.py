"""Folds, holdout and the folds file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from arena_distill.data.dedup import normalise_for_hash
from arena_distill.data.folds import (
    assign_folds,
    build_folds,
    load_or_create_folds,
    read_folds,
    split_by_fold,
    split_holdout,
    write_folds,
)
from arena_distill.data.schema import DataError

CFG = {"n_folds": 5, "seed": 2025, "group_by_prompt": False, "holdout_frac": 0.0}


def make_table(
    n: int, *, seed: int = 0, n_prompts: int | None = None, prefix: str = ""
) -> pd.DataFrame:
    """``n`` labelled rows with skewed labels (45% A, 40% B, 15% tie); with ``n_prompts``
    prompts repeat (in varying case/whitespace, which must still group together)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.45, 0.40, 0.15])
    if n_prompts is None:
        prompts = [[f"prompt {i}"] for i in range(n)]
    else:
        k = rng.integers(0, n_prompts, size=n)
        prompts = [[f"Prompt  {j}" if i % 2 else f"prompt {j}"] for i, j in enumerate(k)]
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "source": "kaggle",
            "prompt": prompts,
            "response_a": [[f"a{i}"] for i in range(n)],
            "response_b": [[f"b{i}"] for i in range(n)],
            "model_a": "ma",
            "model_b": "mb",
            "label": pd.array(labels, dtype="Int8"),
            "n_turns": 1,
            "empty_a": False,
            "empty_b": False,
        }
    )


def _groups(df: pd.DataFrame) -> pd.Series:
    return df["prompt"].map(normalise_for_hash)


# --- assign_folds -----------------------------------------------------------------------------


def test_default_folds_equal_first_place_stratified_kfold() -> None:
    df = make_table(503)
    folds = assign_folds(df)
    expected = np.full(len(df), -1)
    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=2025)
    for k, (_, valid) in enumerate(skf.split(np.zeros(len(df)), df["label"].to_numpy(int))):
        expected[valid] = k
    np.testing.assert_array_equal(folds.to_numpy(), expected)
    assert folds.dtype == np.int64
    assert folds.index.equals(df.index)


def test_folds_are_stratified_and_balanced() -> None:
    df = make_table(2000)
    folds = assign_folds(df)
    overall = df["label"].value_counts(normalize=True)
    for k in range(5):
        part = df.loc[folds == k, "label"].value_counts(normalize=True)
        assert (part - overall).abs().max() < 0.01
        assert abs((folds == k).sum() - 400) <= 1


def test_folds_deterministic_and_seeded() -> None:
    df = make_table(300)
    pd.testing.assert_series_equal(assign_folds(df), assign_folds(df.copy()))
    assert not assign_folds(df).equals(assign_folds(df, seed=1))
    # Aligned to the input index, whatever it is.
    shifted = df.set_axis(df.index + 100)
    f = assign_folds(shifted)
    assert f.index.equals(shifted.index)
    np.testing.assert_array_equal(f.to_numpy(), assign_folds(df).to_numpy())


def test_grouped_folds_never_split_a_prompt() -> None:
    df = make_table(1000, n_prompts=150)
    folds = assign_folds(df, n_folds=5, seed=7, group_by_prompt=True)
    per_prompt = folds.groupby(_groups(df)).nunique()
    assert (per_prompt == 1).all()
    assert sorted(folds.unique()) == [0, 1, 2, 3, 4]
    # Ungrouped folds do split repeated prompts (so the test above is meaningful).
    assert (assign_folds(df).groupby(_groups(df)).nunique() > 1).any()
    overall = df["label"].value_counts(normalize=True)
    for k in range(5):
        part = df.loc[folds == k, "label"].value_counts(normalize=True)
        assert (part - overall).abs().max() < 0.08


def test_assign_folds_errors() -> None:
    df = make_table(20)
    df.loc[3, "label"] = pd.NA
    with pytest.raises(DataError, match=r"needs labels.*1 rows.*'3'"):
        assign_folds(df)
    with pytest.raises(DataError, match="cannot make 5 folds from only 3"):
        assign_folds(make_table(3))
    with pytest.raises(DataError, match="only 2 distinct prompts"):
        assign_folds(make_table(20, n_prompts=2), group_by_prompt=True)
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(make_table(20), n_folds=1)


# --- holdout ----------------------------------------------------------------------------------


def test_holdout_stratified_and_disjoint() -> None:
    df = make_table(2000)
    rest, hold = split_holdout(df, 0.1, seed=3)
    assert len(hold) == 200 and len(rest) == 1800
    assert set(rest["id"]).isdisjoint(hold["id"])
    assert set(rest["id"]) | set(hold["id"]) == set(df["id"])
    diff = hold["label"].value_counts(normalize=True) - df["label"].value_counts(normalize=True)
    assert diff.abs().max() < 0.01
    assert list(hold.index) == list(range(200))
    # Same seed, same split; order within each part follows the input.
    rest2, hold2 = split_holdout(df, 0.1, seed=3)
    pd.testing.assert_frame_equal(hold, hold2)
    assert hold["id"].map(int).is_monotonic_increasing


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.7])
def test_grouped_holdout_keeps_prompts_together(frac: float) -> None:
    df = make_table(1500, n_prompts=300, seed=1)
    rest, hold = split_holdout(df, frac, seed=5, group_by_prompt=True)
    assert set(_groups(rest)).isdisjoint(set(_groups(hold)))
    assert len(rest) + len(hold) == len(df)
    assert abs(len(hold) / len(df) - frac) < 0.06
    diff = hold["label"].value_counts(normalize=True) - df["label"].value_counts(normalize=True)
    assert diff.abs().max() < 0.06


def test_holdout_zero_and_invalid_fraction() -> None:
    df = make_table(10)
    rest, hold = split_holdout(df, 0.0, seed=0)
    pd.testing.assert_frame_equal(rest, df)
    assert len(hold) == 0 and list(hold.columns) == list(df.columns)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"holdout fraction must be in \[0, 1\)"):
            split_holdout(df, bad, seed=0)


# --- build / file -----------------------------------------------------------------------------


def test_build_folds_layout() -> None:
    train, extra = make_table(500), make_table(50, prefix="x")
    folds = build_folds(train, extra, **{**CFG, "holdout_frac": 0.2})
    assert list(folds.columns) == ["id", "split", "fold"]
    assert folds["id"].tolist() == train["id"].tolist() + extra["id"].tolist()
    counts = folds["split"].value_counts()
    assert counts["cv"] == 400 and counts["holdout"] == 100 and counts["extra"] == 50
    assert (folds.loc[folds["split"] != "cv", "fold"] == -1).all()
    assert sorted(folds.loc[folds["split"] == "cv", "fold"].unique()) == [0, 1, 2, 3, 4]
    # Without a holdout the folds are exactly assign_folds on train.
    plain = build_folds(train, **CFG)
    np.testing.assert_array_equal(plain["fold"].to_numpy(), assign_folds(train).to_numpy())
    assert (plain["split"] == "cv").all()


def test_build_folds_rejects_id_collisions() -> None:
    with pytest.raises(DataError, match=r"unique across train and extra.*'3'"):
        build_folds(make_table(20), make_table(5), **CFG)


def test_folds_file_round_trip(tmp_path: Path) -> None:
    train = make_table(100)
    train["id"] = [f"{i:03d}" for i in range(100)]  # leading zeros must survive
    extra = make_table(10, prefix="NA")  # "NA..." must not become missing
    extra.loc[0, "id"] = "NA"
    folds = build_folds(train, extra, **{**CFG, "holdout_frac": 0.1})
    path = tmp_path / "sub" / "folds.csv"
    write_folds(folds, path)
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp files left
    back = read_folds(path)
    pd.testing.assert_frame_equal(back, folds)
    assert back["id"].iloc[0] == "000"


@pytest.mark.parametrize(
    "text,match",
    [
        ("id,split\n1,cv\n", "columns"),
        ("id,split,fold\n1,cv,0\n1,cv,1\n", "duplicate ids"),
        ("id,split,fold\n1,train,0\n", "split must be one of"),
        ("id,split,fold\n1,cv,x\n", "fold must be an integer"),
        ("id,split,fold\n1,cv,-1\n", "fold must be >= 0"),
        ("id,split,fold\n1,extra,2\n", "-1 for extra/holdout"),
        ("", "cannot read"),
    ],
)
def test_read_folds_rejects_bad_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        read_folds(path)
    assert str(path) in str(err.value)


def test_read_folds_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read folds file"):
        read_folds(tmp_path / "nope.csv")


def test_load_or_create_reuses_file(tmp_path: Path) -> None:
    train, extra = make_table(200), make_table(20, prefix="x")
    path = tmp_path / "folds.csv"
    folds, created = load_or_create_folds(path, train, extra, **CFG)
    assert created and path.exists()
    # Rewrite with different (valid) folds: a reuse must return them, not rebuild.
    other = folds.copy()
    cv = other["split"] == "cv"
    other.loc[cv, "fold"] = (other.loc[cv, "fold"] + 1) % 5
    write_folds(other, path)
    again, created = load_or_create_folds(path, train, extra, **{**CFG, "seed": 99})
    assert not created
    pd.testing.assert_frame_equal(again, other)
    rebuilt, created = load_or_create_folds(path, train, extra, **CFG, overwrite=True)
    assert created
    pd.testing.assert_frame_equal(rebuilt, folds)
    pd.testing.assert_frame_equal(read_folds(path), folds)


def test_load_or_create_errors_on_mismatch(tmp_path: Path) -> None:
    train, extra = make_table(200), make_table(20, prefix="x")
    path = tmp_path / "folds.csv"
    load_or_create_folds(path, train, extra, **CFG)
    more = pd.concat([train, make_table(3, prefix="new")], ignore_index=True)
    with pytest.raises(DataError, match=r"3 train ids missing: \['new0'.*overwrite=true"):
        load_or_create_folds(path, more, extra, **CFG)
    with pytest.raises(DataError, match=r"20 unexpected extra ids: \['x0', 'x1'"):
        load_or_create_folds(path, train, None, **CFG)
    with pytest.raises(DataError, match=r"unexpected train ids.*\['199'\]"):
        load_or_create_folds(path, train.iloc[:-1], extra, **CFG)
    with pytest.raises(DataError, match="n_folds=4"):
        load_or_create_folds(path, train, extra, **{**CFG, "n_folds": 4})
    with pytest.raises(DataError, match="holdout_frac=0.1"):
        load_or_create_folds(path, train, extra, **{**CFG, "holdout_frac": 0.1})


def test_load_or_create_detects_ungrouped_file(tmp_path: Path) -> None:
    train = make_table(300, n_prompts=60)
    path = tmp_path / "folds.csv"
    load_or_create_folds(path, train, **CFG)
    with pytest.raises(DataError, match="group_by_prompt=true"):
        load_or_create_folds(path, train, **{**CFG, "group_by_prompt": True})
    grouped = tmp_path / "grouped.csv"
    cfg = {**CFG, "group_by_prompt": True, "holdout_frac": 0.2}
    load_or_create_folds(grouped, train, **cfg)
    assert not load_or_create_folds(grouped, train, **cfg)[1]


# --- split_by_fold ----------------------------------------------------------------------------


def test_split_by_fold_partitions() -> None:
    train, extra = make_table(300), make_table(30, prefix="x")
    folds = build_folds(train, extra, **{**CFG, "holdout_frac": 0.1})
    everything = pd.concat([train, extra], ignore_index=True)
    holdout = set(folds.loc[folds["split"] == "holdout", "id"])
    valid_union: set[str] = set()
    for k in range(5):
        tr, va = split_by_fold(everything, folds, k)
        tr_ids, va_ids = set(tr["id"]), set(va["id"])
        assert tr_ids.isdisjoint(va_ids) and tr_ids.isdisjoint(holdout)
        assert va_ids.isdisjoint(holdout)
        assert tr_ids | va_ids | holdout == set(everything["id"])
        assert set(extra["id"]) <= tr_ids
        assert va_ids == set(folds.loc[(folds["split"] == "cv") & (folds["fold"] == k), "id"])
        assert list(tr.index) == list(range(len(tr)))
        valid_union |= va_ids
    assert valid_union == set(folds.loc[folds["split"] == "cv", "id"])


def test_split_by_fold_keeps_swapped_twins_together() -> None:
    from arena_distill.data.swap import with_swapped

    train = make_table(100)
    folds = build_folds(train, **CFG)
    tr, va = split_by_fold(with_swapped(train), folds, 2)
    assert len(tr) + len(va) == 200
    assert set(tr["id"]).isdisjoint(va["id"])
    assert va.groupby("id")["swapped"].nunique().eq(2).all()


def test_split_by_fold_errors() -> None:
    train = make_table(50)
    folds = build_folds(train, **CFG)
    with pytest.raises(ValueError, match="fold 5 does not exist"):
        split_by_fold(train, folds, 5)
    with pytest.raises(DataError, match=r"1 rows are not in the folds table.*'y0'"):
        split_by_fold(pd.concat([train, make_table(1, prefix="y")]), folds, 0)
