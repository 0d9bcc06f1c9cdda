"""Kill tests (``pytest -k kill``): every stage SIGKILLed at a seeded point, then run again.

A stage runs as a child process (``tests/faults.py``) that kills itself with ``signal.SIGKILL``
at the n-th hit of a named point of ``arena_distill.faults`` (a training step's end, inside a
checkpoint save, between inference batches, with part of an output folder written, between the
two renames of an output swap), the moment drawn with a seed from the trace of an uninterrupted
run. After the kill: nothing half-written is accepted as the stage's output
(``require_stage_output`` refuses it); after the rerun: the output equals the uninterrupted
run's (bit for bit; training within the resume tolerance of ``test_training.py``, 1e-5) and
every id is there once.

The default suite runs a handful of kill points; ``test_kill_sweep_*`` (slow) many more.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill.config import compose
from arena_distill.data.folds import split_by_fold
from arena_distill.io import MANIFEST, StageInputError, require_stage_output
from arena_distill.layout import LOGIT_COLS, load_run_data
from tests.faults import (
    Runner,
    assert_close_json,
    assert_same_output,
    assert_same_tensors,
    children_cpu_seconds,
    choose_kill,
    leftovers,
    snapshot,
)
from tests.stages.conftest import small_overrides

assert signal.SIGKILL  # the kill is a real SIGKILL (tests/faults.py: KILLED = -SIGKILL)

# resume promises the uninterrupted result up to float noise (test_training.py's tolerance)
RESUME_ATOL = 1e-5
# a run small enough to train, merge, quantize and predict in seconds: 60 rows, 2 folds of 30
# training rows (60 examples with the random swap: 4 steps per epoch, 2 epochs), no pretrain
KILL_RUN = [
    "stages.demo_data.n_train=60",
    "stages.demo_data.n_test=12",
    "data.holdout_frac=0",
    "data.folds.n_folds=2",
    "stages.teacher.init_from_pretrain=false",
    "stages.dump_logits.batch_size=8",
    "stages.predict.batch_size=4",
    "stages.predict.time_budget_hours=null",
    "stages.predict.progress=false",
    "stages.merge.source=${stages.teacher.out_dir}",
    "stages.quantize.n_calibration=16",
    "stages.predict.model_dir=${run_dir}/merged",  # fp32: GPTQ inference on a CPU is slow
]


def overrides(root: Path, *extra: str) -> list[str]:
    return [*small_overrides(root), *KILL_RUN, *extra]


class KillRun:
    """The small run (built once per module), its config and a child-process runner."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = Runner(root / "attempts")

    def args(self, *extra: str) -> list[str]:
        return overrides(self.root, *extra)

    def cfg(self, *extra: str):
        return compose(self.args(*extra))

    def stage(self, name: str, *extra: str) -> list[str]:
        return [name, *self.args(*extra)]


@pytest.fixture(scope="module")
def kill_run(tmp_path_factory) -> KillRun:
    """demo data -> data -> tiny models -> teacher (2 folds) -> merge -> quantize, in process."""
    from arena_distill.stages import data, demo_data, merge, quantize, teacher, tiny_models

    run = KillRun(tmp_path_factory.mktemp("kill"))
    cfg = run.cfg()
    for stage in (demo_data, data, tiny_models, teacher, merge, quantize):
        stage.run(cfg)
    yield run
    # what each attempt cost (the harness's own timing, for sizing the suite)
    attempts = [[a.argv[0], a.kill, a.returncode, a.seconds] for a in run.runner.attempts]
    cost = {"attempts": attempts, "children_cpu_seconds": children_cpu_seconds()}
    (run.root / "attempts.json").write_text(json.dumps(cost))


def refuses(folder: Path, stage: str) -> bool:
    try:
        require_stage_output(folder, stage=stage)
    except StageInputError:
        return True
    return False


def kill_and_rerun(run: KillRun, argv: list[str], out: Path, stage: str, kill: str) -> Path:
    """Kill ``argv`` at ``kill``, check nothing finished was left at ``out``, run it again."""
    run.runner.killed(argv, kill)
    assert refuses(out, stage), f"a killed {stage} left a finished-looking {out}"
    run.runner.ok(argv)
    assert not leftovers(out), leftovers(out)
    return out


