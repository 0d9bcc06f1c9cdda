"""Stage ``stack``: a level-2 logistic regression over the student, the baselines and the
length features (``arena_distill.stacking``), cross-fitted out of fold and applied to the final
model on the holdout and test rows.

Reads ``${run_dir}/data/``, the fold students' OOF predictions (``stages.stack.student_dir``,
default ``students/<student>/oof.parquet``), the baselines' OOF predictions
(``stages.stack.baselines_dir``/<name>/oof.parquet), and the final model's predictions: on the
holdout rows ``stages.stack.holdout_dir``/predictions.parquet (default the quantized model's,
``holdout/quantized/``; required when the data has holdout rows) and on the test rows
``stages.stack.test_dir``/predictions.parquet (default ``predictions/``; required when the data
has a test set). The baselines applied to holdout and test rows are refitted here on every
training row (the baselines stage's holdout models: the same rows and settings; the largest
difference from ``baselines/<name>/holdout.parquet`` is recorded).

Writes ``stages.stack.out_dir`` (default ``${run_dir}/stack/``) atomically:

* ``oof.parquet``: ``id, fold, label, p_*`` and ``tta_p_*``: the cross-fitted level-2
  predictions of every cv row (fold k scored by a stacker fitted on the other folds only);
  the report's ``stacked`` / ``stacked+tta`` OOF rows;
* ``holdout.parquet`` (same columns, no fold): the stacker fitted on every OOF row applied to
  the final model's holdout predictions and the refitted baselines; the report's holdout rows;
* ``test_predictions.parquet`` and ``submission.csv`` (``tta_p_*`` when the final model has
  swapped-input logits) when the data has a test set;
* ``stacker/``: ``stacker.json`` (feature names, standardisation, coefficients, intercepts,
  the C chosen by cross-validation — or, with ``stages.stack.passthrough``, the input passed
  through unchanged when its own log loss beat the regression's — and every candidate's score,
  the OOF -> final-model column mapping) and ``baseline_<name>.npz`` (the refitted baselines as arrays): what
  ``scripts/package_kaggle.py`` ships beside the model and ``kaggle.predict_csv`` applies;
* ``metrics.json`` and ``manifest.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.baselines import baseline_options, fit_baseline
from arena_distill.config import hydra_app
from arena_distill.data.tableio import load_table
from arena_distill.io import (
    StageInputError,
    StageTimer,
    atomic_dir,
    read_json,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import (
    CV,
    FINAL_COLS,
    HOLDOUT,
    LOGIT_COLS,
    PROB_COLS,
    SWAP_LOGIT_COLS,
    TEST,
    TTA_PROB_COLS,
    load_run_data,
    split_ids,
)
from arena_distill.metrics import accuracy, log_loss
from arena_distill.stacking import (
    STACKER_DIR,
    CrossFit,
    build_features,
    cross_fit,
    export_baseline,
    flat_folds,
    predict_exported,
    save_stacker_dir,
    select_and_fit,
    student_spreads,
)
from arena_distill.submission import write_submission

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"
PER_FOLD_STAGES = ("distill", "teacher")  # whose oof.parquet can be the student column
STACKED = "stacked"


def _aligned(path: Path, ids: np.ndarray, what: str) -> pd.DataFrame:
    """``path``'s rows in the order of ``ids`` (exactly those ids, each once)."""
    df = pd.read_parquet(path)
    df["id"] = df["id"].astype(str)
    if df["id"].duplicated().any() or set(df["id"]) != set(ids):
        raise StageInputError(
            f"{path}: its ids are not the {len(ids)} {what} rows of the data stage "
            f"({len(df)} rows); built from other data?"
        )
    return df.set_index("id").loc[list(ids)].reset_index()


def _check_folds(df: pd.DataFrame, folds: np.ndarray, path: Path) -> None:
    if "fold" in df.columns and (df["fold"].to_numpy(dtype=np.int64) != folds).any():
        raise StageInputError(f"{path}: folds differ from folds.csv (built on other folds?)")


