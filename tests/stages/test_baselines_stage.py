"""Integration: the baselines stage on the shared trained run, read back by the report."""

from __future__ import annotations

import json

import pandas as pd

from arena_distill.layout import load_run_data
from arena_distill.stages import baselines, report
from tests.stages.conftest import small_cfg


def test_baselines_oof_and_holdout_feed_the_report(trained_run):
    root = trained_run.root
    cfg = small_cfg(
        root,
        f"stages.baselines.out_dir={root}/baselines-x",
        f"stages.report.baselines_dir={root}/baselines-x",
        f"stages.report.out_dir={root}/report-baselines",
    )
    out = baselines.run(cfg)
    folds = load_run_data(cfg).folds
    for name in ("prior", "length_lr", "tfidf_lr"):
        oof = pd.read_parquet(out / name / "oof.parquet")
        assert sorted(oof["id"]) == sorted(folds.loc[folds["split"] == "cv", "id"])
        hold = pd.read_parquet(out / name / "holdout.parquet")
        assert sorted(hold["id"]) == sorted(folds.loc[folds["split"] == "holdout", "id"])
        assert json.loads((out / name / "manifest.json").read_text())["stage"] == "baselines"
    metrics = json.loads((report.run(cfg) / "metrics.json").read_text())
    # the baseline's prior is each fold's training mix; the report's floor is the cv-wide mix
    assert abs(metrics["oof_log_loss"]["baseline/prior"] - metrics["prior_log_loss"]) < 2e-3
    assert set(metrics["holdout_log_loss"]) >= {"baseline/length_lr", "baseline/tfidf_lr"}
