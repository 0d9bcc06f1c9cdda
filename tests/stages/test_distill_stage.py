"""Integration: the distillation stage on the shared trained run (tiny Llama teacher)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill.io import StageInputError
from arena_distill.layout import LOGIT_COLS, load_run_data
from arena_distill.stages import distill, dump_logits
from tests.devices import TRAIN_ATOL
from tests.stages.conftest import small_cfg


@pytest.fixture(scope="module")
def logits_root(trained_run) -> Path:
    """The tiny Llama teacher's logits, both orientations, in a folder of this module's own."""
    root = trained_run.root / "distill-logits"
    dump_logits.run(small_cfg(trained_run.root, f"stages.dump_logits.out_dir={root}/tiny_llama"))
    return root


def distill_cfg(trained_run, logits_root, name: str, *extra: str):
    return small_cfg(
        trained_run.root,
        "pipeline.teachers=[tiny_llama]",
        f"stages.distill.logits_dir={logits_root}",
        f"stages.distill.out_dir={trained_run.root}/{name}",
        *extra,
    )


def test_student_distils_every_fold(trained_run, logits_root):
    cfg = distill_cfg(trained_run, logits_root, "students")
    out = distill.run(cfg)
    oof = pd.read_parquet(out / "oof.parquet")
    folds = load_run_data(cfg).folds
    assert sorted(oof["id"]) == sorted(folds.loc[folds["split"] == "cv", "id"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["fold_log_loss"]) == 3 and np.isfinite(metrics["fold_log_loss"]).all()
    assert json.loads((out / "manifest.json").read_text())["stage"] == "distill"
    # the training loss logged is the distillation loss: it includes the teacher terms
    history = json.loads((out / "fold_0" / "metrics.json").read_text())["history"]
    assert any("loss" in h for h in history)


def test_teacher_logits_join_by_orientation(trained_run, logits_root):
    lookup = distill.load_teacher_logits(logits_root, "tiny_llama")
    table = pd.read_parquet(logits_root / "tiny_llama" / "logits.parquet")
    row = table[(table["fold"] == 1) & table["swapped"]].iloc[0]
    fields = distill.teacher_fields({"tiny_llama": lookup})(1)
    np.testing.assert_allclose(
        fields(row["id"], True)["teacher_logits"], [row[list(LOGIT_COLS)].tolist()], rtol=1e-6
    )
    with pytest.raises(StageInputError, match="no logits for training id 'nope' of fold 1"):
        fields("nope", False)


def test_only_original_orientation_is_mirrored(trained_run, logits_root):
    root = trained_run.root / "distill-logits-original"
    cfg = small_cfg(
        trained_run.root,
        f"stages.dump_logits.out_dir={root}/tiny_llama",
        "stages.dump_logits.orientations=[original]",
    )
    dump_logits.run(cfg)
    lookup = distill.load_teacher_logits(root, "tiny_llama")
    key = next(k for k in lookup if not k[2])
    np.testing.assert_array_equal(lookup[(key[0], key[1], True)], lookup[key][[1, 0, 2]])


def test_without_teacher_terms_the_student_is_the_teacher_recipe(trained_run, logits_root):
    """kl = cos = 0 leaves plain cross-entropy: with the teacher stage's settings, seed and
    init, fold 0 must come out exactly as the teacher's fold 0."""
    cfg = distill_cfg(
        trained_run,
        logits_root,
        "students-ce",
        "stages.distill.weights.kl=0",
        "stages.distill.weights.cos=0",
        "stages.distill.folds=0",
    )
    out = distill.run(cfg)
    assert not (out / "oof.parquet").exists()  # one fold of three: not combined yet
    mine = pd.read_parquet(out / "fold_0" / "oof.parquet")
    teacher = pd.read_parquet(
        Path(trained_run.cfg.stages.teacher.out_dir) / "fold_0" / "oof.parquet"
    )
    np.testing.assert_allclose(mine[list(LOGIT_COLS)], teacher[list(LOGIT_COLS)], atol=TRAIN_ATOL)


def test_missing_teacher_dump_is_refused(trained_run, tmp_path):
    cfg = small_cfg(
        trained_run.root, "pipeline.teachers=[tiny_qwen2]", f"stages.distill.logits_dir={tmp_path}"
    )
    with pytest.raises(StageInputError, match="dump_logits"):
        distill.run(cfg)