def _student_columns(df: pd.DataFrame | None, path) -> tuple[np.ndarray | None, np.ndarray | None]:
    if df is None:
        return None, None
    if not set(LOGIT_COLS) <= set(df.columns):
        raise StageInputError(f"{path}: needs the model's logits {list(LOGIT_COLS)}")
    swap = df[list(SWAP_LOGIT_COLS)].to_numpy() if set(SWAP_LOGIT_COLS) <= set(df.columns) else None
    return df[list(LOGIT_COLS)].to_numpy(dtype=np.float64), swap


def _table(ids, probs, tta, labels=None, folds=None) -> pd.DataFrame:
    df = pd.DataFrame({"id": list(ids)})
    if folds is not None:
        df["fold"] = np.asarray(folds, dtype=np.int64)
    if labels is not None:
        df["label"] = np.asarray(labels, dtype=np.int64)
    df[list(PROB_COLS)] = probs
    if tta is not None:
        df[list(TTA_PROB_COLS)] = tta
    return df


def _scores(labels, probs, tta) -> dict:
    out = {"log_loss": log_loss(probs, labels), "accuracy": accuracy(probs, labels)}
    if tta is not None:
        out["log_loss_tta"] = log_loss(tta, labels)
        out["accuracy_tta"] = accuracy(tta, labels)
    return out


