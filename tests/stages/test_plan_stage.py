"""Stage ``plan``: the first-place config projected from a length mix, and a run's own test
rows tokenised, both without a GPU."""

from __future__ import annotations

import json

import numpy as np

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
