"""`make pipeline EXPERIMENT=cpu_real` end to end on a 200-row slice of real preference data.

The README's command for real data, run through the real Makefile: data (union of two files) ->
post-pretraining -> MiniLM teacher -> logit dump -> distilled MiniLM-L3 student (and the same
student without teacher terms) -> merge -> GPTQ -> holdout predictions -> baselines -> report.
Uses ../shared/data/preference/llmeval2.csv (+ pandalm.csv for pretraining) when present, else
demo rows in the same layout. The chain runs in one process (`arena-distill pipeline`): this
test took 197 s on 2 idle CPU cores (6m47s when every stage was its own process); marked slow.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from arena_distill.demo import generate_demo
from tests.conftest import REPO_ROOT, SHARED_PREFERENCE

pytestmark = pytest.mark.slow


def _slices(tmp_path: Path) -> tuple[list[Path], Path]:
    if (SHARED_PREFERENCE / "llmeval2.csv").is_file():
        rows = pd.read_csv(SHARED_PREFERENCE / "llmeval2.csv", dtype=object, keep_default_na=False)
        extra = pd.read_csv(SHARED_PREFERENCE / "pandalm.csv", dtype=object, keep_default_na=False)
    else:
        files = generate_demo(tmp_path / "demo", n_train=200, n_test=10, n_pretrain=100)
        rows = pd.read_csv(files["train"], dtype=object, keep_default_na=False)
        extra = pd.read_csv(files["pretrain"], dtype=object, keep_default_na=False)
    rows = rows.sample(n=200, random_state=0)
    parts = [tmp_path / "train_a.csv", tmp_path / "train_b.csv"]
    rows.iloc[:120].to_csv(parts[0], index=False)
    rows.iloc[120:].to_csv(parts[1], index=False)
    pretrain = tmp_path / "pretrain.csv"
    extra.sample(n=100, random_state=0).to_csv(pretrain, index=False)
    return parts, pretrain


def test_cpu_real_pipeline_on_a_200_row_slice(tmp_path):
    parts, pretrain = _slices(tmp_path)
    out = tmp_path / "run"
    venv = Path(sys.prefix)
    cmd = [
        "make",
        "-C",
        str(REPO_ROOT),
        "--no-print-directory",
        "-o",
        str(venv / ".installed"),  # the running environment is the one to use: no setup
        f"VENV={venv}",
        "pipeline",
        "EXPERIMENT=cpu_real",
        f"TRAIN={parts[0]},{parts[1]}",
        f"PRETRAIN={pretrain}",
        f"OUT={out}",
        "ABLATE=1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    folds = pd.read_csv(out / "data" / "folds.csv")
    n_holdout = int((folds["split"] == "holdout").sum())
    assert len(folds) == 200 and 15 <= n_holdout <= 25  # 10%, whole prompt groups
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    oof = metrics["oof_log_loss"]
    for stage in ("teacher/minilm", "student/minilm_l3", "student/minilm_l3_ce_only"):
        assert math.isfinite(oof[stage]) and oof[stage] < 3.0, stage
    for name in ("prior", "length_lr", "tfidf_lr"):
        assert f"baseline/{name}" in oof and f"baseline/{name}" in metrics["holdout_log_loss"]
    holdout = metrics["holdout_log_loss"]
    for stage in ("merged", "merged+tta", "quantized", "quantized+tta", "folds_mean+tta"):
        assert math.isfinite(holdout[stage]), stage
    # every holdout id predicted exactly once by the final model
    pred = pd.read_parquet(out / "holdout" / "quantized" / "predictions.parquet")
    assert sorted(pred["id"].astype(str)) == sorted(
        folds.loc[folds["split"] == "holdout", "id"].astype(str)
    )
    # the student is the 3-layer cut of the teacher, and the quantized model is GPTQ 8-bit
    merged_cfg = json.loads((out / "merged" / "config.json").read_text())
    assert merged_cfg["num_hidden_layers"] == 3
    quant_cfg = json.loads((out / "quantized" / "config.json").read_text())
    assert quant_cfg["quantization_config"]["bits"] == 8
    # post-pretraining ran for both models and initialised the teacher
    assert (out / "pretrain" / "minilm" / "adapter").is_dir()
    assert (out / "pretrain" / "minilm_l3" / "adapter").is_dir()
    # every stage's cost is in the report
    stages = {row["stage"] for row in metrics["cost"]}
    assert {"data", "teacher", "dump_logits", "distill", "merge", "quantize", "predict"} <= stages
