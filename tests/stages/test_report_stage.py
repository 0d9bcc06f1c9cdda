"""The report stage on the shared trained run (data + tiny Llama teacher on 3 folds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from arena_distill.data.folds import read_folds
from arena_distill.io import read_json
from arena_distill.stages import report
from tests.stages.conftest import small_cfg


def test_report_stage_on_trained_run(trained_run):
    out = trained_run.root / "report-x"
    cfg = small_cfg(
        trained_run.root, f"stages.report.out_dir={out}", "stages.report.temperature_scaling=true"
    )
    assert report.run(cfg) == out
    m = json.loads((out / "metrics.json").read_text())
    folds = read_folds(trained_run.root / "runs" / "demo" / "data" / "folds.csv")
    n_cv = int((folds["split"] == "cv").sum())
    for stage in ("teacher/tiny_llama", "teacher/tiny_llama+tta"):
        assert len(m["fold_log_loss"][stage]) == 3
        assert m["n_rows"][stage] == n_cv
        assert 0 < m["oof_log_loss"][stage] < 5
    assert "teacher/tiny_llama+ts" in m["oof_log_loss"]
    assert 1.0 < m["prior_log_loss"] < 1.1  # three roughly balanced classes: ~log 3
    # the teacher stage's own OOF score is the report's
    teacher = read_json(
        trained_run.root / "runs" / "demo" / "teachers" / "tiny_llama" / "metrics.json"
    )
    assert m["oof_log_loss"]["teacher/tiny_llama"] == pytest.approx(
        teacher["oof"]["log_loss"], abs=1e-5
    )
    assert m["oof_log_loss"]["teacher/tiny_llama+tta"] == pytest.approx(
        teacher["oof"]["log_loss_tta"], abs=1e-5
    )
    assert m["fold_log_loss"]["teacher/tiny_llama"] == pytest.approx(
        teacher["fold_log_loss"], abs=1e-5
    )
    assert (out / "report.md").is_file()
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert read_json(out / "manifest.json")["stage"] == "report"
    # the cost of every stage output of the run, fold folders included
    cost = {r["output"]: r for r in m["cost"]}
    trained = ["pretrain/tiny_llama", *(f"teachers/tiny_llama/fold_{k}" for k in range(3))]
    assert {"data", "models", *trained} <= set(cost)
    for output in trained:
        r = cost[output]
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 0, r
        assert r["train_examples_per_s"] > 0 and r["train_tokens_per_s"] > 0, r
    assert cost["teachers/tiny_llama/fold_0"]["rows_per_s"] > 0  # its OOF prediction
    assert cost["data"]["seconds"] > 0 and cost["data"]["train_examples_per_s"] is None
    assert not any(o.startswith(("logs", "report")) or "/." in o for o in cost)
    md = (out / "report.md").read_text()
    assert "## Cost" in md and "| teachers/tiny_llama/fold_2 | teacher |" in md


def test_compare_run_with_itself(trained_run):
    run_dir = trained_run.root / "runs" / "demo"
    out = trained_run.root / "report-cmp"
    cfg = small_cfg(
        trained_run.root,
        f"stages.report.out_dir={out}",
        f"stages.report.compare_with={run_dir}",
        "stages.report.plots=false",
    )
    report.run(cfg)
    c = json.loads((out / "comparison.json").read_text())
    assert set(c["oof_log_loss"]) == {"teacher/tiny_llama", "teacher/tiny_llama+tta"}
    for v in c["oof_log_loss"].values():
        assert v["diff"] == 0.0
    assert all(d == 0.0 for v in c["fold_log_loss"].values() for d in v["diff"])
    assert (out / "comparison.md").is_file() and (out / "comparison.html").is_file()
    assert not list(out.glob("plots/*.png"))
    # the functional entry gives the same
    assert (
        report.compare(run_dir, run_dir, trained_run.root / "cmp2")["oof_log_loss"]
        == (c["oof_log_loss"])
    )
    assert pd.read_parquet(run_dir / "teachers" / "tiny_llama" / "oof.parquet")["id"].is_unique
