"""The one-process pipeline: its plan follows the config, a rerun skips what is fresh, and a
changed setting reruns exactly the steps that read it (and those after them that read those)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from arena_distill import pipeline
from arena_distill.config import compose
from arena_distill.pipeline import model_paths_of, plan, read_state, run_pipeline, step_key
from tests.stages.conftest import small_overrides


def labels(overrides: list[str]) -> list[str]:
    cfg = compose(overrides)
    return [s.label for s in plan(cfg, model_paths_of(cfg, overrides))]


def test_the_demo_plan_is_the_whole_recipe_in_order():
    assert labels(["experiment=demo"]) == [
        "demo_data",
        "data",
        "tiny_models",
        "tokenize",
        "pretrain tiny_llama",
        "pretrain tiny_qwen2",
        "pretrain tiny_gemma2",
        "teacher tiny_llama",
        "teacher tiny_qwen2",
        "dump_logits tiny_llama",
        "dump_logits tiny_qwen2",
        "distill",
        "distill ce_only",
        "merge",
        "quantize",
        "predict",
        "holdout merged",
        "holdout quantized",
        "holdout fold_0",
        "holdout fold_1",
        "holdout fold_2",
        "baselines",
        "stack",
        "report",
    ]


def test_the_plan_follows_the_config():
    real = ["experiment=cpu_real", "data.train.path=some.csv"]
    # real files and models: no demo data, no tiny models; no pretraining, no test set
    assert labels(real) == [
        "data",
        "tokenize",
        "teacher minilm",
        "dump_logits minilm",
        "distill",
        "merge",
        "quantize",
        "holdout merged",
        "holdout quantized",
        "holdout fold_0",
        "holdout fold_1",
        "holdout fold_2",
        "baselines",
        "stack",
        "report",
    ]
    more = labels(
        [
            *real,
            "pipeline.ablate=true",
            "stages.teacher.init_from_pretrain=true",
            "stages.distill.init_from_pretrain=true",
            "data.holdout_frac=0",
        ]
    )
    assert more[:5] == [
        "data",
        "tokenize",
        "pretrain minilm",
        "pretrain minilm_l3",
        "teacher minilm",
    ]
    assert "distill ce_only" in more and not any(x.startswith("holdout") for x in more)


def test_steps_name_the_outputs_they_read():
    cfg = compose(["experiment=demo"])
    steps = {s.label: s for s in plan(cfg, model_paths_of(cfg, ["experiment=demo"]))}
    assert steps["distill"].needs == (
        "data",
        "tiny_models",
        "pretrain tiny_gemma2",
        "dump_logits tiny_llama",
        "dump_logits tiny_qwen2",
    )
    assert steps["holdout fold_1"].overrides[-2:] == (
        "stages.predict.adapter_dir=${stages.distill.out_dir}/fold_1/adapter",
        "stages.predict.out_dir=${run_dir}/holdout/fold_1",
    )
    assert set(steps["report"].needs) == set(steps) - {"report"}
    # the stacker reads the fold students, the baselines and the final model's predictions
    assert steps["stack"].needs == (
        "data",
        "distill",
        "baselines",
        "holdout quantized",
        "predict",
    )


def test_only_refuses_an_unknown_step():
    with pytest.raises(Exception, match="not steps of this pipeline"):
        run_pipeline(["experiment=demo"], only=["teachers"], dry_run=True)


def chain_overrides(root: Path) -> list[str]:
    return [
        *small_overrides(root),
        "pipeline.teachers=[tiny_llama]",
        "pipeline.student=tiny_qwen2",
        "data.folds.n_folds=2",
        "stages.teacher.epochs=1",
        "stages.distill.epochs=1",
        "stages.pretrain.epochs=1",
        "stages.quantize.n_calibration=8",
    ]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The whole chain once on a small demo (one teacher, 2 folds), in one process."""
    root = tmp_path_factory.mktemp("pipeline")
    overrides = chain_overrides(root)
    records = run_pipeline(overrides)
    FIRST_REPORT.update(json.loads((root / "runs/demo/report/metrics.json").read_text()))
    return root, overrides, records


