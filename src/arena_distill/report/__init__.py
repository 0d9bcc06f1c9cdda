"""Scores, tables and plots of a run's predictions: the report stage's engine.

The modules, in the order the data flows:

* ``load``: a run folder read and checked (``load_run`` → ``RunPredictions``, one
  ``StagePredictions`` per stage; ``ReportError``), and what OOF, holdout and a stage are;
* ``score``: one stage's scores (per class, per fold, prior, calibration bins, temperature
  scaling, buckets);
* ``metrics``: ``build_metrics`` turns a loaded run into the ``metrics.json`` contract, with
  ``recipe_gains``, ``merge_warnings`` and ``cost_rows``;
* ``render``: ``render_report`` turns the metrics into markdown + self-contained HTML, one
  function per section; ``write_report`` writes both and ``metrics.json``;
* ``compare``: ``compare_runs`` puts two runs side by side on the same rows;
* ``doc`` and ``plots``: the document model (markdown / HTML) and the PNG plots.

Every public name is importable from ``arena_distill.report`` itself. No module here imports
torch or transformers (matplotlib only when a plot is drawn).
"""

from __future__ import annotations

from arena_distill.report.compare import compare_runs, render_comparison
from arena_distill.report.doc import Doc, Section
from arena_distill.report.load import (
    CLASSES,
    FOLDS_MEAN,
    HOLDOUT,
    OOF,
    TS_SUFFIX,
    TTA_SUFFIX,
    ReportError,
    RunPredictions,
    StagePredictions,
    load_run,
    mean_stage,
    stages_from_table,
)
from arena_distill.report.metrics import (
    CE_ONLY_SUFFIX,
    COST_KEYS,
    MERGE_COST_WARN,
    METRICS_KEYS,
    build_metrics,
    cost_rows,
    merge_warnings,
    recipe_gains,
    tta_gain,
)
from arena_distill.report.plots import log_loss_png, reliability_png
from arena_distill.report.render import SECTIONS, render_report, write_report
from arena_distill.report.score import (
    BUCKET_KINDS,
    N_TURN_BUCKETS,
    bucket_features,
    bucket_log_loss,
    calibration_bins,
    fit_temperature,
    fold_log_loss,
    per_class_log_loss,
    prior_probs,
    scaled_probs,
    temperature_scale,
)

__all__ = [
    "BUCKET_KINDS",
    "CE_ONLY_SUFFIX",
    "CLASSES",
    "COST_KEYS",
    "FOLDS_MEAN",
    "HOLDOUT",
    "MERGE_COST_WARN",
    "METRICS_KEYS",
    "N_TURN_BUCKETS",
    "OOF",
    "SECTIONS",
    "TS_SUFFIX",
    "TTA_SUFFIX",
    "Doc",
    "ReportError",
    "RunPredictions",
    "Section",
    "StagePredictions",
    "bucket_features",
    "bucket_log_loss",
    "build_metrics",
    "calibration_bins",
    "compare_runs",
    "cost_rows",
    "fit_temperature",
    "fold_log_loss",
    "load_run",
    "log_loss_png",
    "mean_stage",
    "merge_warnings",
    "per_class_log_loss",
    "prior_probs",
    "recipe_gains",
    "reliability_png",
    "render_comparison",
    "render_report",
    "scaled_probs",
    "stages_from_table",
    "temperature_scale",
    "tta_gain",
    "write_report",
]
