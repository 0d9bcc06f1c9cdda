"""Pseudo-labels without a model: the ensemble's soft labels, the selection, the loss of a
pseudo-labelled row, and where the pipeline puts the stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from arena_distill import settings
from arena_distill.config import compose
from arena_distill.losses import IGNORE_LABEL, DistillLoss
from arena_distill.pipeline import model_paths_of, plan, step_key
from arena_distill.pseudo import ensemble_scores, fold_mean_logits, select_rows
from arena_distill.settings import ConfigError
from arena_distill.train import make_examples


def test_ensemble_mirrors_the_swapped_orientation_and_counts_agreement():
    log = np.log
    ids = ["x", "y"]
    predictions = {
        # teacher t, folds 0 and 1, both orientations; logits = log of probabilities
        ("t", 0, False): log([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]),
        ("t", 0, True): log([[0.2, 0.7, 0.1], [0.6, 0.1, 0.3]]),  # swapped: A and B exchanged
        ("t", 1, False): log([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]]),
        ("t", 1, True): log([[0.3, 0.5, 0.2], [0.3, 0.4, 0.3]]),
    }
    table = ensemble_scores(ids, predictions)
    # row x: every prediction says A once mirrored: mean (0.6, 0.25, 0.15)
    np.testing.assert_allclose(table.loc[0, ["p_a", "p_b", "p_tie"]], [0.6, 0.25, 0.15])
    assert table.loc[0, "confidence"] == pytest.approx(0.6)
    assert table.loc[0, "agreement"] == 1.0
    # row y: mirrored (0.2,0.5,0.3) (0.1,0.6,0.3) (0.1,0.3,0.6) (0.4,0.3,0.3) -> mean
    np.testing.assert_allclose(table.loc[1, ["p_a", "p_b", "p_tie"]], [0.2, 0.425, 0.375])
    # the mean picks B; B is the argmax of 2 of the 4 predictions
    assert table.loc[1, "agreement"] == 0.5


def test_fold_mean_logits_are_the_log_of_the_mean_probability():
    a = np.log([[0.6, 0.3, 0.1]])
    b = np.log([[0.2, 0.5, 0.3]])
    np.testing.assert_allclose(np.exp(fold_mean_logits([a, b])), [[0.4, 0.4, 0.2]])


def scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": list("abcdef"),
            "confidence": [0.9, 0.4, 0.7, 0.8, 0.5, 0.6],
            "agreement": [1.0, 1.0, 0.5, 1.0, 1.0, 0.75],
        }
    )


def test_select_keeps_all_by_default():
    out = select_rows(scores())
    assert out["kept"].all() and (out["reason"] == "").all()


def test_select_by_thresholds_names_the_reason():
    out = select_rows(scores(), min_confidence=0.55, min_agreement=0.8)
    assert out.loc[out["kept"], "id"].tolist() == ["a", "d"]
    reasons = dict(zip(out["id"], out["reason"], strict=True))
    assert reasons["b"] == reasons["e"] == "confidence below min_confidence 0.55"
    assert reasons["c"] == reasons["f"] == "agreement below min_agreement 0.8"


def test_select_top_fraction_after_thresholds():
    out = select_rows(scores(), top_fraction=0.5)  # 3 of 6 by confidence
    assert out.loc[out["kept"], "id"].tolist() == ["a", "c", "d"]
    assert (out.loc[~out["kept"], "reason"] == "outside the top 0.5 by confidence").all()
    out = select_rows(scores(), min_confidence=0.55, top_fraction=0.5, rank_by="agreement")
    # passed: a c d f (4) -> ceil(2) by agreement, ties in table order: a, d
    assert out.loc[out["kept"], "id"].tolist() == ["a", "d"]


def test_pseudo_settings_are_checked():
    with pytest.raises(ConfigError, match="top_fraction"):
        settings.stage(compose(["stages.pseudo_label.top_fraction=0"]), "pseudo_label")
    with pytest.raises(ConfigError, match="pseudo_targets"):
        settings.stage(compose(["stages.distill.pseudo_targets=all"]), "distill")


def batch(labels, pseudo, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "labels": torch.tensor(labels),
        "teacher_logits": torch.randn(n, 2, 3, generator=g),
        "pseudo": torch.tensor(pseudo, dtype=torch.float32),
    }


def test_a_pseudo_row_has_only_teacher_terms():
    loss = DistillLoss(2, temperature=2.0, ce=1.0, kl=0.5, cos=2.0, pseudo_weight=0.3)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=g)
    b = batch([0, IGNORE_LABEL, 2, IGNORE_LABEL], [0.0, 1.0, 0.0, 1.0])
    value = loss(logits, b)
    # by hand, row by row
    t_ = 2.0
    expected = []
    for i in range(4):
        log_p = F.log_softmax(logits[i] / t_, dim=-1)
        teach = 0.0
        for k in range(2):
            p_t = F.softmax(b["teacher_logits"][i, k] / t_, dim=-1)
            kl = (p_t * (p_t.log() - log_p)).sum() * t_**2
            cos = 1 - F.cosine_similarity(p_t, log_p.exp(), dim=0)
            teach = teach + 0.5 * kl + 2.0 * cos
        if b["pseudo"][i]:
            expected.append(0.3 * teach)
        else:
            expected.append(F.cross_entropy(logits[i : i + 1], b["labels"][i : i + 1]) + teach)
    norm = 1.0 + 2 * (0.5 + 2.0)
    torch.testing.assert_close(value, torch.stack(expected).mean() / norm)
    # a pseudo row's label plays no part
    other = dict(b, labels=torch.tensor([0, 1, 2, 0]))
    other["pseudo"] = b["pseudo"]
    torch.testing.assert_close(loss(logits, other), value)


def test_the_pseudo_flag_on_labelled_rows_changes_nothing():
    loss = DistillLoss(2, temperature=1.5, ce=1.0, kl=1.0, cos=1.0)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    b = batch([0, 1, 2, 1], [0.0, 0.0, 0.0, 0.0])
    plain = {k: v for k, v in b.items() if k != "pseudo"}
    torch.testing.assert_close(loss(logits, b), loss(logits, plain))


def test_a_pseudo_row_gets_no_gradient_from_its_label():
    loss = DistillLoss(1, ce=1.0, kl=0.0, cos=0.0, pseudo_weight=1.0)
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    b = {
        "labels": torch.tensor([1, IGNORE_LABEL]),
        "teacher_logits": torch.zeros(2, 1, 3),
        "pseudo": torch.tensor([0.0, 1.0]),
    }
    loss(logits, b).backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_pseudo_examples_swap_without_a_label():
    enc = {("p", False): [1, 2], ("p", True): [2, 1]}
    ex = make_examples(["p"], [IGNORE_LABEL], enc, swap="random")
    assert [e["labels"] for e in ex] == [IGNORE_LABEL, IGNORE_LABEL]


REAL = ["experiment=cpu_real", "data.train.path=some.csv"]


def test_the_plan_scores_the_pool_after_the_teachers_and_before_the_student():
    overrides = [*REAL, "data.unlabelled=[pool.csv]", "pipeline.ablate=true"]
    cfg = compose(overrides)
    steps = {s.label: s for s in plan(cfg, model_paths_of(cfg, overrides))}
    order = list(steps)
    assert order.index("dump_logits minilm") < order.index("pseudo_label") < order.index("distill")
    assert steps["pseudo_label"].needs == ("data", "teacher minilm")
    assert "pseudo_label" in steps["distill"].needs
    assert "stages.distill.pseudo_dir=${stages.pseudo_label.out_dir}" in steps["distill"].overrides
    # the CE-only student stays the one without pseudo rows
    assert "pseudo_label" not in steps["distill ce_only"].needs
    assert "stages.distill.pseudo_dir=null" in steps["distill ce_only"].overrides
    cfg = compose(REAL)
    assert "pseudo_label" not in [s.label for s in plan(cfg, model_paths_of(cfg, REAL))]


def test_a_pool_does_not_rerun_the_data_stage_or_the_teachers():
    with_pool = [*REAL, "data.unlabelled=[pool.csv]"]
    keys = {}
    for name, overrides in (("without", REAL), ("with", with_pool)):
        cfg = compose(overrides)
        steps = {s.label: s for s in plan(cfg, model_paths_of(cfg, overrides))}
        keys[name] = {
            label: step_key(steps[label], compose([*overrides, *steps[label].overrides]), {})
            for label in ("data", "teacher minilm", "dump_logits minilm", "distill")
        }
    for label in ("data", "teacher minilm", "dump_logits minilm"):
        assert keys["with"][label] == keys["without"][label], label
    assert keys["with"]["distill"] != keys["without"]["distill"]


def test_the_report_shows_the_counts_and_the_students_trained_on_them(tmp_path):
    from arena_distill.io import write_json
    from arena_distill.report.render import pseudo_labels, section_pseudo_labels

    pseudo_dir = tmp_path / "pseudo"
    pseudo_dir.mkdir()
    counts = {"read": 10, "kept": 6, "scored": 8, "dropped": {"duplicate_of_train": 2}}
    write_json(pseudo_dir / "manifest.json", {"outputs": {"rows": counts}})
    students = tmp_path / "students"
    for name, extra in (("s", [str(pseudo_dir / "rows.parquet")]), ("s_ce_only", [])):
        (students / name / "fold_0").mkdir(parents=True)
        write_json(
            students / name / "fold_0" / "manifest.json", {"outputs": {"extra_inputs": extra}}
        )
    info = pseudo_labels(pseudo_dir, students)
    assert info["rows"] == counts and info["students"] == ["s"]
    text = section_pseudo_labels(
        {"pseudo_labels": info, "oof_log_loss": {"student/s": 0.9512}}, plots=False
    ).markdown()
    assert "6 of 10 pool rows kept" in text and "duplicate_of_train" in text and "0.9512" in text
    assert pseudo_labels(tmp_path / "none", students) is None