# ---------------------------------------------------------------------------------------------
# training: the teacher's fold 0
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_reference(kill_run):
    """Fold 0 of the teacher trained uninterrupted in a child (traced): its trace and a copy."""
    out = kill_run.root / "kill_teacher"
    argv = kill_run.stage("teacher", f"stages.teacher.out_dir={out}", "stages.teacher.folds=0")
    hits = kill_run.runner.traced(argv)
    ref = snapshot(out / "fold_0", kill_run.root / "ref_teacher_fold_0")
    shutil.rmtree(out)
    return argv, out, hits, ref


def check_teacher_fold(run: KillRun, got: Path, ref: Path) -> dict:
    """The rerun's fold equals the uninterrupted one (within RESUME_ATOL), every id once."""
    rd = load_run_data(run.cfg())
    _, valid = split_by_fold(rd.labelled, rd.folds, 0)
    oof, ref_oof = pd.read_parquet(got / "oof.parquet"), pd.read_parquet(ref / "oof.parquet")
    assert sorted(oof["id"]) == sorted(valid["id"]) and not oof["id"].duplicated().any()
    assert oof["id"].tolist() == ref_oof["id"].tolist()
    cols = [*LOGIT_COLS, *(f"swap_{c}" for c in LOGIT_COLS)]
    np.testing.assert_allclose(oof[cols].to_numpy(), ref_oof[cols].to_numpy(), atol=RESUME_ATOL)
    metrics = json.loads((got / "metrics.json").read_text())
    ref_metrics = json.loads((ref / "metrics.json").read_text())
    keys = ("log_loss", "log_loss_tta", "accuracy", "steps", "best_checkpoint", "train_examples")
    assert_close_json({k: metrics[k] for k in keys}, {k: ref_metrics[k] for k in keys}, RESUME_ATOL)
    assert_same_tensors(
        got / "adapter" / "adapter_model.safetensors",
        ref / "adapter" / "adapter_model.safetensors",
        RESUME_ATOL,
    )
    return metrics


def test_sigkill_mid_training_step_resumes_to_the_uninterrupted_result(kill_run, teacher_reference):
    """Killed at a seeded training step after the first checkpoint: the rerun resumes from it
    and ends where the uninterrupted run ends."""
    argv, out, hits, ref = teacher_reference
    shutil.rmtree(out, ignore_errors=True)
    kill = choose_kill(hits, seed=0, points=["train.step"], after="train.save")
    run = kill_and_rerun(kill_run, argv, out, "teacher", kill)
    assert not (run / MANIFEST).exists()  # one fold of two: the teacher is not finished
    metrics = check_teacher_fold(kill_run, run / "fold_0", ref)
    assert metrics["resumed_from"] is not None and metrics["resumed_from"].endswith("-4")
    assert not (out / ".work" / "fold_0").exists()


def test_a_killed_fold_rerun_with_another_setting_trains_afresh(kill_run, teacher_reference):
    """Killed after its first checkpoint, then rerun with another learning rate: the old
    checkpoints belong to other inputs (``train.marked_work_dir``), so the fold trains from
    step 0 instead of resuming an optimizer state built for the old rate."""
    argv, out, _, _ = teacher_reference
    shutil.rmtree(out, ignore_errors=True)
    kill_run.runner.killed(argv, "train.step:6")
    work = out / ".work" / "fold_0"
    assert (work / "checkpoint-4" / "trainer_state.json").is_file()
    kill_run.runner.ok([*argv, "stages.teacher.lr=1e-3"])
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert metrics["resumed_from"] is None and metrics["steps"] == 8
    assert not work.exists()
    shutil.rmtree(out)


def test_sigkill_inside_a_checkpoint_save_is_not_resumed_from(kill_run, teacher_reference):
    """Killed while the first checkpoint is written (weights saved, optimizer and trainer state
    not): the rerun passes over that checkpoint (transformers would resume from it and fail on
    every rerun) and trains to the uninterrupted result."""
    argv, out, _, ref = teacher_reference
    shutil.rmtree(out, ignore_errors=True)
    kill_run.runner.killed(argv, "train.save:1")
    partial = out / ".work" / "fold_0" / "checkpoint-4"
    assert partial.is_dir() and not (partial / "trainer_state.json").exists()
    assert not (out / "fold_0").exists()
    kill_run.runner.ok(argv)
    metrics = check_teacher_fold(kill_run, out / "fold_0", ref)
    assert metrics["resumed_from"] is None


