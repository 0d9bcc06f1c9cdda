"""Stage ``stack`` on the shared trained run: the teacher's folds play the fold students, the
tiny Llama + fold-0 adapter the final model; the report shows ``stacked`` beside the others and
``kaggle.predict_csv`` with the shipped stacker writes the stage's submission."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill import kaggle
from arena_distill.data.folds import read_folds
from arena_distill.encode import prompt_config
from arena_distill.metrics import log_loss
from arena_distill.stacking import STACKER_DIR, load_stacker_dir
from arena_distill.stages import baselines, predict, report, stack
from arena_distill.submission import read_submission
from tests.stages.conftest import small_cfg

OVERRIDES: dict[int, list[str]] = {}  # the fixture's small_cfg arguments, by config


def _overrides(cfg) -> list:
    root, *rest = OVERRIDES[id(cfg)]
    return [Path(root), *rest]


PREDICT = [
    "stages.predict.max_length=null",
    "stages.predict.progress=false",
    "stages.predict.batch_size=4",
    "stages.predict.time_budget_hours=null",
]


@pytest.fixture(scope="module")
def stacked(trained_run):
    root = trained_run.root / "stack-test"
    base = small_cfg(trained_run.root)
    model_dir = Path(base.stages.tiny_models.out_dir) / "tiny_llama"
    adapter = Path(base.stages.teacher.out_dir) / "fold_0" / "adapter"
    common = [
        f"stages.predict.model_dir={model_dir}",
        f"stages.predict.adapter_dir={adapter}",
        f"stages.tokenize.cache_dir={root}/cache",
        *PREDICT,
    ]
    for split in ("holdout", "test"):
        predict.run(
            small_cfg(
                trained_run.root,
                *common,
                f"stages.predict.split={split}",
                f"stages.predict.out_dir={root}/{split}",
            )
        )
    overrides = [
        *common,
        f"stages.baselines.out_dir={root}/baselines",
        "stages.baselines.max_features=500",
        f"stages.stack.out_dir={root}/stack",
        f"stages.stack.student_dir={base.stages.teacher.out_dir}",
        f"stages.stack.holdout_dir={root}/holdout",
        f"stages.stack.test_dir={root}/test",
        "stages.stack.cs=[0.01,1.0]",
        f"stages.report.out_dir={root}/report",
        f"stages.report.stack_dir={root}/stack",
        f"stages.report.baselines_dir={root}/baselines",
        f"stages.report.holdout_dir={root}/no-holdout",
        "stages.report.plots=false",
    ]
    cfg = small_cfg(trained_run.root, *overrides)
    OVERRIDES[id(cfg)] = [str(trained_run.root), *overrides]
    baselines.run(cfg)
    return root, cfg, stack.run(cfg), model_dir, adapter


def test_the_stage_cross_fits_out_of_fold_and_applies_the_final_model(stacked, trained_run):
    root, cfg, out, _, _ = stacked
    assert out == root / "stack"
    folds = read_folds(trained_run.root / "runs" / "demo" / "data" / "folds.csv")
    cv = folds[folds["split"] == "cv"]
    oof = pd.read_parquet(out / "oof.parquet")
    assert sorted(oof["id"]) == sorted(cv["id"])
    want = cv.set_index("id")["fold"].loc[oof["id"]].to_numpy()
    assert (oof["fold"].to_numpy() == want).all()
    hold = pd.read_parquet(out / "holdout.parquet")
    assert sorted(hold["id"]) == sorted(folds.loc[folds["split"] == "holdout", "id"])
    m = json.loads((out / "metrics.json").read_text())
    y = oof["label"].to_numpy()
    assert m["oof"]["log_loss"] == pytest.approx(log_loss(oof[["p_a", "p_b", "p_tie"]], y))
    assert m["oof"]["log_loss_tta"] == pytest.approx(
        log_loss(oof[["tta_p_a", "tta_p_b", "tta_p_tie"]], y)
    )
    assert len(m["fold_log_loss"]) == 3 and len(m["choice_per_fold"]) == 3
    # the regression at either C, or one input passed through: whichever scored best
    assert set(m["scores"]) == {
        "C=0.01",
        "C=1.0",
        "student",
        "baseline/length_lr",
        "baseline/tfidf_lr",
    }
    assert m["choice"] == min(m["scores"], key=m["scores"].get)
    assert (m["c"] is None) == (not m["choice"].startswith("C="))
    # the refitted baselines are the baselines stage's holdout models
    assert max(m["baseline_refit_max_abs_diff"].values()) < 1e-9
    info = json.loads((out / STACKER_DIR / "stacker.json").read_text())
    assert info["features"][:3] == ["student:a", "student:b", "student:tie"]
    assert info["baselines"] == ["length_lr", "tfidf_lr"] and info["length"] is True
    assert np.asarray(info["coef"]).shape == (3, len(info["features"]))
    assert "student" in info["mapping"]
    assert json.loads((out / "manifest.json").read_text())["stage"] == "stack"
    # the test rows: the stacker on the final model's predictions, swap-TTA
    test = pd.read_parquet(out / "test_predictions.parquet")
    sub = read_submission(out / "submission.csv")
    assert sub["id"].tolist() == test["id"].tolist()
    np.testing.assert_allclose(
        sub.iloc[:, 1:].to_numpy(), test[["tta_p_a", "tta_p_b", "tta_p_tie"]], atol=1e-6
    )


def test_the_stacker_applied_by_hand_gives_the_holdout_rows(stacked, trained_run):
    """stacker/ alone (numpy) + the final model's holdout logits = the stage's holdout.parquet."""
    from arena_distill.layout import load_run_data

    root, cfg, out, _, _ = stacked
    shipped = load_stacker_dir(out / STACKER_DIR)
    rows = load_run_data(cfg).rows("holdout")
    preds = pd.read_parquet(root / "holdout" / "predictions.parquet").set_index("id")
    preds = preds.loc[rows["id"].astype(str)]
    p, tta = shipped.predict(
        rows,
        preds[["logit_a", "logit_b", "logit_tie"]].to_numpy(),
        preds[["swap_logit_a", "swap_logit_b", "swap_logit_tie"]].to_numpy(),
    )
    hold = pd.read_parquet(out / "holdout.parquet").set_index("id").loc[rows["id"].astype(str)]
    np.testing.assert_allclose(p, hold[["p_a", "p_b", "p_tie"]], atol=1e-12)
    np.testing.assert_allclose(tta, hold[["tta_p_a", "tta_p_b", "tta_p_tie"]], atol=1e-12)


def test_the_report_shows_stacked_beside_the_others(stacked):
    root, cfg, out, _, _ = stacked
    m = json.loads((report.run(cfg) / "metrics.json").read_text())
    stage_m = json.loads((out / "metrics.json").read_text())
    assert m["oof_log_loss"]["stacked"] == pytest.approx(stage_m["oof"]["log_loss"], abs=1e-9)
    assert m["oof_log_loss"]["stacked+tta"] == pytest.approx(
        stage_m["oof"]["log_loss_tta"], abs=1e-9
    )
    assert m["holdout_log_loss"]["stacked"] == pytest.approx(
        stage_m["holdout"]["log_loss"], abs=1e-9
    )
    assert {"baseline/tfidf_lr", "teacher/tiny_llama"} <= set(m["oof_log_loss"])
    assert "| stacked" in (root / "report" / "report.md").read_text()


def test_predict_csv_with_the_shipped_stacker_writes_the_stages_submission(
    stacked, trained_run, tmp_path
):
    root, cfg, out, model_dir, adapter = stacked
    shipped = tmp_path / "model"
    shutil.copytree(model_dir, shipped)
    shutil.copytree(out / STACKER_DIR, shipped / STACKER_DIR)
    demo = Path(cfg.stages.demo_data.out_dir)
    settings = {
        "tta": True,
        "devices": "cpu",
        "time_budget_hours": None,
        "max_length": cfg.prompt.max_length,
        "batch_size": 4,
        "progress": False,
    }
    common = dict(
        sample_submission=demo / "sample_submission.csv",
        adapter_dir=adapter,
        prompt=prompt_config(cfg),
        model_cfg=dict(cfg.model),
        settings=settings,
        fail_safe=False,
    )
    out_csv = kaggle.predict_csv(demo / "test.csv", shipped, tmp_path / "k" / "sub.csv", **common)
    theirs = read_submission(out / "submission.csv").set_index("id")
    mine = read_submission(out_csv).set_index("id")
    assert sorted(mine.index) == sorted(theirs.index)
    np.testing.assert_allclose(mine.loc[theirs.index].to_numpy(), theirs.to_numpy(), atol=1e-6)
    assert json.loads((tmp_path / "k" / "arena_distill" / "submission.json").read_text())[
        "stacked"
    ] == len(theirs)
    # stack=False: the model's own predictions, which differ
    plain = kaggle.predict_csv(
        demo / "test.csv", shipped, tmp_path / "p" / "sub.csv", stack=False, **common
    )
    assert not np.allclose(
        read_submission(plain).set_index("id").loc[theirs.index].to_numpy(), theirs.to_numpy()
    )


def test_a_row_without_finite_logits_keeps_the_models_fallback(stacked, tmp_path):
    root, cfg, out, _, _ = stacked
    broken = tmp_path / "holdout"
    shutil.copytree(root / "holdout", broken)
    preds = pd.read_parquet(broken / "predictions.parquet")
    preds.loc[0, "logit_a"] = np.nan
    preds.to_parquet(broken / "predictions.parquet", index=False)
    again = stack.run(
        small_cfg(
            *_overrides(cfg),
            f"stages.stack.out_dir={tmp_path}/stack",
            f"stages.stack.holdout_dir={broken}",
        )
    )
    hold = pd.read_parquet(again / "holdout.parquet").set_index("id")
    first = preds.iloc[0]
    want = first[["final_p_a", "final_p_b", "final_p_tie"]].to_numpy(dtype=float)
    np.testing.assert_allclose(hold.loc[first["id"], ["p_a", "p_b", "p_tie"]], want)
    np.testing.assert_allclose(hold.loc[first["id"], ["tta_p_a", "tta_p_b", "tta_p_tie"]], want)
    assert np.isfinite(hold.to_numpy(dtype=float)).all()