FIRST_REPORT: dict = {}  # the chain's first report (later tests rerun parts of the chain)


def test_the_chain_runs_every_stage_and_writes_the_report(chain):
    root, overrides, records = chain
    assert [r["status"] for r in records] == ["ran"] * len(records)
    run_dir = root / "runs" / "demo"
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert {"teacher/tiny_llama", "student/tiny_qwen2"} <= set(metrics["oof_log_loss"])
    assert {"merged", "quantized", "folds_mean"} <= set(metrics["holdout_log_loss"])
    # the stack step: cross-fitted OOF and the final model stacked on the holdout
    assert {"stacked", "stacked+tta"} <= set(metrics["oof_log_loss"])
    assert {"stacked", "stacked+tta"} <= set(metrics["holdout_log_loss"])
    assert (run_dir / "stack" / "stacker" / "stacker.json").is_file()
    assert (run_dir / "predictions" / "submission.csv").is_file()
    # Hydra's log layout, which scripts/package_kaggle.py reads
    assert list((run_dir / "logs" / "quantize").glob("*/.hydra/config.yaml"))
    state = read_state(run_dir)
    assert set(state) == {r["label"] for r in records}
    assert all(s["manifest_sha256"] for s in state.values())


def test_a_rerun_skips_everything_fresh_and_a_change_reruns_what_reads_it(chain):
    root, overrides, records = chain
    again = run_pipeline(overrides)
    assert {r["status"] for r in again} == {"skipped"}
    # a copy of the run folder is as fresh as the run (paths are relative to the run folder)
    copy = root / "runs" / "demo_copy"
    shutil.copytree(root / "runs" / "demo", copy)
    moved = run_pipeline([*overrides, f"run_dir={copy}"], dry_run=True)
    assert {r["status"] for r in moved} == {"skipped"}
    shutil.rmtree(copy)
    # the report reads nothing the baselines read: only it runs again
    changed = run_pipeline([*overrides, "stages.report.n_len_buckets=3"])
    ran = [r["label"] for r in changed if r["status"] == "ran"]
    assert ran == ["report"]
    # a baseline setting: the baselines, and the report that reads them
    changed = run_pipeline([*overrides, "stages.report.n_len_buckets=3", "stages.baselines.c=0.5"])
    ran = [r["label"] for r in changed if r["status"] == "ran"]
    assert ran == ["baselines", "stack", "report"]
    # an output touched behind the pipeline's back is not trusted
    manifest = root / "runs" / "demo" / "merged" / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    changed = run_pipeline([*overrides, "stages.report.n_len_buckets=3", "stages.baselines.c=0.5"])
    ran = [r["label"] for r in changed if r["status"] == "ran"]
    assert ran == [
        "merge",
        "quantize",
        "predict",
        "holdout merged",
        "holdout quantized",
        "stack",
        "report",
    ]


def test_a_stage_command_and_the_pipeline_step_write_the_same_files(chain):
    """The pipeline step is the stage: same output files (a predict step against the stage)."""
    from arena_distill.stages import predict

    root, overrides, _ = chain
    out = Path(root) / "solo-predict"
    predict.run(compose([*overrides, "model=tiny_qwen2", f"stages.predict.out_dir={out}"]))
    mine = sorted(p.name for p in out.iterdir())
    theirs = sorted(p.name for p in (root / "runs" / "demo" / "predictions").iterdir())
    assert mine == theirs


