"""Stage ``baselines``: class prior, length LR and TF-IDF LR on the run's rows and folds.

Reads ``${run_dir}/data/``. Writes ``stages.baselines.out_dir`` (default
``${run_dir}/baselines/``), one folder per baseline: ``oof.parquet`` (every cv id once: fitted on
fold k's training rows, predicted on fold k's validation rows; ``id, fold, label, p_a, p_b,
p_tie``), ``holdout.parquet`` (fitted on every training row, cv and extra, predicted on the
holdout rows), ``metrics.json`` and ``manifest.json``. The report shows them as
``baseline/<name>`` beside the pipeline's stages, on the same rows.
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
from arena_distill.data.folds import split_by_fold
from arena_distill.io import StageTimer, atomic_dir, write_json, write_manifest
from arena_distill.layout import HOLDOUT, PROB_COLS, load_run_data, split_ids
from arena_distill.metrics import accuracy, log_loss

log = logging.getLogger(__name__)


def _table(rows: pd.DataFrame, probs: np.ndarray, **extra) -> pd.DataFrame:
    df = pd.DataFrame({"id": rows["id"].to_numpy(), **extra, "label": rows["label"].astype(int)})
    df[list(PROB_COLS)] = probs
    return df


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "baselines")
    run_data = load_run_data(cfg)
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    built_from = fingerprint.make(
        "baselines",
        settings=fingerprint.settings(cfg, ("stages.baselines", "seed", *fingerprint.DATA_SPLIT)),
        files=fingerprint.file_hashes(run_data.files, cfg.run_dir),
    )
    options = baseline_options(settings, int(cfg.seed))
    holdout_ids = split_ids(run_data.folds, HOLDOUT)
    labelled = run_data.labelled
    out_dir = Path(settings.out_dir)
    stage_timer = StageTimer()
    scores = {}
    with atomic_dir(out_dir) as tmp:
        for name in settings.names:
            timer = StageTimer()
            parts, fold_scores = [], []
            for k in range(run_data.n_folds):
                train_rows, valid_rows = split_by_fold(labelled, run_data.folds, k)
                probs = fit_baseline(name, train_rows, **options).predict_proba(valid_rows)
                parts.append(_table(valid_rows, probs, fold=k))
                fold_scores.append(log_loss(probs, valid_rows["label"].astype(int)))
            oof = pd.concat(parts, ignore_index=True)
            y = oof["label"].to_numpy()
            metrics = {
                "oof_log_loss": log_loss(oof[list(PROB_COLS)].to_numpy(), y),
                "oof_accuracy": accuracy(oof[list(PROB_COLS)].to_numpy(), y),
                "fold_log_loss": fold_scores,
            }
            folder = tmp / name
            folder.mkdir()
            oof.to_parquet(folder / "oof.parquet", index=False)
            if holdout_ids:
                fit_rows = labelled[~labelled["id"].isin(holdout_ids)]
                hold_rows = labelled[labelled["id"].isin(holdout_ids)]
                probs = fit_baseline(name, fit_rows, **options).predict_proba(hold_rows)
                _table(hold_rows, probs).to_parquet(folder / "holdout.parquet", index=False)
                metrics["holdout_log_loss"] = log_loss(probs, hold_rows["label"].astype(int))
            timer.lap("fit_predict")
            write_json(folder / "metrics.json", metrics)
            write_manifest(
                folder,
                stage="baselines",
                config={"baseline": name, "stage": config.to_dict(settings)},
                inputs=run_data.files,
                outputs={k: v for k, v in metrics.items() if k != "fold_log_loss"},
                timer=timer,
                extra=fingerprint.stamp({**built_from, "baseline": name}, accepted),
            )
            log.info(
                "baseline %s: OOF log loss %.4f%s",
                name,
                metrics["oof_log_loss"],
                f", holdout {metrics['holdout_log_loss']:.4f}" if holdout_ids else "",
            )
            scores[name] = {k: v for k, v in metrics.items() if k != "fold_log_loss"}
            stage_timer.lap(name)
        # the stage's own manifest: every baseline's folder is complete when it exists
        write_manifest(
            tmp,
            stage="baselines",
            config={"stage": config.to_dict(settings)},
            inputs=run_data.files,
            outputs=scores,
            timer=stage_timer,
            extra=fingerprint.stamp(built_from, accepted),
        )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
