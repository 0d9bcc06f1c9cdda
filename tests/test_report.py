"""The report's scores on synthetic run folders with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_distill.data.folds import write_folds
from arena_distill.data.tableio import save_table
from arena_distill.io import StageInputError
from arena_distill.layout import prediction_table
from arena_distill.report import (
    BUCKET_KINDS,
    COST_KEYS,
    FOLDS_MEAN,
    METRICS_KEYS,
    SECTIONS,
    ReportError,
    StagePredictions,
    bucket_features,
    bucket_log_loss,
    build_metrics,
    compare_runs,
    cost_rows,
    fit_temperature,
    load_run,
    merge_warnings,
    per_class_log_loss,
    recipe_gains,
    render_report,
    temperature_scale,
    write_report,
)

N_CV, N_HOLDOUT, N_FOLDS = 60, 15, 3


def _hand_ll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Log loss the slow way (no clipping needed: the synthetic probabilities are > 0)."""
    total = 0.0
    for p, y in zip(probs, labels, strict=True):
        total += -math.log(p[y] / p.sum())
    return total / len(labels)


def _train_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i in range(n):
        turns = int(rng.integers(1, 5))
        rows.append(
            {
                "id": f"r{i:03d}",
                "source": "demo",
                "prompt": [f"question {t}" for t in range(turns)],
                "response_a": [" ".join(["a"] * int(rng.integers(1, 40))) for _ in range(turns)],
                "response_b": [" ".join(["b"] * int(rng.integers(1, 40))) for _ in range(turns)],
                "model_a": None,
                "model_b": None,
                "label": int(rng.integers(0, 3)),
                "n_turns": turns,
                "empty_a": False,
                "empty_b": False,
            }
        )
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int8")
    return df


def make_run(root: Path, seed: int = 0, fold_seed: int = 0) -> dict:
    """A run folder: data/, a teacher's OOF (with TTA), a merged model and two fold models on
    the holdout. Returns what the tests need to recompute the answers."""
    rng = np.random.default_rng(seed)
    train = _train_table(N_CV + N_HOLDOUT, rng)
    data = root / "data"
    data.mkdir(parents=True)
    save_table(train, data / "train.parquet")
    ids = train["id"].tolist()
    fold_of = np.random.default_rng(fold_seed).permutation(np.arange(N_CV) % N_FOLDS)
    folds = pd.DataFrame(
        {
            "id": ids,
            "split": ["cv"] * N_CV + ["holdout"] * N_HOLDOUT,
            "fold": np.concatenate([fold_of, -np.ones(N_HOLDOUT, dtype=int)]),
        }
    )
    write_folds(folds, data / "folds.csv")
    summary = {
        "rows_read": {"demo": 80},
        "rows_kept": {"demo": 75},
        "normalisations": {"demo/null_to_empty": 3},
        "dropped_by_reason": {"demo/duplicate": 5},
        "dropped": [],
    }
    (data / "summary.json").write_text(json.dumps(summary))
    labels = train["label"].to_numpy(dtype=int)

    cv_ids, ho_ids = ids[:N_CV], ids[N_CV:]
    logits = rng.normal(size=(N_CV, 3))
    swapped = rng.normal(size=(N_CV, 3))
    oof = prediction_table(cv_ids, logits, swapped, fold=fold_of, label=labels[:N_CV])
    (root / "teachers" / "m").mkdir(parents=True)
    oof.to_parquet(root / "teachers" / "m" / "oof.parquet")

    holdout = {}
    for name in ("merged", "fold_0", "fold_1"):
        t = prediction_table(
            ho_ids, rng.normal(size=(N_HOLDOUT, 3)), rng.normal(size=(N_HOLDOUT, 3))
        )
        (root / "holdout" / name).mkdir(parents=True)
        t.to_parquet(root / "holdout" / name / "predictions.parquet")
        holdout[name] = t
    return {
        "labels": labels,
        "cv_labels": labels[:N_CV],
        "ho_labels": labels[N_CV:],
        "fold": fold_of,
        "oof": oof,
        "holdout": holdout,
    }


