"""Stage ``report``: every prediction of a run scored, tabulated and plotted.

Reads ``${run_dir}/data/`` (``train.parquet`` for labels and buckets, ``folds.csv``,
``summary.json``) and whichever of these exist:

* ``teachers/<model>/oof.parquet``, ``students/<model>/oof.parquet``: per-fold models scored
  out-of-fold on the cv rows (stages ``teacher/<model>``, ``teacher/<model>+tta``, ...);
* ``baselines/<name>/oof.parquet`` (OOF) and ``baselines/<name>/holdout.parquet`` (holdout):
  stage ``baseline/<name>``;
* ``stack/{oof,holdout}.parquet`` (the stack stage): stage ``stacked`` / ``stacked+tta``;
* ``holdout/<name>/predictions.parquet`` (the predict stage with ``split=holdout``): stages
  ``<name>`` and ``<name>+tta``; folders ``fold_<k>`` are averaged into ``folds_mean``.

Writes ``stages.report.out_dir`` (default ``${run_dir}/report/``) atomically: ``metrics.json``
(the contract: ``oof_log_loss``, ``fold_log_loss``, ``holdout_log_loss``, ``n_rows``,
``prior_log_loss``, and more), ``report.md`` + ``plots/*.png``, ``report.html`` (plots
embedded) and ``manifest.json``. With ``stages.report.compare_with=<other run dir>`` also
``comparison.{json,md,html}``: both runs' stages on the same rows, with the difference.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.io import (
    MANIFEST,
    StageTimer,
    atomic_dir,
    require_stage_output,
    write_manifest,
)
from arena_distill.layout import FOLDS, TRAIN
from arena_distill.report import compare_runs, load_run, write_report

log = logging.getLogger(__name__)

# what every scored output records that the report's config vouches for (the models, the
# stage settings of each prediction step are their own; their manifest ids are checked)
BLOCKS = ("prompt", *fingerprint.DATA_SPLIT)


def scored_outputs(run_dir: Path, settings: config.ReportSettings) -> list[Path]:
    """The output folders the report reads (as ``report.load_run`` finds them), those with a
    manifest: per-fold stages, holdout predictions, the baselines."""
    folders = []
    for folder, pattern in (
        (settings.teachers_dir or run_dir / "teachers", "*/oof.parquet"),
        (settings.students_dir or run_dir / "students", "*/oof.parquet"),
        (settings.holdout_dir or run_dir / "holdout", "*/predictions.parquet"),
    ):
        folders += sorted(p.parent for p in Path(folder).glob(pattern))
    folders.append(Path(settings.baselines_dir or run_dir / "baselines"))
    return [f for f in folders if (f / MANIFEST).is_file()]


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "report")
    data_dir = require_stage_output(
        config.stage(cfg, "data").out_dir, stage="data", files=[TRAIN, FOLDS]
    )
    run_dir = Path(cfg.run_dir)
    timer = StageTimer()
    accepted = fingerprint.check_data(cfg, data_dir)
    scored = scored_outputs(run_dir, settings)
    accepted += fingerprint.check_inputs(scored, cfg, BLOCKS)
    stamp = fingerprint.stamp(
        fingerprint.make(
            "report",
            settings=fingerprint.settings(cfg, ("stages.report",)),
            files=fingerprint.file_hashes([data_dir / TRAIN, data_dir / FOLDS], run_dir),
            upstream=fingerprint.upstream_ids(scored, run_dir),
        ),
        accepted,
    )
    run_preds = load_run(
        run_dir,
        data_dir=data_dir,
        teachers_dir=settings.teachers_dir,
        students_dir=settings.students_dir,
        holdout_dir=settings.holdout_dir,
        baselines_dir=settings.baselines_dir,
        stack_dir=settings.stack_dir,
        overwrite=fingerprint.overwrite(cfg),
    )
    timer.lap("load")
    log.info("scoring %d prediction columns", len(run_preds.stages))
    out_dir = Path(settings.out_dir)
    compare_with = settings.compare_with
    plots = settings.plots
    with atomic_dir(out_dir) as tmp:
        metrics = write_report(
            run_preds,
            tmp,
            temperature_scaling=settings.temperature_scaling,
            n_len_buckets=settings.n_len_buckets,
            n_calibration_bins=settings.n_calibration_bins,
            plots=plots,
            tensorboard_dir=config.logging_settings(cfg).tensorboard_dir,
            pseudo_dir=settings.pseudo_dir,
            students_dir=settings.students_dir,
        )
        timer.lap("report")
        outputs = {
            "oof_log_loss": metrics["oof_log_loss"],
            "holdout_log_loss": metrics["holdout_log_loss"],
            "prior_log_loss": metrics["prior_log_loss"],
        }
        inputs = list(run_preds.inputs)
        if compare_with:
            other = load_run(compare_with)
            comparison = compare_runs(run_preds, other, tmp, plots=plots)
            inputs += other.inputs
            outputs["comparison"] = {
                k: {s: v["diff"] for s, v in comparison[k].items()}
                for k in ("oof_log_loss", "holdout_log_loss")
            }
            timer.lap("compare")
        write_manifest(
            tmp,
            stage="report",
            config={"stage": config.to_dict(settings)},
            inputs=inputs,
            outputs=outputs,
            timer=timer,
            extra=stamp,
        )
    for stage, ll in metrics["oof_log_loss"].items():
        log.info("OOF %-32s %.4f", stage, ll)
    for stage, ll in metrics["holdout_log_loss"].items():
        log.info("holdout %-28s %.4f", stage, ll)
    log.info(
        "class prior (OOF) %.4f; report written to %s", metrics["prior_log_loss"] or 0, out_dir
    )
    return out_dir


def compare(run_a: str | Path, run_b: str | Path, out_dir: str | Path) -> dict:
    """``comparison.{json,md,html}`` of two run folders into ``out_dir`` (no Hydra)."""
    return compare_runs(run_a, run_b, out_dir)


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
