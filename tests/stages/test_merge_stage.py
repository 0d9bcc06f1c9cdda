"""Stage ``merge`` on the shared trained run: the 3 teacher folds of tiny Llama -> one model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from arena_distill.io import StageInputError, read_json
from arena_distill.models.factory import load_for_inference
from arena_distill.stages import merge
from tests.stages.conftest import small_cfg

BATCH = ["Which answer is better, A or B?", "Explain recursion briefly, please."]


def teacher_dir(trained_run) -> Path:
    return Path(trained_run.cfg.stages.teacher.out_dir)


def merge_cfg(trained_run, name: str, *extra: str, source: Path | None = None):
    return small_cfg(
        trained_run.root,
        "model=tiny_llama",
        f"stages.merge.source={source or teacher_dir(trained_run)}",
        f"stages.merge.out_dir={trained_run.root}/merge-{name}",
        *extra,
    )


def logits_of(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.float()


@pytest.fixture(scope="module")
def merged_runs(trained_run):
    """Both methods run once for the module: {method: (cfg, out_dir)}."""
    out = {}
    for method in ("ab_mean", "delta_mean"):
        cfg = merge_cfg(trained_run, method, f"stages.merge.method={method}")
        out[method] = (cfg, merge.run(cfg))
    return out


def test_merge_stage_outputs_reload(merged_runs):
    cfg, out = merged_runs["ab_mean"]
    assert out == Path(cfg.stages.merge.out_dir)
    for name in ("config.json", "model.safetensors", "merge.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 3 and model.config.pad_token_id == tok.pad_token_id
    logits = logits_of(model, tok)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    # the averaged adapter on the base gives the merged model's logits
    peft_model, _ = load_for_inference(cfg.model, out / "adapter")
    torch.testing.assert_close(logits_of(peft_model, tok), logits, atol=1e-5, rtol=0)

    manifest = read_json(out / "manifest.json")
    assert manifest["stage"] == "merge"
    assert manifest["outputs"]["folds"] == 3 and manifest["outputs"]["method"] == "ab_mean"
    info = json.loads((out / "merge.json").read_text())
    assert info["source_stage"] == "teacher" and info["folds"] == [0, 1, 2]
    assert info["weights"] == pytest.approx([1 / 3] * 3)
    assert len(info["modules"]) == 14  # 7 target modules x 2 layers
    assert 0 < info["ab_vs_exact_mean"] < 1


def test_delta_mean_stage_differs_from_ab_mean(merged_runs):
    _, ab = merged_runs["ab_mean"]
    _, dm = merged_runs["delta_mean"]
    assert not (dm / "adapter").exists()
    assert read_json(dm / "merge.json")["method"] == "delta_mean"
    tok = AutoTokenizer.from_pretrained(ab)
    la = logits_of(AutoModelForSequenceClassification.from_pretrained(ab).eval(), tok)
    ld = logits_of(AutoModelForSequenceClassification.from_pretrained(dm).eval(), tok)
    assert torch.isfinite(ld).all()
    assert (la - ld).abs().max() > 1e-6


def test_one_fold_weight_reproduces_that_fold(trained_run):
    cfg = merge_cfg(trained_run, "fold1", "stages.merge.weights=[0,1,0]")
    out = merge.run(cfg)
    tok = AutoTokenizer.from_pretrained(out)
    full = AutoModelForSequenceClassification.from_pretrained(out).eval()
    fold1, _ = load_for_inference(cfg.model, teacher_dir(trained_run) / "fold_1" / "adapter")
    torch.testing.assert_close(logits_of(full, tok), logits_of(fold1, tok), atol=1e-5, rtol=0)


def test_missing_source_is_refused(trained_run):
    cfg = merge_cfg(trained_run, "missing", source=trained_run.root / "no-such-students")
    with pytest.raises(StageInputError, match="no-such-students"):
        merge.run(cfg)
    assert not Path(cfg.stages.merge.out_dir).exists()


def test_incomplete_wrong_model_or_stale_source_is_refused(trained_run):
    root = trained_run.root
    missing_fold = root / "merge-src-missing-fold"
    shutil.copytree(teacher_dir(trained_run), missing_fold)
    shutil.rmtree(missing_fold / "fold_2" / "adapter")
    with pytest.raises(StageInputError, match="fold_2/adapter"):
        merge.run(merge_cfg(trained_run, "x1", source=missing_fold))

    with pytest.raises(StageInputError, match="tiny_llama"):
        merge.run(merge_cfg(trained_run, "x2", "model=tiny_gemma2"))

    stale = root / "merge-src-stale"
    shutil.copytree(teacher_dir(trained_run), stale)
    manifest = read_json(stale / "fold_0" / "manifest.json")
    manifest["inputs"][0]["sha256"] = "0" * 64  # as if the data changed after training
    (stale / "fold_0" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StageInputError, match="stale"):
        merge.run(merge_cfg(trained_run, "x3", source=stale))