@pytest.fixture
def synthetic(tmp_path):
    truth = make_run(tmp_path / "run")
    return tmp_path / "run", truth


def _cols(df, prefix):
    return df[[f"{prefix}a", f"{prefix}b", f"{prefix}tie"]].to_numpy()


def test_oof_log_loss_per_stage_and_fold_match_hand_computation(synthetic):
    root, t = synthetic
    m = build_metrics(load_run(root))
    y, fold = t["cv_labels"], t["fold"]
    for stage, prefix in (("teacher/m", "p_"), ("teacher/m+tta", "tta_p_")):
        p = _cols(t["oof"], prefix)
        assert m["oof_log_loss"][stage] == pytest.approx(_hand_ll(p, y), abs=1e-12)
        want = [_hand_ll(p[fold == k], y[fold == k]) for k in range(N_FOLDS)]
        assert m["fold_log_loss"][stage] == pytest.approx(want, abs=1e-12)
        assert m["fold_log_loss_mean"][stage] == pytest.approx(np.mean(want))
        assert m["n_rows"][stage] == N_CV
        assert m["accuracy"][stage] == pytest.approx(np.mean(p.argmax(1) == y))
        for k, c in enumerate(("A", "B", "tie")):
            want_c = _hand_ll(p[y == k], y[y == k])
            assert m["per_class_log_loss"][stage][c] == pytest.approx(want_c, abs=1e-12)
    gain = _hand_ll(_cols(t["oof"], "p_"), y) - _hand_ll(_cols(t["oof"], "tta_p_"), y)
    assert m["tta_gain"] == {"teacher/m": pytest.approx(gain, abs=1e-12)}


def test_prior_is_the_cv_class_mix_scored_on_cv_and_holdout(synthetic):
    root, t = synthetic
    m = build_metrics(load_run(root))
    freq = np.bincount(t["cv_labels"], minlength=3) / N_CV
    assert m["prior_log_loss"] == pytest.approx(-np.sum(freq * np.log(freq)), abs=1e-12)
    want_ho = -np.mean(np.log(freq[t["ho_labels"]]))
    assert m["holdout_prior_log_loss"] == pytest.approx(want_ho, abs=1e-12)


def test_holdout_scores_and_fold_mean(synthetic):
    root, t = synthetic
    m = build_metrics(load_run(root))
    y = t["ho_labels"]
    ho = t["holdout"]
    assert set(m["holdout_log_loss"]) == {
        "merged",
        "merged+tta",
        FOLDS_MEAN,
        FOLDS_MEAN + "+tta",
    }
    assert m["holdout_log_loss"]["merged"] == pytest.approx(_hand_ll(_cols(ho["merged"], "p_"), y))
    mean = (_cols(ho["fold_0"], "p_") + _cols(ho["fold_1"], "p_")) / 2
    assert m["holdout_log_loss"][FOLDS_MEAN] == pytest.approx(_hand_ll(mean, y))
    mean_tta = (_cols(ho["fold_0"], "tta_p_") + _cols(ho["fold_1"], "tta_p_")) / 2
    assert m["holdout_log_loss"][FOLDS_MEAN + "+tta"] == pytest.approx(_hand_ll(mean_tta, y))
    assert m["holdout_n_rows"]["merged"] == N_HOLDOUT
    assert m["holdout_fold_models"] == ["fold_0", "fold_1"]
    # whole-data models never appear among the OOF scores and vice versa
    assert not set(m["oof_log_loss"]) & set(m["holdout_log_loss"])


