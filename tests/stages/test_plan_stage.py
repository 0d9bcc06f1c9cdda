"""Stage ``plan``: the first-place config projected from a length mix, and a run's own test
rows tokenised, both without a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arena_distill.config import compose
from arena_distill.stages import plan
from tests.stages.conftest import small_cfg


def test_the_plan_stage_projects_the_first_place_config_without_a_gpu(tmp_path):
    mix = tmp_path / "lengths.json"
    rng = np.random.default_rng(0)
    mix.write_text(json.dumps(rng.integers(64, 2600, size=64).tolist()))
    cfg = compose(
        [
            "experiment=first_place",
            f"run_dir={tmp_path}/run",
            f"stages.plan.lengths={mix}",
            "stages.plan.rows=25000",
        ]
    )
    out = plan.run(cfg)
    data = json.loads((out / "plan.json").read_text())
    assert [(p["max_length"], p["tta"]) for p in data["plans"]] == [
        (2000, True),
        (1024, True),
        (2000, False),
        (1024, False),
    ]
    assert all(p["rows"] == 25000 for p in data["plans"])
    assert data["device"]["name"] == "t4" and data["n_devices"] == 2
    fits = [p for p in data["plans"] if p["fits"]]
    assert data["chosen"] == (fits[0] if fits else None)
    assert (out / "plan.txt").read_text().startswith("25000 rows")


def test_the_plan_stage_tokenises_the_runs_test_rows(trained_run):
    """On a run's own test rows (tiny model: its config.json gives the architecture)."""
    from arena_distill.stages import plan

    cfg = small_cfg(trained_run.root, "stages.plan.device=cpu", "stages.plan.n_devices=1")
    cfg.stages.plan.out_dir = str(trained_run.root / "plan-test")
    data = json.loads((plan.run(cfg) / "plan.json").read_text())
    assert data["rows_given"] == 10 and data["plans"][0]["tflops"] > 0


def test_the_folds_final_costs_one_forward_pass_per_fold(tmp_path):
    """pipeline.final=folds: every row predicted by each of the n_folds students; the projected
    work is n_folds times the merge's (the fixed seconds once)."""
    mix = tmp_path / "lengths.json"
    mix.write_text(json.dumps([100, 700, 1500, 2500] * 8))
    base = [
        "experiment=first_place",
        f"stages.plan.lengths={mix}",
        "stages.plan.rows=25000",
        "data.folds.n_folds=5",
    ]
    merge = json.loads(
        (plan.run(compose([*base, f"run_dir={tmp_path}/a"])) / "plan.json").read_text()
    )
    folds = json.loads(
        (
            plan.run(compose([*base, f"run_dir={tmp_path}/b", "pipeline.final=folds"]))
            / "plan.json"
        ).read_text()
    )
    assert merge["models"] == 1 and folds["models"] == 5
    fixed = 300.0
    for m, f in zip(merge["plans"], folds["plans"], strict=True):
        assert f["tflops"] == pytest.approx(5 * m["tflops"])
        assert f["seconds"] - fixed == pytest.approx(5 * (m["seconds"] - fixed))
    assert (
        (tmp_path / "b" / "plan" / "plan.txt")
        .read_text()
        .splitlines()[0]
        .endswith("5 forward passes per row")
    )


def test_the_full_final_costs_one_pass_and_one_more_student_training_run(tmp_path):
    """pipeline.final=full: the merge's inference work, K + 1 student runs; the extra training
    share is counted on the run's folds file when there is one."""
    from arena_distill import planner

    mix = tmp_path / "lengths.json"
    mix.write_text(json.dumps([100, 700, 1500, 2500] * 8))
    base = [
        "experiment=first_place",
        f"stages.plan.lengths={mix}",
        "stages.plan.rows=25000",
        "data.folds.n_folds=5",
    ]
    merge = json.loads(
        (plan.run(compose([*base, f"run_dir={tmp_path}/a"])) / "plan.json").read_text()
    )
    full = json.loads(
        (
            plan.run(compose([*base, f"run_dir={tmp_path}/b", "pipeline.final=full"])) / "plan.json"
        ).read_text()
    )
    assert full["models"] == 1 and [p["tflops"] for p in full["plans"]] == [
        p["tflops"] for p in merge["plans"]
    ]
    assert full["final"]["student_runs"] == 6 and merge["final"]["student_runs"] == 5
    assert full["final"]["extra_training_share"] == pytest.approx(1 / 4)  # no folds file
    text = (tmp_path / "b" / "plan" / "plan.txt").read_text().splitlines()[1]
    assert "6 student runs, one more than the 5 fold students" in text
    # with a folds file: 10 cv rows in 5 folds and 3 extra rows
    cost = planner.final_cost("full", 5, fold_rows=[8 + 3] * 5, all_rows=10 + 3)
    assert cost["extra_training_share"] == pytest.approx(13 / 55)
    assert "over 13 rows (a fold student's: 11-11)" in planner.describe_final(cost)