def test_determinism_the_same_seed_gives_the_same_numbers(chain, tmp_path):
    """The whole chain again in another folder: every score of the report is the same, to the
    last bit on a CPU (same seed, same machine; training, dumps, merge, GPTQ and prediction
    included). CUDA kernels (atomic adds in backward) are not bit-reproducible by default:
    there the scores must agree to 1e-3."""
    run_pipeline(chain_overrides(tmp_path))
    again = json.loads((tmp_path / "runs" / "demo" / "report" / "metrics.json").read_text())
    for key in ("oof_log_loss", "fold_log_loss", "holdout_log_loss", "prior_log_loss"):
        if not torch.cuda.is_available():
            assert again[key] == FIRST_REPORT[key], key
            continue
        assert sorted(again[key] or {}) == sorted(FIRST_REPORT[key] or {}), key
        for a, b in zip(_numbers(again[key]), _numbers(FIRST_REPORT[key]), strict=True):
            assert a == pytest.approx(b, abs=1e-3), key


def _numbers(value) -> list[float]:
    """Every number of a (nested) metrics value, in key order."""
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [] if value is None else [float(value)]


def test_stale_inputs_refuse_a_stage_command_and_the_pipeline_reruns_them(chain):
    """A stage run by hand after its upstream changed is refused with what changed; the
    pipeline reruns every step after the change and meets no refusal."""
    from arena_distill.io import StageInputError
    from arena_distill.stages import merge, predict

    root, overrides, _ = chain
    before = [*overrides, "stages.report.n_len_buckets=3", "stages.baselines.c=0.5"]
    after = [*before, "stages.merge.method=delta_mean"]
    merge.run(compose([*after, "model=tiny_qwen2"]))  # by hand, behind the pipeline
    with pytest.raises(StageInputError, match=r"^merged changed since quantized was built"):
        predict.run(compose([*after, "model=tiny_qwen2"]))
    records = run_pipeline(after)
    ran = [r["label"] for r in records if r["status"] == "ran"]
    assert ran == [
        "merge",
        "quantize",
        "predict",
        "holdout merged",
        "holdout quantized",
        "stack",
        "report",
    ]


# --- a classical teacher (pipeline.teachers: [baseline/<name>]) -------------------------------


def test_a_baseline_teacher_is_dumped_not_trained():
    overrides = ["experiment=demo", "pipeline.teachers=[tiny_llama,baseline/tfidf_lr]"]
    cfg = compose(overrides)
    steps = {s.label: s for s in plan(cfg, model_paths_of(cfg, overrides))}
    assert not any("baseline/" in label for label in steps if not label.startswith("dump_logits"))
    dump = steps["dump_logits baseline/tfidf_lr"]
    assert dump.needs == ("data",)  # fitted on the data alone, nothing to train first
    assert dump.overrides == (
        "stages.dump_logits.baseline=tfidf_lr",
        "stages.dump_logits.out_dir=${stages.distill.logits_dir}/baseline/tfidf_lr",
    )
    assert "stages.baselines" in dump.reads and "model" not in dump.reads
    assert steps["distill"].needs[-2:] == (
        "dump_logits tiny_llama",
        "dump_logits baseline/tfidf_lr",
    )
    with pytest.raises(Exception, match="not baselines"):
        labels(["experiment=demo", "pipeline.teachers=[baseline/xgboost]"])


