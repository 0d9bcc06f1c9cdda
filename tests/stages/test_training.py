"""Integration: post-pretrain, per-fold teachers, logit dump, resume, QLoRA and two processes,
on a small demo set with tiny models (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from arena_distill.crossval import oof_logits, pretrain_adapter, train_fold
from arena_distill.data.folds import read_folds, split_by_fold
from arena_distill.encode import labelled_encodings
from arena_distill.layout import LOGIT_COLS, load_run_data
from arena_distill.metrics import log_loss_from_logits
from arena_distill.models.factory import build_model, load_for_inference
from arena_distill.settings import TrainSettings, stage
from arena_distill.stages import dump_logits
from arena_distill.train import (
    KillAfterSave,
    SimulatedKill,
    examples_for,
    fit,
    make_examples,
)
from tests.devices import TRAIN_ATOL, changed, snapshot_params
from tests.stages.conftest import small_cfg, small_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(trained_run):
    """The shared trained run (pretrain -> teacher, 3 folds) plus the logit dump."""
    dump_logits.run(trained_run.cfg)
    return trained_run.root, trained_run.cfg


def test_pretrain_writes_an_adapter_with_its_history(run):
    _, cfg = run
    out = Path(cfg.stages.pretrain.out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert metrics["rows"] == 48 and metrics["examples"] == 96  # random swap doubles the rows
    assert metrics["steps"] == 12  # 96 examples / 16 per step, 2 epochs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain"
    tp = metrics["throughput"]
    assert tp == manifest["outputs"]["throughput"]
    assert tp["train_examples"] == 2 * 96  # every epoch's examples
    assert tp["train_seconds"] == manifest["timings"]["phases"]["train"] > 0
    assert tp["train_examples_per_s"] == pytest.approx(192 / tp["train_seconds"], rel=1e-3)
    assert tp["train_tokens_per_s"] == pytest.approx(
        tp["train_tokens"] / tp["train_seconds"], rel=1e-3
    )
    assert manifest["timings"]["peak_rss_mb"] > 0


def test_pretrain_keeps_a_fresh_output_and_retrains_a_stale_one(run, tmp_path):
    """Rerun on the same inputs, the adapter is kept (no training); with a setting changed it
    is retrained."""
    from arena_distill.stages import pretrain

    root, cfg = run
    out = tmp_path / "pretrain"
    shutil.copytree(cfg.stages.pretrain.out_dir, out)
    manifest = (out / "manifest.json").read_bytes()
    pretrain.run(small_cfg(root, f"stages.pretrain.out_dir={out}"))
    assert (out / "manifest.json").read_bytes() == manifest
    pretrain.run(small_cfg(root, f"stages.pretrain.out_dir={out}", "stages.pretrain.max_steps=1"))
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1
    assert not (tmp_path / ".pretrain.work").exists()


def test_teacher_oof_covers_every_validation_id_once(run):
    _, cfg = run
    out = Path(cfg.stages.teacher.out_dir)
    folds = read_folds(Path(cfg.stages.data.out_dir) / "folds.csv")
    cv = folds[folds["split"] == "cv"]
    oof = pd.read_parquet(out / "oof.parquet")
    assert not oof["id"].duplicated().any()
    assert set(oof["id"]) == set(cv["id"])
    assert (
        oof.set_index("id")["fold"] == cv.set_index("id")["fold"].loc[oof["id"]].to_numpy()
    ).all()
    for k in range(3):
        fold_oof = pd.read_parquet(out / f"fold_{k}" / "oof.parquet")
        assert set(fold_oof["id"]) == set(cv.loc[cv["fold"] == k, "id"])
    np.testing.assert_allclose(oof[["p_a", "p_b", "p_tie"]].sum(1), 1.0, rtol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["fold_log_loss"]) == 3 and metrics["oof"]["rows"] == len(cv)
    fold0 = json.loads((out / "fold_0" / "metrics.json").read_text())
    assert 0.0 <= fold0["padding_share"] < 0.5
    assert fold0["best_checkpoint"] and fold0["history"]
    # the fold started from the post-pretrain adapter
    manifest = json.loads((out / "fold_0" / "manifest.json").read_text())
    assert any("pretrain" in i["path"] for i in manifest["inputs"])


def test_teacher_fold_throughput_counts_what_was_computed(run):
    _, cfg = run
    out = Path(cfg.stages.teacher.out_dir)
    rd = load_run_data(cfg)
    _, tok = load_for_inference(cfg.model, out / "fold_0" / "adapter")
    enc = labelled_encodings(cfg, rd, tok)
    train_rows, valid_rows = split_by_fold(rd.labelled, rd.folds, 0)
    tr_ids, tr_y = train_rows["id"].tolist(), train_rows["label"].astype(int).tolist()
    va_ids = valid_rows["id"].tolist()
    train_tokens = sum(len(e["input_ids"]) for e in make_examples(tr_ids, tr_y, enc, swap="random"))
    metrics = json.loads((out / "fold_0" / "metrics.json").read_text())
    manifest = json.loads((out / "fold_0" / "manifest.json").read_text())
    tp = metrics["throughput"]
    assert tp == manifest["outputs"]["throughput"]
    # 2 epochs of every training row in both orientations (random swap)
    assert tp["train_examples"] == 2 * 2 * len(tr_ids)
    assert tp["train_tokens"] == 2 * train_tokens
    assert tp["train_seconds"] == manifest["timings"]["phases"]["train"] > 0
    # the OOF prediction: every validation row in both orientations
    assert tp["rows"] == 2 * len(va_ids)
    assert tp["tokens"] == sum(len(enc[(i, s)]) for i in va_ids for s in (False, True))
    assert tp["rows_per_s"] > 0 and tp["train_tokens_per_s"] > 0
    assert manifest["timings"]["peak_rss_mb"] > 0


def test_adapter_reloads_and_reproduces_its_oof_predictions(run):
    _, cfg = run
    out = Path(cfg.stages.teacher.out_dir)
    model, tok = load_for_inference(cfg.model, out / "fold_1" / "adapter")
    rd = load_run_data(cfg)
    enc = labelled_encodings(cfg, rd, tok)
    oof = pd.read_parquet(out / "fold_1" / "oof.parquet")
    examples = examples_for(oof["id"].tolist(), oof["label"].tolist(), enc)
    logits = oof_logits(model, examples, tok.pad_token_id, batch_size=7)
    np.testing.assert_allclose(logits, oof[list(LOGIT_COLS)].to_numpy(), atol=TRAIN_ATOL)


def test_dump_logits_in_sample_both_orientations(run):
    _, cfg = run
    table = pd.read_parquet(Path(cfg.stages.dump_logits.out_dir) / "logits.parquet")
    rd = load_run_data(cfg)
    for k in range(3):
        train_rows, _ = split_by_fold(rd.labelled, rd.folds, k)
        part = table[table["fold"] == k]
        assert set(part["split"]) == {"train"}
        for swapped in (False, True):
            ids = part.loc[part["swapped"] == swapped, "id"]
            assert sorted(ids) == sorted(train_rows["id"])
    assert np.isfinite(table[list(LOGIT_COLS)].to_numpy()).all()
    manifest = json.loads((Path(cfg.stages.dump_logits.out_dir) / "manifest.json").read_text())
    tp = manifest["outputs"]["throughput"]
    assert tp["rows"] == len(table) and tp["tokens"] > 0 and tp["rows_per_s"] > 0
    # swapped inputs are not mirrored copies: the teacher really saw B first
    one = table[table["fold"] == 0].pivot_table(index="id", columns="swapped", values="logit_a")
    assert not np.allclose(one[False], one[True])


def test_training_lowers_the_loss_on_demo_data(run):
    root, cfg = run
    rd = load_run_data(cfg)
    model, tok = build_model(cfg.model, train=True)
    enc = labelled_encodings(cfg, rd, tok)
    rows = rd.train
    ids, labels = rows["id"].tolist(), rows["label"].astype(int).tolist()
    examples = examples_for(ids, labels, enc)

    def loss() -> float:
        logits = oof_logits(model, examples, tok.pad_token_id, batch_size=32)
        return log_loss_from_logits(logits, labels)

    before = loss()
    settings = TrainSettings(
        epochs=4,
        lr=3e-3,
        global_batch_size=16,
        per_device_batch_size=16,
        warmup_steps=2,
        swap="random",
        logging_steps=5,
    )
    result = fit(
        model, tok, make_examples(ids, labels, enc, swap="random"), None, settings, root / "learn"
    )
    model.eval()
    after = loss()
    assert after < before - 0.05, (before, after)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.parametrize(
    ("eval_steps", "kill_at"),
    [(None, 12), (4, 4)],
    ids=["epoch-boundary", "mid-epoch"],
)
def test_resume_after_a_kill_reaches_the_same_result(run, eval_steps, kill_at):
    """A run killed right after a checkpoint and restarted with the same command ends exactly
    where the uninterrupted run ends (24 steps: 2 epochs of 12)."""
    root, cfg = run
    extra = [] if eval_steps is None else [f"stages.teacher.eval_steps={eval_steps}"]
    rd = load_run_data(cfg)
    _, tok = build_model(cfg.model, train=False)
    enc = labelled_encodings(cfg, rd, tok)

    def train(name: str, callbacks=()):
        out = root / f"resume-{name}-{kill_at}"
        cfg2 = small_cfg(root, f"stages.teacher.out_dir={out}", *extra)
        metrics = train_fold(
            cfg2,
            rd,
            0,
            enc,
            stage="teacher",
            settings=stage(cfg2, "teacher"),
            init_adapter=pretrain_adapter(cfg2),
            callbacks=callbacks,
        )
        return out, metrics

    ref_dir, reference = train("reference")
    with pytest.raises(SimulatedKill):
        train("killed", [KillAfterSave(kill_at)])
    out = root / f"resume-killed-{kill_at}"
    assert not (out / "fold_0").exists()  # nothing half-written where finished folds go
    assert [p.name for p in (out / ".work" / "fold_0").glob("checkpoint-*")][
        -1
    ] == f"checkpoint-{kill_at}"
    _, metrics = train("killed")  # the same command again
    assert metrics["resumed_from"].endswith(f"checkpoint-{kill_at}")
    assert metrics["steps"] == reference["steps"] == 24
    assert metrics["log_loss"] == pytest.approx(reference["log_loss"], abs=TRAIN_ATOL)
    a = pd.read_parquet(out / "fold_0" / "oof.parquet")[list(LOGIT_COLS)].to_numpy()
    b = pd.read_parquet(ref_dir / "fold_0" / "oof.parquet")[list(LOGIT_COLS)].to_numpy()
    np.testing.assert_allclose(a, b, atol=TRAIN_ATOL)


def test_qlora_trains_through_the_trainer_on_cpu(run):
    """nf4 + double quant through the same fit(); no evaluation between steps (STACK.md: an
    eval forward repacks 4-bit weights on CPU and corrupts later LoRA gradients)."""
    root, cfg = run
    mcfg = OmegaConf.merge(
        cfg.model,
        {"quantization": {"type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}},
    )
    model, tok = build_model(mcfg, train=True)
    lora_before = snapshot_params(model, "lora_B")  # on the CPU; the Trainer may move the model
    rd = load_run_data(cfg)
    enc = labelled_encodings(cfg, rd, tok)
    rows = rd.train.iloc[:24]
    examples = make_examples(
        rows["id"].tolist(), rows["label"].astype(int).tolist(), enc, swap="none"
    )
    settings = TrainSettings(
        max_steps=3,
        lr=1e-3,
        global_batch_size=8,
        per_device_batch_size=8,
        warmup_steps=0,
        logging_steps=1,
    )
    result = fit(model, tok, examples, None, settings, root / "qlora")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 3 and np.isfinite(losses).all()
    moved = changed(lora_before, model)
    assert moved and len(moved) == len(lora_before)


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="two processes need two GPUs on a CUDA machine (one process per GPU)",
)
def test_two_processes_with_torchrun(run):
    root, cfg = run
    out = root / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "arena_distill",
        "teacher",
        *small_overrides(root),
        f"stages.teacher.out_dir={out}",
        "stages.teacher.folds=1",
        "stages.teacher.init_from_pretrain=false",
        "stages.teacher.epochs=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rd = load_run_data(cfg)
    _, valid = split_by_fold(rd.labelled, rd.folds, 1)
    oof = pd.read_parquet(out / "fold_1" / "oof.parquet")
    assert sorted(oof["id"]) == sorted(valid["id"]) and not oof["id"].duplicated().any()
    metrics = json.loads((out / "fold_1" / "metrics.json").read_text())
    # 2 processes x 16 rows per step: half the single-process steps
    assert metrics["steps"] == int(np.ceil(metrics["train_examples"] / 32))
    assert "world_size" not in metrics or metrics["world_size"] == 2


def test_tensorboard_tracking_writes_event_files_into_the_run_folder(run):
    """``logging.report_to=tensorboard``: the Trainer's logs land in
    ``logging.tensorboard_dir/<stage>/<model>/<fold>``; a missing integration is refused."""
    from arena_distill.train import tracking_callbacks

    root, cfg = run
    cfg2 = small_cfg(root, "logging.report_to=tensorboard", f"logging.tensorboard_dir={root}/tb")
    tracking = tracking_callbacks(cfg2, "teacher", "fold_0")
    assert tracking.report_to == [] and len(tracking.callbacks) == 1
    assert tracking.tensorboard_dir == root / "tb" / "teacher" / "tiny_llama" / "fold_0"
    rd = load_run_data(cfg)
    model, tok = build_model(cfg.model, train=True)
    enc = labelled_encodings(cfg, rd, tok)
    rows = rd.train.iloc[:32]
    examples = make_examples(
        rows["id"].tolist(), rows["label"].astype(int).tolist(), enc, swap="none"
    )
    settings = TrainSettings(
        max_steps=2, global_batch_size=16, per_device_batch_size=16, logging_steps=1
    )
    fit(model, tok, examples, None, settings, root / "tb-work", callbacks=tracking.callbacks)
    events = list(tracking.tensorboard_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"train/loss" in events[0].read_bytes()
    with pytest.raises(RuntimeError, match="needs the wandb package"):
        tracking_callbacks(small_cfg(root, "logging.report_to=[wandb]"), "teacher")


def test_a_launch_with_more_processes_than_gpus_is_refused_clearly(monkeypatch):
    from arena_distill import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.train_device() == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(distributed.LaunchError, match="LOCAL_RANK 1 .of 2.* only 1 visible GPU"):
        distributed.train_device()