# ---------------------------------------------------------------------------------------------
# inference stages: bit-identical reruns
# ---------------------------------------------------------------------------------------------


def kill_stage_at_seed(
    run: KillRun,
    stage: str,
    argv: list[str],
    out: Path,
    seed: int,
    points=None,
    *,
    over_existing: bool = False,
) -> Path:
    """An inference stage killed at a seeded point of its trace, then run again: the output is
    the uninterrupted run's, bit for bit. ``over_existing``: the stage rewrites a finished
    output of the same config (the trace then reaches the swap of ``atomic_dir``); a kill before
    the swap may leave that finished output in place, never anything else."""
    shutil.rmtree(out, ignore_errors=True)
    if over_existing:
        run.runner.ok(argv)
    hits = run.runner.traced(argv)
    ref = snapshot(out, run.root / f"ref_{stage}")
    if not over_existing:
        shutil.rmtree(out)
    kill = choose_kill(hits, seed, points)
    run.runner.killed(argv, kill)
    if out.exists() and over_existing and not refuses(out, stage):
        assert_same_output(out, ref)  # the previous output, untouched
    else:
        assert refuses(out, stage), f"{stage} killed at {kill} left a finished-looking {out}"
    run.runner.ok(argv)
    assert not leftovers(out), leftovers(out)
    assert_same_output(out, ref)
    return out


def check_logit_ids(run: KillRun, out: Path) -> None:
    """Every training id of every fold, once per orientation."""
    rd = load_run_data(run.cfg())
    table = pd.read_parquet(out / "logits.parquet")
    for fold in range(rd.n_folds):
        train, _ = split_by_fold(rd.labelled, rd.folds, fold)
        for swapped in (False, True):
            ids = table[(table["fold"] == fold) & (table["swapped"] == swapped)]["id"]
            assert sorted(ids) == sorted(train["id"]) and not ids.duplicated().any()


def check_submission_ids(run: KillRun, out: Path) -> None:
    test_ids = pd.read_parquet(Path(run.cfg().stages.data.out_dir) / "test.parquet")["id"]
    sub = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert sorted(sub["id"]) == sorted(test_ids) and not sub["id"].duplicated().any()
    preds = pd.read_parquet(out / "predictions.parquet")
    assert preds["id"].tolist() == sub["id"].tolist()


def test_sigkill_during_the_logit_dump_leaves_no_output_and_the_rerun_is_identical(kill_run):
    argv = kill_run.stage("dump_logits")
    out = Path(kill_run.cfg().stages.dump_logits.out_dir)
    kill_stage_at_seed(kill_run, "dump_logits", argv, out, seed=1, points=["inference.batch"])
    check_logit_ids(kill_run, out)


def test_sigkill_while_the_quantized_folder_is_written_then_rerun_is_identical(kill_run):
    """GPTQ: killed with the model files written into the temporary folder, before the drift
    and manifest; the half-built folder is never taken for the output, and is cleaned up."""
    cfg = kill_run.cfg()
    out = Path(cfg.stages.quantize.out_dir)  # the fixture's uninterrupted output
    ref = snapshot(out, kill_run.root / "ref_quantized")
    shutil.rmtree(out)
    argv = kill_run.stage("quantize")
    kill_run.runner.killed(argv, "quantize.save:1")
    assert refuses(out, "quantize")
    assert [name.split("-")[0] for name in leftovers(out)] == [".quantized.tmp"]
    kill_run.runner.ok(argv)
    assert not leftovers(out)
    assert_same_output(out, ref)


def test_sigkill_between_the_renames_of_an_output_swap_then_rerun_is_identical(kill_run):
    """predict run again over a finished output, killed with the old output moved aside and
    the new one not yet in place: no output is found (never the old one under the new name,
    never a half one), and the rerun writes the same submission, every test id once."""
    argv = kill_run.stage("predict")
    out = Path(kill_run.cfg().stages.predict.out_dir)
    kill_run.runner.ok(argv)
    ref = snapshot(out, kill_run.root / "ref_predictions")
    kill_run.runner.killed(argv, "io.replace:1")
    assert not out.exists() and refuses(out, "predict")
    kill_run.runner.ok(argv)
    assert not leftovers(out)
    assert_same_output(out, ref)
    check_submission_ids(kill_run, out)


# ---------------------------------------------------------------------------------------------
# the slow sweep: many seeded points, every stage
# ---------------------------------------------------------------------------------------------