@pytest.mark.parametrize("change", ["drop", "extra", "duplicate"])
def test_holdout_ids_must_be_exactly_the_holdout(synthetic, change):
    root, t = synthetic
    path = root / "holdout" / "merged" / "predictions.parquet"
    df = pd.read_parquet(path)
    if change == "drop":
        df = df.iloc[1:]
    elif change == "extra":  # a cv row scored as if it were holdout
        row = df.iloc[:1].copy()
        row["id"] = "r000"
        df = pd.concat([df, row])
    else:
        df = pd.concat([df, df.iloc[:1]])
    df.to_parquet(path)
    with pytest.raises(ReportError, match="holdout ids"):
        load_run(root)


def test_fold_model_with_wrong_ids_refused_too(synthetic):
    root, _ = synthetic
    path = root / "holdout" / "fold_1" / "predictions.parquet"
    pd.read_parquet(path).iloc[2:].to_parquet(path)
    with pytest.raises(ReportError, match="holdout ids"):
        load_run(root)


def test_oof_on_other_folds_refused(synthetic):
    root, _ = synthetic
    path = root / "teachers" / "m" / "oof.parquet"
    df = pd.read_parquet(path)
    df["fold"] = (df["fold"] + 1) % N_FOLDS
    df.to_parquet(path)
    with pytest.raises(ReportError, match="folds differ"):
        load_run(root)


def test_baselines_in_both_sections(synthetic):
    root, t = synthetic
    rng = np.random.default_rng(5)
    folds = pd.read_csv(root / "data" / "folds.csv")
    cv = folds[folds["split"] == "cv"]
    p = rng.dirichlet([1, 1, 1], size=len(cv))
    base = root / "baselines" / "lengths"
    base.mkdir(parents=True)
    pd.DataFrame(
        {"id": cv["id"], "fold": cv["fold"], "p_a": p[:, 0], "p_b": p[:, 1], "p_tie": p[:, 2]}
    ).to_parquet(base / "oof.parquet")
    ho = folds[folds["split"] == "holdout"]
    q = rng.dirichlet([1, 1, 1], size=len(ho))
    pd.DataFrame({"id": ho["id"], "p_a": q[:, 0], "p_b": q[:, 1], "p_tie": q[:, 2]}).to_parquet(
        base / "holdout.parquet"
    )
    m = build_metrics(load_run(root))
    assert m["oof_log_loss"]["baseline/lengths"] == pytest.approx(_hand_ll(p, t["cv_labels"]))
    assert m["holdout_log_loss"]["baseline/lengths"] == pytest.approx(_hand_ll(q, t["ho_labels"]))
    assert len(m["fold_log_loss"]["baseline/lengths"]) == N_FOLDS


def test_per_class_log_loss_known_values():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.25, 0.5, 0.25]])
    labels = np.array([0, 1, 1, 2])
    got = per_class_log_loss(probs, labels)
    assert got["A"] == pytest.approx(-math.log(0.5))
    assert got["B"] == pytest.approx(-(math.log(0.8) + math.log(0.2)) / 2)
    assert got["tie"] == pytest.approx(-math.log(0.25))
    assert per_class_log_loss(probs[:2], labels[:2])["tie"] is None


def test_buckets_partition_the_rows(synthetic):
    root, _ = synthetic
    run = load_run(root)
    feats = bucket_features(run.train, n_len_buckets=4)
    assert len(feats) == N_CV + N_HOLDOUT and feats.index.is_unique
    n_turns = run.train.set_index("id")["n_turns"]
    want_turns = n_turns.map(lambda n: "1" if n == 1 else "2" if n == 2 else "3+")
    assert (feats["turns"] == want_turns.loc[feats.index]).all()
    assert feats["len_diff_bucket"].nunique() == 4
    # the length buckets are ordered by the difference
    order = feats.groupby("len_diff_bucket")["len_diff"].agg(["min", "max"]).sort_index()
    assert (order["max"].to_numpy()[:-1] <= order["min"].to_numpy()[1:]).all()
    m = build_metrics(run, n_len_buckets=4)
    for section, n in (("oof", N_CV), ("holdout", N_HOLDOUT)):
        for stage, kinds in m["buckets"][section].items():
            assert set(kinds) == set(BUCKET_KINDS)
            for kind, buckets in kinds.items():
                assert sum(b["n"] for b in buckets.values()) == n, (section, stage, kind)
    sp = run.section("oof")[0]
    b = bucket_log_loss(sp, feats)
    tie = sp.labels == 2
    assert b["tie"]["tie"]["log_loss"] == pytest.approx(_hand_ll(sp.probs[tie], sp.labels[tie]))


