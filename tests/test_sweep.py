"""scripts/sweep.py: grid points, the scores each point's run folder holds, one results table."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.stages.conftest import small_overrides


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep", REPO_ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_values_keep_bracketed_lists_and_points_are_the_product(sweep):
    grid = sweep.parse_grid(["a.b=1,2", "pipeline.teachers=[x],[x,baseline/tfidf_lr]"])
    assert grid == [("a.b", ["1", "2"]), ("pipeline.teachers", ["[x]", "[x,baseline/tfidf_lr]"])]
    pts = sweep.points(grid)
    assert [o for _, o in pts] == [
        ["a.b=1", "pipeline.teachers=[x]"],
        ["a.b=1", "pipeline.teachers=[x,baseline/tfidf_lr]"],
        ["a.b=2", "pipeline.teachers=[x]"],
        ["a.b=2", "pipeline.teachers=[x,baseline/tfidf_lr]"],
    ]
    assert [n for n, _ in pts][:2] == [
        "p00_b-1_teachers-x",
        "p01_b-1_teachers-x-baseline-tfidf_lr",
    ]
    for bad in (["a.b"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(SystemExit):
            sweep.parse_grid(bad)


def _write(path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_scores_come_from_the_report_else_from_the_stages(sweep, tmp_path):
    run = tmp_path / "run"
    # a one-fold teacher (fold 0 only), a finished student, a baseline
    _write(
        run / "teachers/m/fold_0/metrics.json",
        {"log_loss": 0.9, "log_loss_tta": 0.89, "prior_log_loss": 1.05},
    )
    _write(run / "students/s/metrics.json", {"oof": {"log_loss": 0.95, "log_loss_tta": 0.94}})
    _write(
        run / "baselines/tfidf_lr/metrics.json",
        {"oof_log_loss": 1.0, "holdout_log_loss": 1.1, "fold_log_loss": [0.98, 1.02]},
    )
    assert sweep.scores(run) == {
        "fold_0:teacher/m": 0.9,
        "fold_0:teacher/m+tta": 0.89,
        "fold_0:prior": 1.05,
        "oof:student/s": 0.95,
        "oof:student/s+tta": 0.94,
        "oof:baseline/tfidf_lr": 1.0,
        "holdout:baseline/tfidf_lr": 1.1,
        "fold_0:baseline/tfidf_lr": 0.98,
        "fold_1:baseline/tfidf_lr": 1.02,
    }
    # the report's numbers win where it has them
    _write(
        run / "report/metrics.json",
        {"oof_log_loss": {"student/s": 0.96}, "holdout_log_loss": {"merged": 0.97}},
    )
    got = sweep.scores(run)
    assert got["oof:student/s"] == 0.96 and got["holdout:merged"] == 0.97


def test_the_table_has_a_column_per_point_and_the_best_in_bold(sweep):
    """(minutes of this sweep and of the point's recorded pipeline steps)"""
    records = [
        {
            "point": "p00",
            "overrides": ["a=1"],
            "status": "ok",
            "seconds": 60.0,
            "step_seconds": 30.0,
            "scores": {"oof:x": 0.9, "holdout:x": 1.0},
        },
        {
            "point": "p01",
            "overrides": ["a=2"],
            "status": "ok",
            "seconds": 120.0,
            "scores": {"oof:x": 0.8},
        },
    ]
    md = sweep.markdown(records)
    assert "| p00 | `a=1` | ok | 1.0 | 0.5 |" in md and "| p01 | `a=2` | ok | 2.0 |  |" in md
    assert "| oof:x | 0.9000 | **0.8000** |" in md
    assert "| holdout:x | 1.0000 |  |" in md  # one value: nothing to compare
    assert md.index("| oof:x") < md.index("| holdout:x")


def test_a_sweep_runs_every_point_in_its_own_run_folder(sweep, tmp_path):
    """Two points of the baselines' C on the small demo: two run folders, one table."""
    out = tmp_path / "sweep"
    base = [*small_overrides(tmp_path), "stages.baselines.names=[length_lr]"]
    rc = sweep.main(
        [
            "--out",
            str(out),
            "--grid",
            "stages.baselines.c=0.1,10",
            "--only",
            "demo_data,data,baselines",
            "--python",
            sys.executable,
            *base,
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert [p["point"] for p in results["points"]] == ["p00_c-0.1", "p01_c-10"]
    losses = [p["scores"]["oof:baseline/length_lr"] for p in results["points"]]
    assert losses[0] != losses[1]  # each point ran with its own value
    for p in results["points"]:
        assert (out / p["point"] / "baselines" / "length_lr" / "oof.parquet").is_file()
    assert "oof:baseline/length_lr" in (out / "results.md").read_text()
    assert all(p["step_seconds"] > 0 for p in results["points"])