TEACHER_POINTS = ["train.step", "train.save", "inference.batch", "crossval.fold_write"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_kill_sweep_teacher_fold_at_seeded_points(kill_run, teacher_reference, seed):
    """Any point of a fold's training (steps, saves, validation and OOF batches, the fold's
    folder half written): the rerun reaches the uninterrupted fold."""
    argv, out, hits, ref = teacher_reference
    shutil.rmtree(out, ignore_errors=True)
    kill = choose_kill(hits, seed=100 + seed, points=TEACHER_POINTS)
    kill_and_rerun(kill_run, argv, out, "teacher", kill)
    assert not (out / MANIFEST).exists()  # one fold of two: never a finished teacher
    check_teacher_fold(kill_run, out / "fold_0", ref)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_kill_sweep_teacher_all_folds_then_combined(kill_run, seed):
    """Both folds and the combined OOF file: killed anywhere (also with the combined
    ``oof.parquet`` written and its manifest not), the rerun finishes the teacher, skips the
    folds that were done, and its combined OOF holds every cv id once, as the uninterrupted
    run's does."""
    out = kill_run.root / "kill_teacher_all"
    argv = kill_run.stage("teacher", f"stages.teacher.out_dir={out}")
    ref_dir = kill_run.root / "ref_teacher_all"
    if not ref_dir.exists():
        shutil.rmtree(out, ignore_errors=True)
        hits = kill_run.runner.traced(argv)
        (kill_run.root / "teacher_all_trace.txt").write_text("\n".join(hits))
        snapshot(out, ref_dir)
    hits = (kill_run.root / "teacher_all_trace.txt").read_text().split()
    shutil.rmtree(out, ignore_errors=True)
    kill = choose_kill(hits, seed=200 + seed, points=[*TEACHER_POINTS, "crossval.combine"])
    kill_and_rerun(kill_run, argv, out, "teacher", kill)
    rd = load_run_data(kill_run.cfg())
    for fold in range(rd.n_folds):
        check_teacher_fold_at(kill_run, out / f"fold_{fold}", ref_dir / f"fold_{fold}", fold)
    oof, ref_oof = pd.read_parquet(out / "oof.parquet"), pd.read_parquet(ref_dir / "oof.parquet")
    assert sorted(oof["id"]) == sorted(rd.rows("cv")["id"]) and not oof["id"].duplicated().any()
    assert oof["id"].tolist() == ref_oof["id"].tolist()


def check_teacher_fold_at(run: KillRun, got: Path, ref: Path, fold: int) -> None:
    rd = load_run_data(run.cfg())
    _, valid = split_by_fold(rd.labelled, rd.folds, fold)
    oof, ref_oof = pd.read_parquet(got / "oof.parquet"), pd.read_parquet(ref / "oof.parquet")
    assert sorted(oof["id"]) == sorted(valid["id"]) and not oof["id"].duplicated().any()
    cols = [*LOGIT_COLS, *(f"swap_{c}" for c in LOGIT_COLS)]
    np.testing.assert_allclose(oof[cols].to_numpy(), ref_oof[cols].to_numpy(), atol=RESUME_ATOL)


@pytest.mark.slow
def test_kill_while_retraining_with_overwrite_unfinishes_the_teacher(kill_run):
    """``overwrite=true`` over a finished teacher, killed while fold 1 retrains: the teacher's
    combined manifest is gone (the next stage refuses it instead of reading new fold 0 beside
    old fold 1), and the rerun finishes it again."""
    out = Path(kill_run.cfg().stages.teacher.out_dir)  # the fixture's finished teacher
    require_stage_output(out, stage="teacher")
    argv = kill_run.stage("teacher", "stages.teacher.overwrite=true")
    kill_run.runner.killed(argv, "train.step:10")  # fold 0 has 8 steps: inside fold 1
    assert refuses(out, "teacher")
    kill_run.runner.ok(argv)
    require_stage_output(out, stage="teacher")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kill_sweep_logit_dump(kill_run, seed):
    argv = kill_run.stage("dump_logits")
    out = Path(kill_run.cfg().stages.dump_logits.out_dir)
    points = ["inference.batch", "dump_logits.write", "io.replace"]
    kill_stage_at_seed(kill_run, "dump_logits", argv, out, 300 + seed, points, over_existing=True)
    check_logit_ids(kill_run, out)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_kill_sweep_merge(kill_run, seed):
    argv = kill_run.stage("merge", f"stages.merge.out_dir={kill_run.root}/kill_merged")
    out = kill_run.root / "kill_merged"
    kill_stage_at_seed(
        kill_run,
        "merge",
        argv,
        out,
        400 + seed,
        ["merge.write", "io.replace"],
        over_existing=bool(seed),
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kill_sweep_quantize(kill_run, seed):
    """GPTQ killed with the model quantized in memory, during the drift batches, with the
    folder half written or during the swap."""
    out = kill_run.root / "kill_quantized"
    argv = kill_run.stage("quantize", f"stages.quantize.out_dir={out}")
    points = ["quantize.quantized", "quantize.save", "inference.batch", "io.replace"]
    kill_stage_at_seed(kill_run, "quantize", argv, out, 500 + seed, points, over_existing=True)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_kill_sweep_predict(kill_run, seed):
    out = kill_run.root / "kill_predictions"
    argv = kill_run.stage("predict", f"stages.predict.out_dir={out}")
    points = ["inference.batch", "predict.write", "io.replace"]
    kill_stage_at_seed(kill_run, "predict", argv, out, 600 + seed, points, over_existing=True)
    check_submission_ids(kill_run, out)


@pytest.mark.slow
def test_kill_with_a_real_interpreter_per_attempt(kill_run):
    """The same check through ``python -m arena_distill`` (no fork server): the environment
    variable alone arms the kill."""
    runner = Runner(kill_run.root / "exec_attempts", mode="exec")
    out = kill_run.root / "exec_predictions"
    argv = kill_run.stage("predict", f"stages.predict.out_dir={out}")
    runner.ok(argv)
    ref = snapshot(out, kill_run.root / "ref_exec_predictions")
    shutil.rmtree(out)
    assert runner.killed(argv, "predict.write:1").killed
    assert refuses(out, "predict")
    runner.ok(argv)
    assert_same_output(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_kill_sweep_pipeline_continues_where_it_stopped(tmp_path, seed):
    """``arena-distill pipeline`` killed at a seeded point of any step: the rerun skips the
    steps finished before the kill, runs the rest, and predicts what the uninterrupted pipeline
    predicted (within the resume tolerance: a resumed teacher feeds the merge)."""
    steps = "demo_data,data,tiny_models,teacher,merge,predict"
    argv = [
        "pipeline",
        "--only",
        steps,
        *overrides(tmp_path, "pipeline.teachers=[tiny_llama]", "pipeline.student=tiny_llama"),
    ]
    runner = Runner(tmp_path / "attempts")
    run_dir = Path(compose(overrides(tmp_path)).run_dir)
    hits = runner.traced(argv)
    ref = snapshot(run_dir / "predictions", tmp_path / "ref_predictions")
    shutil.rmtree(run_dir)
    shutil.rmtree(tmp_path / "demo")
    points = [*TEACHER_POINTS, "crossval.combine", "merge.write", "predict.write", "pipeline.step"]
    kill = choose_kill(hits, 700 + seed, points)
    runner.killed(argv, kill)
    state = (
        json.loads((run_dir / "pipeline.json").read_text())["steps"]
        if (run_dir / "pipeline.json").exists()
        else {}
    )
    attempt = runner.ok(argv)
    log = attempt.log.read_text().splitlines()
    # "[pipeline 3/7] teacher tiny_llama: running (elapsed ...)" -> the text after "] "
    lines = [ln.split("[pipeline ", 1)[1].split("] ", 1)[1] for ln in log if "[pipeline " in ln]
    skipped = {ln.split(":")[0] for ln in lines if ": up to date" in ln}
    ran = {ln.split(":")[0] for ln in lines if ln.endswith(": running") or ": running (" in ln}
    # recorded before the kill: skipped; the killed step and those after it: run, never skipped
    assert skipped == set(state), (kill, skipped, set(state))
    assert ran and not ran & skipped, (kill, ran)
    preds, ref_preds = (
        pd.read_parquet(run_dir / "predictions" / "predictions.parquet"),
        pd.read_parquet(ref / "predictions.parquet"),
    )
    assert preds["id"].tolist() == ref_preds["id"].tolist()
    cols = [*LOGIT_COLS, *(f"swap_{c}" for c in LOGIT_COLS)]
    np.testing.assert_allclose(preds[cols].to_numpy(), ref_preds[cols].to_numpy(), atol=1e-4)