def test_a_baseline_teacher_end_to_end_on_the_tiny_demo(tmp_path):
    """The student distilled from TF-IDF LR alone: the whole chain runs, the dump is the
    baseline fitted on each fold's training rows, and a baseline setting reruns the dump."""
    overrides = [
        *chain_overrides(tmp_path),
        "pipeline.teachers=[baseline/tfidf_lr]",
        "pipeline.student=tiny_llama",
        "pipeline.final=folds",
    ]
    records = run_pipeline(overrides)
    ran = [r["label"] for r in records]
    assert "dump_logits baseline/tfidf_lr" in ran and not any(x.startswith("teacher") for x in ran)
    run_dir = tmp_path / "runs" / "demo"
    dump = pd.read_parquet(run_dir / "logits" / "baseline" / "tfidf_lr" / "logits.parquet")
    assert set(dump["split"]) == {"train"} and set(dump["fold"]) == {0, 1}
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert "student/tiny_llama" in metrics["oof_log_loss"]
    assert {"merged", "quantized", "folds_mean"} <= set(metrics["holdout_log_loss"])
    # the dump is the same table the library computes for the run's folds
    from arena_distill.baselines import fold_logit_table
    from arena_distill.layout import read_run_data

    data = read_run_data(run_dir / "data")
    want = fold_logit_table("tfidf_lr", data.labelled, data.folds, 2)
    pd.testing.assert_frame_equal(dump, want)
    # pipeline.final=folds: the submission is the mean of the fold students' predictions
    assert "ensemble" in ran and "predict" not in ran
    folds = [
        pd.read_parquet(run_dir / "fold_predictions" / f"fold_{k}" / "predictions.parquet")
        for k in range(2)
    ]
    final = pd.read_parquet(run_dir / "predictions" / "predictions.parquet")
    cols = ["final_p_a", "final_p_b", "final_p_tie"]
    assert final["id"].tolist() == folds[0]["id"].tolist()
    np.testing.assert_allclose(
        final[cols].to_numpy(), (folds[0][cols].to_numpy() + folds[1][cols].to_numpy()) / 2
    )
    submission = pd.read_csv(run_dir / "predictions" / "submission.csv")
    assert submission["id"].astype(str).tolist() == final["id"].tolist()
    assert metrics["final_model"]["inference_passes"] == {"merge": 1, "folds": 2, "full": 1}
    # the stacked holdout is the stacker applied to the final model: the fold students' mean
    mean = pd.read_parquet(run_dir / "holdout_folds" / "predictions.parquet")
    members = [
        pd.read_parquet(run_dir / "holdout" / f"fold_{k}" / "predictions.parquet") for k in range(2)
    ]
    np.testing.assert_allclose(
        mean[cols].to_numpy(), (members[0][cols].to_numpy() + members[1][cols].to_numpy()) / 2
    )
    stack_manifest = json.loads((run_dir / "stack" / "manifest.json").read_text())
    assert any("holdout_folds" in str(x) for x in stack_manifest["inputs"])
    assert not any("holdout/quantized" in str(x) for x in stack_manifest["inputs"])
    scored = json.loads((run_dir / "holdout_folds" / "metrics.json").read_text())
    assert scored["split"] == "holdout" and scored["models"] == 2
    assert scored["scores"]["plain"]["log_loss"] == pytest.approx(
        metrics["holdout_log_loss"]["folds_mean"], abs=1e-9
    )
    again = run_pipeline([*overrides, "stages.baselines.c=0.5"], dry_run=True)
    # (a dry run does not propagate: what follows the dump reruns once it has run)
    assert [r["label"] for r in again if r["status"] == "would_run"] == [
        "dump_logits baseline/tfidf_lr",
        "baselines",
        "stack",  # reads the baselines' settings too
    ]


def test_the_folds_final_predicts_with_every_fold_student_and_averages():
    overrides = ["experiment=demo", "pipeline.final=folds"]
    cfg = compose(overrides)
    steps = {s.label: s for s in plan(cfg, model_paths_of(cfg, overrides))}
    got = list(steps)
    assert "predict" not in got
    assert got[got.index("quantize") + 1 :][:4] == [
        "predict fold_0",
        "predict fold_1",
        "predict fold_2",
        "ensemble",
    ]
    # the stacker's holdout column is the final model's: the fold students' averaged holdout
    # predictions; its test column the ensemble's
    folds = steps["holdout folds"]
    assert folds.stage == "ensemble" and folds.selector == "holdout"
    assert folds.needs == ("data", "holdout fold_0", "holdout fold_1", "holdout fold_2")
    assert folds.overrides == (
        "stages.ensemble.sources_dir=${run_dir}/holdout",
        "stages.ensemble.split=holdout",
        "stages.ensemble.out_dir=${run_dir}/holdout_folds",
    )
    assert steps["stack"].needs[-2:] == ("holdout folds", "ensemble")
    assert "stages.stack.holdout_dir=${run_dir}/holdout_folds" in steps["stack"].overrides
    # with the merge as the final model, the stacker reads the quantized merge as before
    merge = labels(["experiment=demo"])
    assert "holdout folds" not in merge
    with pytest.raises(Exception, match="pipeline.final"):
        labels(["experiment=demo", "pipeline.final=average"])


