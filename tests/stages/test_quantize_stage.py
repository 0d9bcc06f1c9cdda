"""Stage ``quantize`` on the shared trained run: a merged teacher fold -> GPTQ 8-bit, bitsandbytes
LLM.int8, or the fp16 copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from arena_distill.io import StageInputError, read_json
from arena_distill.quantize_methods import MARKER, folder_method

from .conftest import small_cfg


@pytest.fixture(scope="module")
def merged_dir(trained_run) -> Path:
    """Teacher fold 0 of the trained run, LoRA merged into the weights: a full model folder."""
    from arena_distill.models.factory import load_for_inference

    cfg = trained_run.cfg
    out = trained_run.root / "quantize_test" / "merged"
    if not (out / "config.json").exists():
        adapter = Path(cfg.stages.teacher.out_dir) / "fold_0" / "adapter"
        model, tok = load_for_inference(cfg.model, adapter)
        model.merge_and_unload().save_pretrained(out)
        tok.save_pretrained(out)
    return out


def stage_cfg(trained_run, source: Path, out: Path, *extra: str):
    return small_cfg(
        trained_run.root,
        f"stages.quantize.source={source}",
        f"stages.quantize.out_dir={out}",
        "stages.quantize.n_calibration=12",
        *extra,
    )


def test_quantize_stage(trained_run, merged_dir):
    from transformers import AutoModelForSequenceClassification

    from arena_distill.stages import quantize

    out = trained_run.root / "quantize_test" / "quantized"
    cfg = stage_cfg(trained_run, merged_dir, out)
    assert quantize.run(cfg) == out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert (out / name).is_file(), name
    m = read_json(out / "metrics.json")
    for key in (
        "rows",
        "eval_split",
        "max_abs_logit_diff",
        "mean_abs_logit_diff",
        "relative_error",
        "log_loss_source",
        "log_loss_quantized",
        "log_loss_delta",
        "bits",
        "group_size",
        "group_size_effective",
        "n_calibration",
        "calibration_max_length",
        "seconds",
    ):
        assert key in m, key
    print("stage metrics:", m)
    assert m["method"] == "gptq"
    assert m["bits"] == 8 and m["group_size"] == 128
    assert m["n_calibration"] == 12
    # the tiny Llama has 2048 positions: the recipe's 2100 is clamped
    assert m["calibration_max_length"] == 2048
    assert m["calibration_max_length_requested"] == 2100
    assert m["eval_split"] in ("holdout", "fold_0_valid") and m["rows"] > 0
    assert m["head_intact"] and m["head"] == "score"
    assert m["relative_error"] < 0.1 and m["finite"]
    assert abs(m["log_loss_delta"]) < 0.05
    assert m["group_size_effective"] == {"64": 12, "128": 2}

    manifest = read_json(out / "manifest.json")
    assert manifest["stage"] == "quantize"
    assert manifest["source"] == str(merged_dir)
    assert any(i["path"].endswith("train.parquet") for i in manifest["inputs"])
    assert manifest["outputs"]["method"] == "gptq"
    assert manifest["config"]["stage"]["method"] == "gptq"
    assert folder_method(out) == "gptq"

    src = AutoModelForSequenceClassification.from_pretrained(merged_dir)
    back = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(back.score) is nn.Linear
    assert torch.equal(back.score.weight, src.score.weight)
    assert any(hasattr(mod, "qweight") for mod in back.modules())


@pytest.mark.parametrize("method", ["bnb_int8", "none"])
def test_quantize_stage_other_methods(trained_run, merged_dir, method):
    """The same outputs and metrics.json keys as GPTQ; no calibration, GPTQ's own keys None."""
    from transformers import AutoModelForSequenceClassification

    from arena_distill.stages import quantize

    out = trained_run.root / "quantize_test" / method
    cfg = stage_cfg(trained_run, merged_dir, out, f"stages.quantize.method={method}")
    assert quantize.run(cfg) == out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert (out / name).is_file(), name
    m = read_json(out / "metrics.json")
    gptq = read_json(trained_run.root / "quantize_test" / "quantized" / "metrics.json")
    if "method" in gptq:  # the GPTQ test ran first in this session: the same keys
        assert set(m) == set(gptq)
    print(f"{method} stage metrics:", m)
    assert m["method"] == method and m["bits"] == (8 if method == "bnb_int8" else 16)
    assert m["n_calibration"] is None and m["group_size"] is None
    assert m["group_size_effective"] is None and m["block_name_to_quantize"] is None
    assert m["head_intact"] and m["head"] == "score" and m["finite"]
    assert m["eval_split"] in ("holdout", "fold_0_valid") and m["rows"] > 0
    assert m["relative_error"] < (0.1 if method == "bnb_int8" else 0.01)
    assert abs(m["log_loss_delta"]) < 0.05
    assert m["quantized_layers"] == (14 if method == "bnb_int8" else 0)
    manifest = read_json(out / "manifest.json")
    assert manifest["outputs"]["method"] == method
    assert manifest["outputs"]["calibration_rows"] == 0
    config = read_json(out / "config.json")
    assert config[MARKER] == {"quantize_method": method}
    assert folder_method(out) == method

    src = AutoModelForSequenceClassification.from_pretrained(merged_dir)
    back = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(back.score) is nn.Linear
    if method == "bnb_int8":
        assert config["quantization_config"]["quant_method"] == "bitsandbytes"
        assert torch.equal(back.score.weight, src.score.weight)
        assert back.model.layers[0].mlp.down_proj.weight.dtype == torch.int8
    else:
        assert "quantization_config" not in config and config["dtype"] == "float16"
        assert torch.equal(back.score.weight, src.score.weight.half())
        assert {p.dtype for p in back.parameters()} == {torch.float16}


def test_quantize_stage_refuses_missing_source(trained_run, tmp_path):
    from arena_distill.stages import quantize

    cfg = stage_cfg(trained_run, tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(StageInputError, match="merge"):
        quantize.run(cfg)
    adapter = Path(trained_run.cfg.stages.teacher.out_dir) / "fold_0" / "adapter"
    cfg = stage_cfg(trained_run, adapter, tmp_path / "out")
    with pytest.raises(StageInputError, match="no config.json|no full weights"):
        quantize.run(cfg)
    assert not (tmp_path / "out").exists()