def _tempered(n: int, scale: float, seed: int = 0) -> StagePredictions:
    rng = np.random.default_rng(seed)
    true = rng.normal(scale=1.5, size=(n, 3))
    p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    logits = scale * true
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    folds = np.arange(n) % 3
    return StagePredictions(
        "teacher/x", "oof", [f"i{i}" for i in range(n)], labels, probs, folds, logits
    )


def test_temperature_scaling_recovers_the_scale():
    sp = _tempered(6000, 3.0)
    assert fit_temperature(sp.logits, sp.labels) == pytest.approx(3.0, rel=0.1)
    scaled, info = temperature_scale(sp)
    assert scaled.name == "teacher/x+ts"
    assert info["temperature"] == pytest.approx(3.0, rel=0.1)
    assert all(t == pytest.approx(3.0, rel=0.15) for t in info["fold_temperatures"])
    assert info["log_loss"] < info["log_loss_before"] - 0.1
    # a calibrated model keeps T close to 1
    assert fit_temperature(_tempered(6000, 1.0).logits, _tempered(6000, 1.0).labels) == (
        pytest.approx(1.0, rel=0.1)
    )


def test_temperature_rows_in_metrics_only_for_oof(synthetic):
    root, _ = synthetic
    m = build_metrics(load_run(root), temperature_scaling=True)
    assert {"teacher/m+ts", "teacher/m+tta+ts"} <= set(m["oof_log_loss"])
    assert len(m["fold_log_loss"]["teacher/m+ts"]) == N_FOLDS
    assert m["temperature_scaled"]["teacher/m"]["temperature"] > 0
    assert not any(s.endswith("+ts") for s in m["holdout_log_loss"])
    assert "teacher/m+ts" not in build_metrics(load_run(root))["oof_log_loss"]


def test_metrics_json_contract(synthetic, tmp_path):
    root, _ = synthetic
    out = tmp_path / "report"
    write_report(load_run(root), out)
    m = json.loads((out / "metrics.json").read_text())
    # the keys other tools read: renaming one breaks them
    assert METRICS_KEYS == (
        "oof_log_loss",
        "fold_log_loss",
        "holdout_log_loss",
        "n_rows",
        "prior_log_loss",
    )
    for key in METRICS_KEYS:
        assert key in m
    assert isinstance(m["prior_log_loss"], float)
    assert isinstance(m["holdout_prior_log_loss"], float)
    for stage, v in m["oof_log_loss"].items():
        assert isinstance(stage, str) and isinstance(v, float)
        assert all(isinstance(x, float) for x in m["fold_log_loss"][stage])
        assert isinstance(m["n_rows"][stage], int)
    assert all(isinstance(v, float) for v in m["holdout_log_loss"].values())
    assert set(m["fold_log_loss"]) == set(m["oof_log_loss"]) == set(m["n_rows"])
    assert {"accuracy", "per_class_log_loss", "tta_gain", "buckets"} <= set(m)


def test_report_files_and_embedded_images(synthetic, tmp_path):
    root, _ = synthetic
    out = tmp_path / "report"
    write_report(load_run(root), out)
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert 'src="plots/' not in html  # self-contained
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs and all(f"plots/{name}" in md for name in pngs)
    assert (out / "plots" / pngs[0]).read_bytes()[:4] == b"\x89PNG"
    for text in ("teacher/m+tta", "merged", "class prior", "Swap-TTA", "demo/duplicate"):
        assert text in md and text in html


