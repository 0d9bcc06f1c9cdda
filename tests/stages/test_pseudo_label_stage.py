"""The pseudo_label stage and the student trained on its rows, on the shared trained run (tiny
Llama teacher, 3 folds): the pool is de-duplicated against train, holdout and test (either
orientation), every pool row is accounted for, and pseudo rows never reach validation / OOF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill.data.folds import split_by_fold
from arena_distill.data.schema import LABEL_COLUMNS
from arena_distill.demo import generate_demo
from arena_distill.layout import load_run_data
from arena_distill.pseudo import LOGITS, MEAN_FOLD, ROWS, SCORES, read_pseudo
from arena_distill.stages import distill, dump_logits, pseudo_label
from tests.stages.conftest import small_cfg

COLUMNS = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS]


def swap_raw(row: pd.Series) -> pd.Series:
    out = row.copy()
    out["response_a"], out["response_b"] = row["response_b"], row["response_a"]
    out["model_a"], out["model_b"] = row["model_b"], row["model_a"]
    out["winner_model_a"], out["winner_model_b"] = row["winner_model_b"], row["winner_model_a"]
    return out


@pytest.fixture(scope="module")
def pool(trained_run) -> dict:
    """Two pool files: fresh demo rows (labelled: ignored) plus copies of a cv row, a holdout
    row (swapped) and a test row, and a second file without labels holding an in-pool
    duplicate (swapped) and one more fresh row."""
    root = trained_run.root / "pool"
    fresh = pd.read_csv(generate_demo(root / "gen", n_train=13, n_test=0, seed=77)["train"])
    fresh["id"] = [f"pool-{i}" for i in range(len(fresh))]
    train = pd.read_csv(trained_run.root / "demo" / "train.csv")
    test = pd.read_csv(trained_run.root / "demo" / "test.csv")
    folds = load_run_data(trained_run.cfg).folds
    holdout_id = folds.loc[folds["split"] == "holdout", "id"].iloc[0]
    cv_id = folds.loc[folds["split"] == "cv", "id"].iloc[0]
    cv_copy = train[train["id"].astype(str) == cv_id].iloc[0].copy()
    cv_copy["id"] = "copy-of-cv"
    holdout_copy = swap_raw(train[train["id"].astype(str) == holdout_id].iloc[0])
    holdout_copy["id"] = "copy-of-holdout-swapped"
    test_copy = test.iloc[0].copy()
    test_copy["id"] = "copy-of-test"
    for col, v in zip(LABEL_COLUMNS, (1, 0, 0), strict=True):
        test_copy[col] = v
    first = pd.concat(
        [fresh.iloc[:12], pd.DataFrame([cv_copy, holdout_copy, test_copy])], ignore_index=True
    )[COLUMNS]
    first.to_csv(root / "a.csv", index=False)
    twin = swap_raw(fresh.iloc[0])
    twin["id"] = "pool-twin-swapped"
    second = pd.DataFrame([twin, fresh.iloc[12]])[["id", "prompt", "response_a", "response_b"]]
    second.to_csv(root / "b.csv", index=False)
    return {
        "files": [root / "a.csv", root / "b.csv"],
        "fresh": [f"pool-{i}" for i in range(13)],
        "cv_id": cv_id,
        "holdout_id": holdout_id,
    }


def pseudo_cfg(trained_run, pool, name: str, *extra: str):
    files = ",".join(str(p) for p in pool["files"])
    return small_cfg(
        trained_run.root,
        "pipeline.teachers=[tiny_llama]",
        f"data.unlabelled=[{files}]",
        f"stages.pseudo_label.out_dir={trained_run.root}/{name}",
        *extra,
    )


@pytest.fixture(scope="module")
def pseudo_dir(trained_run, pool) -> Path:
    return pseudo_label.run(pseudo_cfg(trained_run, pool, "pseudo"))


def test_the_pool_is_deduplicated_and_every_row_accounted_for(pseudo_dir, pool):
    rows = pd.read_parquet(pseudo_dir / ROWS)
    assert sorted(rows["id"]) == sorted(pool["fresh"])  # every duplicate gone
    assert rows["label"].isna().all()  # labels ignored
    summary = json.loads((pseudo_dir / "summary.json").read_text())
    reasons = {d["id"]: d["reason"] for d in summary["dropped"]}
    assert reasons["copy-of-cv"] == f"duplicate of train id {pool['cv_id']}"
    assert reasons["copy-of-holdout-swapped"] == (
        f"duplicate of train id {pool['holdout_id']} (swapped)"
    )
    assert reasons["copy-of-test"].startswith("duplicate of test id ")
    assert reasons["pool-twin-swapped"] == "duplicate of pool id pool-0 (swapped)"
    counts = json.loads((pseudo_dir / "manifest.json").read_text())["outputs"]["rows"]
    assert counts["read"] == 17 and counts["kept"] == 13 and counts["scored"] == 13
    assert counts["dropped"] == {
        "duplicate_of_train": 1,
        "duplicate_of_train_swapped": 1,
        "duplicate_of_test": 1,
        "duplicate_of_pool_swapped": 1,
    }


def test_soft_labels_per_fold_and_orientation(pseudo_dir, trained_run):
    logits = pd.read_parquet(pseudo_dir / LOGITS)
    # 13 rows x (3 folds + the mean) x 2 orientations, one teacher
    assert len(logits) == 13 * 4 * 2
    assert set(logits["fold"]) == {0, 1, 2, MEAN_FOLD}
    scores = pd.read_parquet(pseudo_dir / SCORES)
    probs = scores[["p_a", "p_b", "p_tie"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(scores["confidence"], probs.max(axis=1))
    # agreement is a share of 3 folds x 2 orientations
    assert set(np.round(scores["agreement"] * 6, 6)) <= set(range(7))
    pseudo = read_pseudo(pseudo_dir)
    assert len(pseudo.teacher_logits(["tiny_llama"], 1, "pool-3", True)) == 1


def test_selection_is_counted_in_the_manifest(trained_run, pool, pseudo_dir):
    out = pseudo_label.run(
        pseudo_cfg(trained_run, pool, "pseudo-top", "stages.pseudo_label.top_fraction=0.5")
    )
    counts = json.loads((out / "manifest.json").read_text())["outputs"]["rows"]
    assert counts["kept"] == 7 and counts["dropped"]["outside_top_fraction"] == 6
    scores = pd.read_parquet(out / SCORES)
    assert (
        scores.loc[scores["kept"], "confidence"].min()
        >= scores.loc[~scores["kept"], "confidence"].max()
    )
    assert len(pd.read_parquet(out / ROWS)) == 7


def test_pseudo_rows_train_the_student_but_never_reach_validation(trained_run, pool, pseudo_dir):
    logits_root = trained_run.root / "pseudo-logits"
    base = [
        f"stages.dump_logits.out_dir={logits_root}/tiny_llama",
        f"stages.distill.logits_dir={logits_root}",
        f"stages.distill.out_dir={trained_run.root}/pseudo-student",
        f"stages.distill.pseudo_dir={pseudo_dir}",
        "stages.distill.pseudo_weight=0.5",
        "stages.distill.folds=0",
    ]
    cfg = pseudo_cfg(trained_run, pool, "pseudo", *base)
    dump_logits.run(cfg)
    out = distill.run(cfg)
    run_data = load_run_data(cfg)
    _, valid = split_by_fold(run_data.labelled, run_data.folds, 0)
    oof = pd.read_parquet(out / "fold_0" / "oof.parquet")
    assert sorted(oof["id"]) == sorted(valid["id"])  # validation: the labelled fold rows only
    assert not set(oof["id"]) & set(pool["fresh"])
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert metrics["extra_train_examples"] == 2 * 13  # both orientations (swap=random)
    assert metrics["train_examples"] == 2 * metrics["train_rows"] + 26
    manifest = json.loads((out / "fold_0" / "manifest.json").read_text())
    inputs = {Path(i["path"]).name for i in manifest["inputs"]}
    assert {ROWS, LOGITS} <= inputs
    # the same fold without pseudo rows is not the finished one: it is retrained, not reused
    plain = pseudo_cfg(trained_run, pool, "pseudo", *base[:3], "stages.distill.folds=0")
    distill.run(plain)
    again = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert again["extra_train_examples"] == 0