# the settings a stack folder records; a baselines folder is checked on its own
BLOCKS = ("stages.stack", "stages.baselines", "seed", *fingerprint.DATA_SPLIT)
BASELINE_BLOCKS = ("stages.baselines", "seed", *fingerprint.DATA_SPLIT)


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "stack")
    base_settings = config.stage(cfg, "baselines")
    seed = int(cfg.seed)
    run_data = load_run_data(cfg)
    timer = StageTimer()
    cv = run_data.rows(CV)
    cv_ids = cv["id"].astype(str).to_numpy()
    fold_of = run_data.folds.assign(id=run_data.folds["id"].astype(str)).set_index("id")["fold"]
    folds = fold_of.loc[cv_ids].to_numpy(dtype=np.int64)
    labels = cv["label"].astype(int).to_numpy()
    inputs: list[Path] = list(run_data.files)
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    upstream: list[Path] = []

    # --- the OOF features: the fold students, the baselines' OOF, the length features
    student_oof = None
    if settings.student_dir is not None:
        # any per-fold stage's OOF (distill; a teacher's works too)
        folder = Path(settings.student_dir)
        manifest = folder / "manifest.json"
        stage = read_json(manifest).get("stage") if manifest.is_file() else "distill"
        if stage not in PER_FOLD_STAGES:
            raise StageInputError(f"{folder}: a {stage!r} output, expected {PER_FOLD_STAGES}")
        require_stage_output(folder, stage=stage, files=["oof.parquet"])
        accepted += fingerprint.check_files(folder, cfg, run_data.files, stage=stage)
        accepted += fingerprint.check_input(folder, cfg, fingerprint.DATA_SPLIT)
        upstream.append(folder)
        student_oof = _aligned(folder / "oof.parquet", cv_ids, "cv")
        _check_folds(student_oof, folds, folder / "oof.parquet")
        inputs.append(folder / "oof.parquet")
    base_oof = {}
    for name in settings.baselines:
        folder = require_stage_output(
            Path(settings.baselines_dir) / name, stage="baselines", files=["oof.parquet"]
        )
        accepted += fingerprint.check_files(folder, cfg, run_data.files, stage="baselines")
        accepted += fingerprint.check_input(folder, cfg, BASELINE_BLOCKS)
        upstream.append(folder)
        df = _aligned(folder / "oof.parquet", cv_ids, "cv")
        _check_folds(df, folds, folder / "oof.parquet")
        base_oof[name] = df[list(PROB_COLS)].to_numpy(dtype=np.float64)
        inputs.append(folder / "oof.parquet")
    logits, swap = _student_columns(student_oof, settings.student_dir)
    feats = build_features(
        cv, student_logits=logits, student_swap_logits=swap, baseline_probs=base_oof,
        length=settings.length,
    )  # fmt: skip
    if not feats.names:
        raise config.ConfigError("stages.stack: no features (no student, baselines or length)")
    timer.lap("features")

    # --- cross-fitted OOF, then the stacker on every OOF row
    cs = [float(c) for c in settings.cs]
    pick = dict(
        n_splits=settings.inner_splits,
        seed=seed,
        passthrough=settings.passthrough,
        inner=settings.inner_cv,
    )
    spreads = student_spreads(feats, folds)
    flat = flat_folds(spreads, settings.flat_fold_ratio)
    if flat:
        log.warning(
            "fold student(s) %s barely move (OOF log-prob spread %s vs up to %.3f): their rows "
            "are scored, not fitted on (stages.stack.flat_fold_ratio=%s)",
            flat, [round(spreads[k], 4) for k in flat], max(spreads.values()),
            settings.flat_fold_ratio,
        )  # fmt: skip
    crossed: CrossFit = cross_fit(feats, labels, folds, cs, **pick, skip_folds=flat)
    fit_rows_idx = np.flatnonzero(~np.isin(folds, flat))
    stacker, choice, scores = select_and_fit(feats, labels, fit_rows_idx, cs, **pick, groups=folds)
    c_best = stacker.c
    timer.lap("fit")
    metrics = {
        "features": feats.names,
        "c": c_best,
        "choice": choice,
        "scores": scores,
        "choice_per_fold": crossed.choices,
        "oof": _scores(labels, crossed.probs, crossed.tta_probs),
        "fold_log_loss": crossed.fold_log_loss,
        "student_spread": {str(k): v for k, v in spreads.items()},
        "flat_folds": flat,
        "swap_augmented": feats.x_swap is not None,
    }

    # --- the baselines refitted on every training row, as the arrays Kaggle gets
    holdout_ids = split_ids(run_data.folds, HOLDOUT)
    labelled = run_data.labelled
    fit_rows = labelled[~labelled["id"].astype(str).isin(holdout_ids)]
    shipped = {
        name: export_baseline(fit_baseline(name, fit_rows, **baseline_options(base_settings, seed)))
        for name in settings.baselines
    }
    timer.lap("baselines")

    def apply(rows: pd.DataFrame, preds_dir: str | None, what: str):
        ids = rows["id"].astype(str).to_numpy()
        preds = None
        if settings.student_dir is not None:
            if preds_dir is None:
                raise config.ConfigError(f"stages.stack: the final model's {what} predictions?")
            # the final model's predictions: the predict stage's, or with pipeline.final=folds
            # the ensemble stage's (the fold students' mean; logits = log mean probability)
            written = Path(preds_dir) / "manifest.json"
            by = read_json(written).get("stage") if written.is_file() else "predict"
            by = by if by in ("predict", "ensemble") else "predict"
            folder = require_stage_output(preds_dir, stage=by, files=[PREDICTIONS])
            data_files = [*run_data.files, run_data.data_dir / TEST]
            accepted.extend(fingerprint.check_files(folder, cfg, data_files, stage="predict"))
            accepted.extend(fingerprint.check_input(folder, cfg, ()))
            upstream.append(folder)
            preds = _aligned(folder / PREDICTIONS, ids, what)
            inputs.append(folder / PREDICTIONS)
        lg, sw = _student_columns(preds, preds_dir)
        probs = {n: predict_exported(a, rows) for n, a in shipped.items()}
        f = build_features(
            rows, student_logits=lg, student_swap_logits=sw, baseline_probs=probs,
            length=settings.length,
        )  # fmt: skip
        p, tta = stacker.predict(f)
        # a row the model gave no finite logits keeps what the predict stage wrote for it
        # (its fallback: the other orientation, else the prior), as kaggle.predict_csv does
        bad = ~np.isfinite(p).all(axis=1) | (
            np.zeros(len(p), bool) if tta is None else ~np.isfinite(tta).all(axis=1)
        )
        if bad.any():
            cols = [c for c in FINAL_COLS if c in preds.columns] if preds is not None else []
            if len(cols) != 3:
                raise StageInputError(f"{what}: {int(bad.sum())} rows without finite features")
            keep = preds.loc[bad, cols].to_numpy(dtype=np.float64)
            p[bad] = keep
            if tta is not None:
                tta[bad] = keep
            log.warning(
                "%s: %d rows without finite logits keep the model's fallback", what, bad.sum()
            )
        return ids, probs, (p, tta)

    out_dir = Path(settings.out_dir)
    with atomic_dir(out_dir) as tmp:
        _table(cv_ids, crossed.probs, crossed.tta_probs, labels, folds).to_parquet(
            tmp / "oof.parquet", index=False
        )
        if holdout_ids:
            rows = run_data.rows(HOLDOUT)
            ids, base_probs, (p, tta) = apply(rows, settings.holdout_dir, "holdout")
            y = rows["label"].astype(int).to_numpy()
            _table(ids, p, tta, y).to_parquet(tmp / "holdout.parquet", index=False)
            metrics["holdout"] = _scores(y, p, tta)
            drift = {}
            for name, probs in base_probs.items():
                path = Path(settings.baselines_dir) / name / "holdout.parquet"
                if path.is_file():
                    theirs = _aligned(path, ids, "holdout")[list(PROB_COLS)].to_numpy()
                    drift[name] = float(np.abs(theirs - probs).max())
            metrics["baseline_refit_max_abs_diff"] = drift
        test_path = run_data.data_dir / TEST
        if test_path.is_file():
            rows = load_table(test_path)
            ids, _, (p, tta) = apply(rows, settings.test_dir, "test")
            final = tta if tta is not None else p
            _table(ids, p, tta).to_parquet(tmp / "test_predictions.parquet", index=False)
            predict_settings = config.stage(cfg, "predict")
            write_submission(
                tmp / "submission.csv",
                ids,
                final,
                expected_ids=ids,
                clip_eps=float(predict_settings.clip_eps),
            )
            metrics["test_rows"] = int(len(ids))
        save_stacker_dir(
            tmp / STACKER_DIR,
            stacker,
            shipped,
            length=settings.length,
            student=settings.student_dir is not None,
            extra={
                "choice": choice,
                "scores": scores,
                "oof_log_loss": metrics["oof"]["log_loss"],
                "oof_log_loss_tta": metrics["oof"].get("log_loss_tta"),
            },
        )
        timer.lap("apply")
        write_json(tmp / "metrics.json", metrics)
        stamp = fingerprint.stamp(
            fingerprint.make(
                "stack",
                settings=fingerprint.settings(cfg, BLOCKS),
                files=fingerprint.file_hashes(run_data.files, cfg.run_dir),
                upstream=fingerprint.upstream_ids(upstream, cfg.run_dir),
            ),
            accepted,
        )
        write_manifest(
            tmp,
            stage="stack",
            config={"stage": config.to_dict(settings), "baselines": config.to_dict(base_settings)},
            inputs=inputs,
            outputs={
                "oof_log_loss": metrics["oof"]["log_loss"],
                "oof_log_loss_tta": metrics["oof"].get("log_loss_tta"),
                "holdout_log_loss": metrics.get("holdout", {}).get("log_loss"),
                "holdout_log_loss_tta": metrics.get("holdout", {}).get("log_loss_tta"),
                "c": c_best,
            },
            timer=timer,
            extra=stamp,
        )
    log.info(
        "%s: OOF (cross-fitted) log loss %.4f%s%s; %s; features %s",
        STACKED,
        metrics["oof"]["log_loss"],
        f" (+tta {metrics['oof']['log_loss_tta']:.4f})" if "log_loss_tta" in metrics["oof"] else "",
        f", holdout {metrics['holdout']['log_loss']:.4f}" if "holdout" in metrics else "",
        choice,
        feats.names,
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