def test_compare_run_with_itself_is_zero(synthetic, tmp_path):
    root, _ = synthetic
    c = compare_runs(root, root, tmp_path / "cmp")
    assert c["oof_log_loss"] and c["holdout_log_loss"]
    for key in ("oof_log_loss", "holdout_log_loss"):
        assert all(v["diff"] == 0.0 for v in c[key].values())
    assert all(d == 0.0 for v in c["fold_log_loss"].values() for d in v["diff"])
    for f in ("comparison.json", "comparison.md", "comparison.html"):
        assert (tmp_path / "cmp" / f).is_file()


def test_compare_uses_the_same_rows_and_refuses_other_folds(tmp_path):
    a = tmp_path / "a"
    make_run(a, seed=0)
    b = tmp_path / "b"
    make_run(b, seed=0)
    # b's teacher: other predictions on the same rows
    path = b / "teachers" / "m" / "oof.parquet"
    df = pd.read_parquet(path)
    df[["p_a", "p_b", "p_tie"]] = 1 / 3
    df.to_parquet(path)
    c = compare_runs(a, b)
    v = c["oof_log_loss"]["teacher/m"]
    assert v["b"] == pytest.approx(math.log(3))
    assert v["diff"] == pytest.approx(v["b"] - v["a"]) and v["n_rows"] == N_CV
    other = tmp_path / "other"
    make_run(other, seed=0, fold_seed=1)
    with pytest.raises(ReportError, match="folds differ"):
        compare_runs(a, other)


def test_outputs_built_on_other_data_refused(synthetic):
    root, _ = synthetic
    folds = root / "data" / "folds.csv"
    fold_dir = root / "teachers" / "m" / "fold_0"
    fold_dir.mkdir()
    manifest = {"stage": "teacher", "inputs": [{"path": str(folds), "sha256": "0" * 64}]}
    (fold_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StageInputError, match="stale"):
        load_run(root)