def test_the_full_final_trains_one_more_student_merges_it_alone_and_predicts_with_it():
    overrides = ["experiment=demo", "pipeline.final=full"]
    cfg = compose(overrides)
    steps = {s.label: s for s in plan(cfg, model_paths_of(cfg, overrides))}
    got = list(steps)
    # after the fold merge (kept for the report): the full student, its merge, its quantization
    assert got[got.index("quantize") + 1 :][:4] == [
        "full",
        "merge full",
        "quantize full",
        "predict",
    ]
    assert not any(x.startswith(("predict fold_", "ensemble")) for x in got)
    # it learns from the same teachers' dumps as the fold students, with their settings
    assert steps["full"].needs == steps["distill"].needs
    assert steps["full"].overrides == ("model=tiny_gemma2",)
    assert "stages.distill" in pipeline.READS["full"]
    assert steps["merge full"].needs == ("full", "tiny_models")
    assert steps["merge full"].overrides[1:] == (
        "stages.merge.source=${stages.full.out_dir}",
        "stages.merge.out_dir=${stages.full.merged_dir}",
    )
    assert steps["quantize full"].needs == ("data", "merge full")
    # the test rows and the holdout (the report's `full` row) from the quantized full student
    for label, out in (("predict", None), ("holdout full", "${run_dir}/holdout/full")):
        assert steps[label].needs == ("data", "quantize full")
        assert "stages.predict.model_dir=${stages.full.quantized_dir}" in steps[label].overrides
        if out:
            assert f"stages.predict.out_dir={out}" in steps[label].overrides
    # the stacker's holdout column is the final model's, so the full student's
    assert steps["stack"].needs[-2:] == ("holdout full", "predict")
    assert "stages.stack.holdout_dir=${run_dir}/holdout/full" in steps["stack"].overrides
    assert {"full", "merge full", "quantize full", "holdout full"} <= set(steps["report"].needs)
    # --only full selects the student and its merge and quantization
    assert [s.label for s in steps.values() if s.selector == "full"] == [
        "full",
        "merge full",
        "quantize full",
    ]
    # the full student does not rerun when only where the fold students go changes
    state = {n: {"manifest_sha256": "x"} for n in steps}
    moved = compose([*overrides, "stages.distill.out_dir=/elsewhere"])
    assert step_key(steps["full"], moved, state) == step_key(steps["full"], cfg, state)
    slower = compose([*overrides, "stages.distill.lr=1e-4"])
    assert step_key(steps["full"], slower, state) != step_key(steps["full"], cfg, state)


@pytest.mark.slow
def test_the_full_final_end_to_end_on_the_tiny_demo(tmp_path):
    """pipeline.final=full on the classical teacher's small chain: the full student, merged
    alone and quantized, predicts the test rows and gets the report's holdout row."""
    overrides = [
        *chain_overrides(tmp_path),
        "pipeline.teachers=[baseline/tfidf_lr]",
        "pipeline.student=tiny_llama",
        "stages.distill.init_from_pretrain=false",
        "pipeline.final=full",
    ]
    records = run_pipeline(overrides)
    assert all(r["status"] == "ran" for r in records)
    run_dir = tmp_path / "runs" / "demo"
    predictions = json.loads((run_dir / "predictions" / "metrics.json").read_text())
    assert predictions["model_dir"] == str(run_dir / "full_quantized")
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert {"full", "full+tta", "folds_mean", "quantized"} <= set(metrics["holdout_log_loss"])
    assert "full" not in metrics["final_model"]["evidence"]
    assert any(g["step"] == "refit on every row" for g in metrics["recipe_gains"])
    stack = json.loads((run_dir / "stack" / "manifest.json").read_text())
    assert any("holdout/full" in str(i.get("path")) for i in stack["inputs"])
