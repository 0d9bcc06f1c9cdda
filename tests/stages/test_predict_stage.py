"""Stage ``predict`` on the shared trained run: the tiny Llama base + the teacher's fold-0 adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from arena_distill.data.swap import mirror_probs
from arena_distill.data.tableio import load_table
from arena_distill.encode import prompt_config
from arena_distill.layout import LOGIT_COLS, PROB_COLS, SWAP_LOGIT_COLS, TTA_PROB_COLS
from arena_distill.metrics import probs_from_logits
from arena_distill.models.factory import load_for_inference
from arena_distill.stages import predict
from arena_distill.submission import read_submission, validate_submission
from arena_distill.tokens import encoding_map, tokenize_both_orientations
from tests.devices import PREDICT_ATOL, auto_devices
from tests.stages.conftest import small_cfg


def predict_cfg(root: Path, name: str, *extra: str):
    base = small_cfg(root)
    model_dir = Path(base.stages.tiny_models.out_dir) / "tiny_llama"
    adapter = Path(base.stages.teacher.out_dir) / "fold_0" / "adapter"
    return small_cfg(
        root,
        f"stages.predict.model_dir={model_dir}",
        f"stages.predict.adapter_dir={adapter}",
        f"stages.predict.out_dir={root}/predict/{name}",
        f"stages.tokenize.cache_dir={root}/predict/cache",
        "stages.predict.max_length=null",
        "stages.predict.progress=false",
        "stages.predict.batch_size=4",
        *extra,
    )


def outputs(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return (
        read_submission(out / "submission.csv"),
        pd.read_parquet(out / "predictions.parquet"),
        json.loads((out / "metrics.json").read_text()),
    )


@pytest.fixture(scope="module")
def tta_run(trained_run):
    cfg = predict_cfg(trained_run.root, "tta", "stages.predict.postprocess.enabled=true")
    return cfg, predict.run(cfg)


def test_submission_has_every_test_id_once_with_valid_probabilities(tta_run):
    cfg, out = tta_run
    test = load_table(Path(cfg.stages.data.out_dir) / "test.parquet")
    sub, preds, _ = outputs(out)
    assert sorted(sub["id"]) == sorted(test["id"]) and sub["id"].is_unique
    validate_submission(sub, test["id"].tolist(), clip_eps=cfg.stages.predict.clip_eps)
    assert (out / "manifest.json").is_file()
    assert preds["id"].tolist() == test["id"].tolist()


def test_predictions_equal_a_direct_forward_of_the_model(tta_run):
    cfg, out = tta_run
    _, preds, metrics = outputs(out)
    model_cfg = {**cfg.model, "name_or_path": cfg.stages.predict.model_dir}
    model, tok = load_for_inference(model_cfg, cfg.stages.predict.adapter_dir)
    test = load_table(Path(cfg.stages.data.out_dir) / "test.parquet")
    enc = encoding_map(
        tokenize_both_orientations(
            test, tok, prompt_config(cfg), cache_dir=out.parent / "direct-cache"
        )
    )
    assert metrics["max_length"] == cfg.prompt.max_length
    with torch.no_grad():
        direct = {
            s: np.concatenate(
                [model(input_ids=torch.tensor([enc[(i, s)]])).logits.numpy() for i in test["id"]]
            )
            for s in (False, True)
        }
    # the stage ran on the auto device (float16 on CUDA); the direct forward in float32 on CPU
    atol = PREDICT_ATOL
    np.testing.assert_allclose(preds[list(LOGIT_COLS)].to_numpy(), direct[False], atol=atol)
    np.testing.assert_allclose(
        preds[list(SWAP_LOGIT_COLS)].to_numpy(), mirror_probs(direct[True]), atol=atol
    )
    tta = (probs_from_logits(direct[False]) + mirror_probs(probs_from_logits(direct[True]))) / 2
    np.testing.assert_allclose(preds[list(TTA_PROB_COLS)].to_numpy(), tta, atol=atol)
    # throughput counts both orientations of every row, and their non-pad tokens
    tp = metrics["throughput"]
    assert tp["rows"] == 2 * len(test)
    assert tp["tokens"] == sum(len(enc[(i, s)]) for i in test["id"] for s in (False, True))


def test_metrics_score_the_labelled_test_rows(tta_run):
    cfg, out = tta_run
    sub, preds, m = outputs(out)
    assert m["rows"] == len(sub) and m["tta"] is True and m["devices"] == auto_devices()
    assert m["tokens_per_s"] > 0 and m["rows_per_s"] > 0
    tp = m["throughput"]
    assert tp["rows"] == 2 * len(sub) and tp["tokens"] == m["tokens"]
    assert tp["seconds"] == m["inference_seconds"] > 0
    assert tp["rows_per_s"] == pytest.approx(tp["rows"] / tp["seconds"], rel=1e-3)
    assert tp["tokens_per_s"] == pytest.approx(tp["tokens"] / tp["seconds"], rel=1e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["throughput"] == tp
    assert manifest["timings"]["peak_rss_mb"] > 0
    assert m["guard"]["action"] == "none"  # 9 hours are plenty
    s = m["scores"]
    for key in ("log_loss", "log_loss_tta", "accuracy", "accuracy_tta", "log_loss_postprocessed"):
        assert np.isfinite(s[key])
    counts = m["postprocess"]["rows_changed"]
    assert set(counts) == {"identical", "empty_a", "empty_b"}
    assert (preds["postprocess_rule"] != "").sum() == sum(counts.values())
    # the submission is the post-processed TTA probabilities, clipped
    untouched = preds["postprocess_rule"] == ""
    np.testing.assert_allclose(
        sub.loc[untouched.to_numpy(), sub.columns[1:]].to_numpy(),
        preds.loc[untouched, list(TTA_PROB_COLS)].to_numpy(),
        atol=1e-5,
    )


def test_a_tiny_time_budget_falls_back_and_says_so(trained_run, tta_run):
    cfg = predict_cfg(
        trained_run.root,
        "guard",
        "stages.predict.time_budget_hours=1e-9",
        "stages.predict.fallback_max_length=64",
    )
    sub, preds, m = outputs(predict.run(cfg))
    g = m["guard"]
    assert g["requested"] == {"max_length": 128, "tta": True}
    assert g["action"] == "over_budget" and g["plan"] == {"max_length": 64, "tta": False}
    assert [(c["max_length"], c["tta"]) for c in g["candidates"]] == [
        (128, True),
        (64, True),
        (64, False),
    ]
    assert g["measured"]["padded_tokens_per_s"] > 0
    # the model folder's config.json gives the architecture: the guard counts FLOPs
    assert g["unit"] == "flops" and g["work_per_s"] == g["measured"]["flops_per_s"] > 0
    assert all(c["flops"] > 0 for c in g["candidates"])
    assert (m["max_length"], m["tta"]) == (64, False)
    assert not set(SWAP_LOGIT_COLS) & set(preds.columns)
    assert len(sub) == len(preds) and sub["id"].is_unique
    assert max(s["padded"] / s["batches"] for s in m["shards"]) <= 4 * 64


def test_no_tta_predicts_the_original_orientation_only(trained_run, tta_run):
    _, out_tta = tta_run
    cfg = predict_cfg(
        trained_run.root,
        "no_tta",
        "stages.predict.tta=false",
        "stages.predict.time_budget_hours=null",
    )
    sub, preds, m = outputs(predict.run(cfg))
    _, preds_tta, _ = outputs(out_tta)
    assert m["tta"] is False and m["guard"] is None
    assert m["throughput"]["rows"] == len(sub)  # one orientation
    assert not set(TTA_PROB_COLS) & set(preds.columns)
    np.testing.assert_allclose(
        preds[list(LOGIT_COLS)].to_numpy(), preds_tta[list(LOGIT_COLS)].to_numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        sub.iloc[:, 1:].to_numpy(), preds[list(PROB_COLS)].to_numpy(), atol=1e-5
    )
    assert "log_loss_tta" not in m["scores"]


def test_holdout_split_is_scored(trained_run):
    cfg = predict_cfg(trained_run.root, "holdout", "stages.predict.split=holdout")
    sub, preds, m = outputs(predict.run(cfg))
    folds = pd.read_csv(Path(cfg.stages.data.out_dir) / "folds.csv", dtype={"id": str})
    holdout = set(folds.loc[folds["split"] == "holdout", "id"])
    assert set(sub["id"]) == holdout and m["rows"] == len(holdout) > 0
    assert preds["label"].notna().all() and np.isfinite(m["scores"]["log_loss_tta"])


def test_two_processes_shard_the_orientations_like_two_gpus(trained_run, tta_run):
    _, out_tta = tta_run
    cfg = predict_cfg(
        trained_run.root,
        "two_procs",
        "stages.predict.devices=[cpu,cpu]",
        "stages.predict.time_budget_hours=null",
    )
    _, preds, m = outputs(predict.run(cfg))
    _, preds_tta, _ = outputs(out_tta)
    assert [s["orientations"] for s in m["shards"]] == [["original"], ["swapped"]]
    cols = [*LOGIT_COLS, *SWAP_LOGIT_COLS, *TTA_PROB_COLS]
    # two CPU processes against the auto device's run (float16 on CUDA)
    np.testing.assert_allclose(
        preds[cols].to_numpy(), preds_tta[cols].to_numpy(), atol=PREDICT_ATOL
    )


def test_a_missing_model_folder_is_named(trained_run, tmp_path):
    from arena_distill.io import StageInputError

    cfg = predict_cfg(trained_run.root, "missing", f"stages.predict.model_dir={tmp_path}/nope")
    with pytest.raises(StageInputError, match="not a model folder"):
        predict.run(cfg)


def test_one_copy_spread_over_the_devices_predicts_the_same(trained_run):
    """``device_map=auto`` (a model too big for one GPU): one copy over every device, one
    process; on a CPU-only machine that copy is on the CPU and must give the same numbers."""
    root = trained_run.root
    base = small_cfg(root)
    model_dir = Path(base.stages.tiny_models.out_dir) / "tiny_llama"

    def run(name: str, *extra: str):
        cfg = small_cfg(
            root,
            f"stages.predict.model_dir={model_dir}",
            f"stages.predict.out_dir={root}/predict/{name}",
            "stages.predict.max_length=null",
            "stages.predict.progress=false",
            "stages.predict.time_budget_hours=null",
            *extra,
        )
        return outputs(predict.run(cfg))

    _, plain, _ = run("one-device")
    _, split, m = run("device-map", "stages.predict.device_map=auto")
    assert m["devices"] == ["cuda:0" if torch.cuda.is_available() else "cpu"]
    cols = ["tta_p_a", "tta_p_b", "tta_p_tie"]
    atol = 2e-3 if torch.cuda.is_available() else 1e-5  # fp16 on CUDA (dtype auto)
    np.testing.assert_allclose(split[cols].to_numpy(), plain[cols].to_numpy(), atol=atol)