def _manifest(folder: Path, stage: str, timings: dict | None, outputs: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    m = {"stage": stage, "inputs": [], "outputs": outputs or {}, "timings": timings}
    (folder / "manifest.json").write_text(json.dumps(m))


def test_cost_rows_from_every_manifest_of_the_run(synthetic, tmp_path):
    root, _ = synthetic
    train_tp = {"train_examples_per_s": 12.5, "train_tokens_per_s": 900.0}
    oof_tp = {"rows_per_s": 40.0, "tokens_per_s": 3000.0}
    _manifest(root / "data", "data", {"seconds": 1.5, "peak_rss_mb": 210.3})
    _manifest(root / "teachers" / "m", "teacher", None, {"oof_log_loss": 1.0})
    _manifest(
        root / "teachers" / "m" / "fold_0",
        "teacher",
        {"seconds": 30.26, "peak_rss_mb": 800.0, "peak_cuda_mb": 5000.5},
        {"throughput": {**train_tp, **oof_tp}},
    )
    _manifest(
        root / "holdout" / "merged",
        "predict",
        {"seconds": 4.0, "peak_rss_mb": 500.0},
        {"throughput": {"rows": 30, "rows_per_s": 15.0, "tokens_per_s": 1100.0}},
    )
    # not stage outputs: logs, work folders, a half-written folder, the report itself
    _manifest(root / "logs" / "teacher" / "t0", "teacher", {"seconds": 9.0})
    _manifest(root / "teachers" / "m" / ".work" / "fold_1", "teacher", {"seconds": 9.0})
    _manifest(root / ".work-pretrain", "pretrain", {"seconds": 9.0})
    _manifest(root / ".merged.tmp-12", "merge", {"seconds": 9.0})
    _manifest(root / "report", "report", {"seconds": 9.0})
    rows = cost_rows(root)
    assert [r["output"] for r in rows] == [
        "data",
        "holdout/merged",
        "teachers/m",
        "teachers/m/fold_0",
    ]
    assert all(tuple(r) == COST_KEYS for r in rows)
    by = {r["output"]: r for r in rows}
    assert by["data"] == {
        "output": "data",
        "stage": "data",
        "seconds": 1.5,
        "train_examples_per_s": None,
        "train_tokens_per_s": None,
        "rows_per_s": None,
        "tokens_per_s": None,
        "peak_rss_mb": 210.3,
        "peak_cuda_mb": None,
    }
    assert by["teachers/m/fold_0"] == {
        "output": "teachers/m/fold_0",
        "stage": "teacher",
        "seconds": 30.26,
        **train_tp,
        **oof_tp,
        "peak_rss_mb": 800.0,
        "peak_cuda_mb": 5000.5,
    }
    assert by["holdout/merged"]["rows_per_s"] == 15.0
    assert by["holdout/merged"]["train_examples_per_s"] is None
    assert by["teachers/m"]["seconds"] is None and by["teachers/m"]["stage"] == "teacher"

    out = tmp_path / "report"
    m = write_report(load_run(root), out, plots=False)
    assert m["cost"] == rows
    assert json.loads((out / "metrics.json").read_text())["cost"] == rows
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "## Cost" in md and "<h2>Cost</h2>" in html
    assert (
        "| output | stage | seconds | train examples/s | train tokens/s | inference rows/s |" in md
    )
    assert (
        "| teachers/m/fold_0 | teacher | 30.3 | 12.5 | 900 | 40.0 | 3,000 | 800.0 | 5,000.5 |" in md
    )
    assert "| data | data | 1.5 |  |  |  |  | 210.3 |  |" in md
    assert "<td>teachers/m/fold_0</td>" in html


def test_cost_section_without_manifests(synthetic, tmp_path):
    root, _ = synthetic
    m = write_report(load_run(root), tmp_path / "report", plots=False)
    assert m["cost"] == []
    assert "No stage manifests" in (tmp_path / "report" / "report.md").read_text()


def test_recipe_gains_compare_each_step_exactly():
    oof = {
        "student/s": 0.90,
        "student/s+tta": 0.88,
        "student/s_ce_only": 0.95,
        "student/s_ce_only+tta": 0.91,
        "teacher/t": 0.80,
    }
    holdout = {"folds_mean": 0.92, "folds_mean+tta": 0.90, "merged": 0.93, "quantized": 0.94}
    gains = {(g["step"], g["compared"]): g for g in recipe_gains(oof, holdout)}
    assert set(gains) == {
        ("distillation", "student/s_ce_only → student/s"),
        ("distillation", "student/s_ce_only+tta → student/s+tta"),
        ("merge", "folds_mean → merged"),
        ("quantization", "merged → quantized"),
    }
    assert gains["distillation", "student/s_ce_only → student/s"]["gain"] == pytest.approx(0.05)
    assert gains["distillation", "student/s_ce_only+tta → student/s+tta"]["rows"] == "oof"
    assert gains["merge", "folds_mean → merged"]["gain"] == pytest.approx(-0.01)
    q = gains["quantization", "merged → quantized"]
    assert (q["baseline"], q["with"], q["rows"]) == (0.93, 0.94, "holdout")
    assert recipe_gains({"student/s": 0.9}, {}) == []


def test_merge_warnings_flag_a_merge_that_lost_what_the_folds_learned(tmp_path):
    # the union run: folds' mean 0.9528, merged 1.0346, holdout prior 1.0273
    (w,) = merge_warnings({"folds_mean": 0.9528, "merged": 1.0346}, 1.0273)
    assert "no better than the class prior (1.0273)" in w and "0.9528" in w
    (w,) = merge_warnings({"folds_mean": 0.95, "merged": 0.98}, 1.03)
    assert w.startswith("Merging cost 0.0300")
    assert merge_warnings({"folds_mean": 1.0000, "merged": 1.0031}, 1.0474) == []  # llmeval2
    assert merge_warnings({"folds_mean": 1.05, "merged": 1.06}, 1.03) == []  # nothing learned
    assert merge_warnings({"merged": 1.2}, 1.0) == []  # no fold students scored
    make_run(tmp_path)
    m = build_metrics(load_run(tmp_path))
    assert m["warnings"] == merge_warnings(m["holdout_log_loss"], m["holdout_prior_log_loss"])
    doc = render_report({**m, "warnings": ["the folds diverged"]}, plots=False)
    assert "**Warning.** the folds diverged" in doc.markdown()


# the report's top-level headings, one section function each (None: before the first heading)
REPORT_SECTIONS = {
    "section_intro": None,
    "section_warnings": None,
    "section_final_model": "Final model (out-of-fold evidence only)",
    "section_transformer_gap": "Best transformer stage vs best baseline",
    "section_prior": "Floor to beat: the class prior",
    "section_oof": "Out-of-fold scores (per-fold models, cv rows)",
    "section_tta": "Swap-TTA gain",
    "section_gains": "Distillation, merge and quantization",
    "section_temperature": "Temperature scaling (OOF)",
    "section_holdout": "Holdout scores (whole-data models, same rows)",
    "section_buckets": "Log loss by bucket (OOF)",
    "section_calibration": "Calibration (reliability diagrams)",
    "section_cost": "Cost",
    "section_training_logs": "Training logs",
    "section_data": "Data",
    "section_pseudo_labels": "Pseudo-labels",
}


def test_the_best_transformer_stage_is_compared_with_the_best_baseline():
    from arena_distill.report.metrics import transformer_vs_baseline

    oof = {
        "teacher/t": 0.95,
        "teacher/t+tta": 0.94,
        "student/s": 0.97,
        "baseline/length_lr": 1.0,
        "baseline/tfidf_lr": 0.99,
        "stacked": 0.90,  # mixes the baselines in: not a transformer stage
        "teacher/t+ts": 0.93,  # a recalibrated copy: not a stage of its own
    }
    holdout = {"quantized+tta": 1.02, "folds_mean": 1.01, "baseline/tfidf_lr": 0.98}
    got = transformer_vs_baseline(oof, holdout)
    assert got["oof"] == {
        "transformer": "teacher/t+tta",
        "transformer_log_loss": 0.94,
        "baseline": "baseline/tfidf_lr",
        "baseline_log_loss": 0.99,
        "gap": pytest.approx(-0.05),
    }
    assert got["holdout"]["transformer"] == "folds_mean"
    assert got["holdout"]["gap"] == pytest.approx(0.03)
    assert transformer_vs_baseline({"baseline/prior": 1.0}, {}) == {}


def test_render_report_is_its_section_functions_in_order(synthetic):
    from arena_distill.report.metrics import final_model, transformer_vs_baseline

    root, _ = synthetic
    _manifest(root / "data", "data", {"seconds": 1.5, "peak_rss_mb": 210.3})
    m = build_metrics(load_run(root), temperature_scaling=True)
    m["warnings"] = ["the folds diverged"]
    m["final_model"] = final_model({"student/s": 0.9, "baseline/prior": 1.0}, 3)
    m["transformer_vs_baseline"] = transformer_vs_baseline(
        {"student/s": 0.9, "baseline/prior": 1.0}, {}
    )
    m["training_logs"] = {
        "tensorboard_dir": "runs/x/tensorboard",
        "runs": [{"run": "a", "files": 1}],
    }
    m["pseudo_labels"] = {
        "folder": "runs/x/pseudo",
        "rows": {"read": 3, "kept": 2, "scored": 2, "dropped": {"duplicate_of_train": 1}},
        "students": ["m"],
    }
    assert m["recipe_gains"] and m["tta_gain"] and m["cost"]  # every section has something
    assert [f.__name__ for f in SECTIONS] == list(REPORT_SECTIONS)
    by_name = {f.__name__: f for f in SECTIONS}
    sections = {name: f(m, plots=False) for name, f in by_name.items()}
    # the calibration section is plots only: one stage's diagram stands for all
    one_calib = {**m, "calibration": dict(list(m["calibration"].items())[:1])}
    calib = dict(
        sections, section_calibration=by_name["section_calibration"](one_calib, plots=True)
    )
    for name, heading in REPORT_SECTIONS.items():
        sec = calib[name]
        md = sec.markdown()
        assert isinstance(md, str) and sec.heading == heading, name
        if heading is not None:
            assert md.startswith(f"## {heading}\n\n"), name
            assert "\n| " in md or "![" in md, name  # a table or a plot under the heading
            # one top-level heading per section (the buckets: OOF, then holdout)
            assert md.count("\n## ") == (1 if name == "section_buckets" else 0), name
    assert sections["section_intro"].markdown().startswith("Generated ")
    assert sections["section_warnings"].markdown() == "**Warning.** the folds diverged\n"
    assert "## Log loss by bucket (holdout)" in sections["section_buckets"].markdown()
    assert "](plots/reliability_oof_teacher_m.png)" in calib["section_calibration"].markdown()

    doc = render_report(m, title="t", plots=False)
    # the document is the sections' blocks in order (the intro's timestamp may differ)
    assert doc.blocks[0][1].startswith("Generated ")
    assert doc.blocks[1:] == [
        b for name in list(REPORT_SECTIONS)[1:] for b in sections[name].blocks
    ]
    body = [line for sec in sections.values() for line in sec.markdown_lines()]
    lines = doc.markdown().split("\n")
    assert lines[:2] == ["# t", ""] and lines[4:] == body[2:]  # after title and intro

    # without their data the optional sections are empty and leave no heading behind
    bare = {**m, "tta_gain": {}, "holdout_tta_gain": {}, "recipe_gains": [], "warnings": []}
    bare["training_logs"] = None
    bare["temperature_scaled"] = {}
    bare["pseudo_labels"] = None
    for name in (
        "section_warnings",
        "section_tta",
        "section_gains",
        "section_temperature",
        "section_training_logs",
        "section_pseudo_labels",
    ):
        assert by_name[name](bare, plots=True).markdown() == "", name
    assert sections["section_calibration"].markdown() == ""  # calibration: plots only
    md = render_report(bare, plots=False).markdown()
    assert "## Swap-TTA gain" not in md and "## Temperature scaling" not in md
    assert md.index("## Out-of-fold scores") < md.index("## Holdout scores") < md.index("## Cost")


def test_the_report_links_the_tensorboard_runs_it_finds(synthetic, tmp_path):
    root, _ = synthetic
    tb = tmp_path / "tb"
    for run in ("teacher/m/fold_0", "teacher/m/fold_1", "pretrain/m"):
        (tb / run).mkdir(parents=True)
        (tb / run / "events.out.tfevents.1.host").write_bytes(b"x")
    (tb / "empty").mkdir()
    m = write_report(load_run(root), tmp_path / "out", plots=False, tensorboard_dir=tb)
    assert m["training_logs"] == {
        "tensorboard_dir": str(tb),
        "runs": [
            {"run": "pretrain/m", "files": 1},
            {"run": "teacher/m/fold_0", "files": 1},
            {"run": "teacher/m/fold_1", "files": 1},
        ],
    }
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"`tensorboard --logdir {tb}`" in md and "| teacher/m/fold_1 | 1 |" in md
    plain = write_report(load_run(root), tmp_path / "out2", plots=False, tensorboard_dir=None)
    assert "training_logs" not in plain
