"""The final models beyond the merge, on one small run of their own (2 folds, a classical
teacher, tiny Llama, one epoch: no teacher training): ``pipeline.final: full`` (the student on
every cv and extra row, merged alone) and the Kaggle package of ``pipeline.final: folds``
(the base model once, the fold adapters, their mean)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill import kaggle
from arena_distill.config import compose
from arena_distill.distillation import all_rows_lookup
from arena_distill.layout import FINAL_COLS, LOGIT_COLS, load_run_data
from arena_distill.submission import read_submission
from tests.stages.conftest import small_overrides

REPO = Path(__file__).resolve().parents[2]
TEACHER = "baseline/tfidf_lr"


def run_overrides(root: Path) -> list[str]:
    return [
        *small_overrides(root),
        "data.folds.n_folds=2",
        f"pipeline.teachers=[{TEACHER}]",
        "pipeline.student=tiny_llama",
        "stages.distill.epochs=1",
        "stages.distill.init_from_pretrain=false",
        "stages.predict.progress=false",
        "stages.predict.batch_size=4",
        "stages.predict.max_length=null",
        "stages.predict.time_budget_hours=null",
        "stages.predict.devices=cpu",
    ]


@pytest.fixture(scope="module")
def final_run(tmp_path_factory):
    """demo data -> data -> tiny models -> the TF-IDF teacher's dump -> the 2 fold students ->
    the full student (the ids it was given to train on recorded)."""
    from arena_distill.baselines import dump_overrides
    from arena_distill.stages import data, demo_data, distill, dump_logits, full, tiny_models

    root = tmp_path_factory.mktemp("final")
    overrides = run_overrides(root)
    cfg = compose(overrides)
    for stage in (demo_data, data, tiny_models):
        stage.run(cfg)
    dump_logits.run(compose([*overrides, *dump_overrides(TEACHER)]))
    distill.run(cfg)
    seen: list[list[str]] = []
    make_examples = full.make_examples

    def spy(ids, *args, **kwargs):
        seen.append([str(i) for i in ids])
        return make_examples(ids, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(full, "make_examples", spy)
        full.run(cfg)
    return root, overrides, cfg, seen


def test_the_full_teacher_target_is_the_mean_of_the_teacher_folds_that_trained_on_the_row():
    logits = {
        (0, "a", False): np.array([2.0, 0.0, -1.0], np.float32),
        (1, "a", False): np.array([0.0, 1.0, 0.0], np.float32),
        (1, "b", True): np.array([0.5, 0.5, 3.0], np.float32),
    }
    got = all_rows_lookup(logits)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    want_a = np.log((softmax(logits[(0, "a", False)]) + softmax(logits[(1, "a", False)])) / 2)
    np.testing.assert_allclose(got[("a", False)], want_a, rtol=0, atol=1e-6)
    # a row in one fold only: its own log-probabilities (the same softmax as its logits)
    np.testing.assert_allclose(
        got[("b", True)], np.log(softmax(logits[(1, "b", True)])), rtol=0, atol=1e-6
    )
    assert set(got) == {("a", False), ("b", True)}


def test_the_full_student_trains_on_every_cv_and_extra_row_never_holdout_or_test(final_run):
    root, overrides, cfg, seen = final_run
    run = load_run_data(cfg)
    folds = run.folds.assign(id=run.folds["id"].astype(str))
    cv_extra = set(folds.loc[folds["split"].isin(["cv", "extra"]), "id"])
    holdout = set(folds.loc[folds["split"] == "holdout", "id"])
    test = set(pd.read_parquet(run.data_dir / "test.parquet")["id"].astype(str))
    assert holdout and test  # the run has both, so "never" means something
    assert len(seen) == 1  # the labelled rows, one call (no pseudo rows)
    trained = seen[0]
    assert len(trained) == len(set(trained)) and set(trained) == cv_extra
    assert not set(trained) & (holdout | test)
    out = Path(cfg.stages.full.out_dir)
    recorded = pd.read_csv(out / "train_ids.csv", dtype={"id": str})
    assert set(recorded["id"]) == cv_extra and set(recorded["split"]) <= {"cv", "extra"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "full" and manifest["fingerprint"]["stage"] == "full"
    assert "stages.distill.epochs" in manifest["fingerprint"]["settings"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    # a fold student trains on fewer rows: every cv row of the other fold, the extra rows
    fold0 = json.loads((Path(cfg.stages.distill.out_dir) / "fold_0" / "metrics.json").read_text())
    assert fold0["train_rows"] < json.loads((out / "metrics.json").read_text())["rows"]


def test_the_full_student_merges_alone_exactly_and_predicts_the_holdout(final_run):
    """The merge stage takes the full stage's one adapter (weight 1): the merged model
    predicts what the base with the adapter predicts."""
    from arena_distill.stages import merge, predict

    root, overrides, cfg, _ = final_run
    merged = root / "full_merged"
    merge.run(
        compose(
            [
                *overrides,
                f"stages.merge.source={cfg.stages.full.out_dir}",
                f"stages.merge.out_dir={merged}",
            ]
        )
    )
    assert json.loads((merged / "merge.json").read_text())["source_stage"] == "full"
    holdout = ["stages.predict.split=holdout"]
    a = predict.run(
        compose(
            [
                *overrides,
                *holdout,
                f"stages.predict.model_dir={merged}",
                f"stages.predict.out_dir={root}/holdout/full",
            ]
        )
    )
    b = predict.run(
        compose(
            [
                *overrides,
                *holdout,
                "stages.predict.model_dir=${model.name_or_path}",
                f"stages.predict.adapter_dir={cfg.stages.full.out_dir}/adapter",
                f"stages.predict.out_dir={root}/holdout/full_adapter",
            ]
        )
    )
    pa, pb = (pd.read_parquet(x / "predictions.parquet") for x in (a, b))
    assert pa["id"].tolist() == pb["id"].tolist() and len(pa) > 0
    np.testing.assert_allclose(
        pa[list(LOGIT_COLS)].to_numpy(), pb[list(LOGIT_COLS)].to_numpy(), atol=1e-4
    )


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "package_kaggle", REPO / "scripts/package_kaggle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_kaggle_folds_package_predicts_the_mean_of_the_fold_students(final_run, tmp_path):
    """Packaged with --final folds (the base once, the 2 fold adapters), kaggle.predict_csv
    gives the ensemble stage's probabilities (the mean of the fold students' predict stage
    outputs) and every test id exactly once."""
    from arena_distill.stages import ensemble, predict

    root, overrides, cfg, _ = final_run
    run_dir = Path(cfg.run_dir)
    for k in range(2):
        predict.run(
            compose(
                [
                    *overrides,
                    "stages.predict.model_dir=${model.name_or_path}",
                    f"stages.predict.adapter_dir={cfg.stages.distill.out_dir}/fold_{k}/adapter",
                    f"stages.predict.out_dir={cfg.stages.ensemble.sources_dir}/fold_{k}",
                ]
            )
        )
    stage_out = ensemble.run(cfg)

    script = _load_script()
    script.build_project_wheel = lambda dest: dest / "arena_distill-0-py3-none-any.whl"
    out = tmp_path / "dataset"
    args = ["--run-dir", str(run_dir), "--final", "folds", "--out", str(out)]
    args += ["--kaggle-user", "tester", "--no-deps", "--no-stacker", "--", *overrides]
    # a run plan of the 2 folds that fits nothing refuses the package
    (run_dir / "plan").mkdir()
    (run_dir / "plan" / "plan.json").write_text(json.dumps({"models": 2, "chosen": None}))
    with pytest.raises(SystemExit, match="no plan of the 2 fold students fits"):
        script.main(args)
    (run_dir / "plan" / "plan.json").unlink()
    script.main(args)
    model = out / "model"
    info = kaggle.read_prompt_file(model)
    assert info["format"] == 2
    assert info["final"]["kind"] == "folds"
    assert info["final"]["adapters"] == ["folds/fold_0", "folds/fold_1"]
    assert (model / "config.json").is_file()  # the base, once

    demo = Path(cfg.stages.demo_data.out_dir)
    out_csv = kaggle.predict_csv(
        demo / "test.csv",
        model,
        tmp_path / "kaggle" / "submission.csv",
        sample_submission=demo / "sample_submission.csv",
        settings={"devices": "cpu", "progress": False, "time_budget_hours": 9.0},
        fail_safe=False,
    )
    work = tmp_path / "kaggle" / "arena_distill"
    want = pd.read_parquet(stage_out / "predictions.parquet")
    got = pd.read_parquet(work / "predictions" / "predictions.parquet")
    assert got["id"].tolist() == want["id"].tolist()
    cols = [c for c in want.columns if c.startswith(("p_", "tta_p_", "final_p_", "logit_"))]
    assert set(FINAL_COLS) <= set(cols) and any(c.startswith("tta_p_") for c in cols)
    np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(), atol=1e-6)
    sub, stage_sub = read_submission(out_csv), read_submission(stage_out / "submission.csv")
    test_ids = pd.read_csv(demo / "test.csv", dtype={"id": str})["id"].tolist()
    assert sub["id"].is_unique and sorted(sub["id"]) == sorted(test_ids)
    assert sorted(stage_sub["id"]) == sorted(test_ids)
    np.testing.assert_allclose(
        sub.set_index("id").loc[test_ids].to_numpy(),
        stage_sub.set_index("id").loc[test_ids].to_numpy(),
        atol=1e-6,
    )
    report = json.loads((work / "submission.json").read_text())
    assert report["folds"] == {"planned": 2, "averaged": 2, "skipped": [], "failed": None}
    assert report["prior"] == 0 and report["predicted"] == len(test_ids)
    # the time guard of fold k planned for the folds still to run
    passes = [
        json.loads((work / "fold_predictions" / f"fold_{k}" / "metrics.json").read_text())["guard"][
            "passes"
        ]
        for k in range(2)
    ]
    assert passes == [2, 1]
