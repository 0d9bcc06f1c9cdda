"""The ``metrics.json`` contract: ``build_metrics`` scores every stage of a loaded run (both
sections, folds, buckets, calibration, optional temperature scaling) and adds what the recipe's
steps gained (``recipe_gains``), the warnings of a failed merge (``merge_warnings``) and
``cost_rows``: what every stage output of the run cost (its manifest's timings and throughput)
for the report's "Cost" section."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from arena_distill.io import MANIFEST, read_json
from arena_distill.metrics import accuracy, class_prior, log_loss
from arena_distill.report.load import (
    CLASSES,
    FOLDS_MEAN,
    HOLDOUT,
    OOF,
    TS_SUFFIX,
    TTA_SUFFIX,
    RunPredictions,
    StagePredictions,
)
from arena_distill.report.score import (
    bucket_features,
    bucket_log_loss,
    calibration_bins,
    fold_log_loss,
    per_class_log_loss,
    prior_probs,
    temperature_scale,
)

# the keys of metrics.json other tools read (tests pin them)
METRICS_KEYS = ("oof_log_loss", "fold_log_loss", "holdout_log_loss", "n_rows", "prior_log_loss")
# the columns of a cost row (metrics.json "cost"), in the order of the report's table
COST_KEYS = (
    "output",
    "stage",
    "seconds",
    "train_examples_per_s",
    "train_tokens_per_s",
    "rows_per_s",
    "tokens_per_s",
    "peak_rss_mb",
    "peak_cuda_mb",
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- cost


def cost_rows(run_dir: str | Path) -> list[dict]:
    """One row per stage output under ``run_dir`` (every ``manifest.json``, fold folders
    included; ``logs/``, hidden folders such as ``.work*`` and the report's own output are
    skipped), sorted by folder: the keys of ``COST_KEYS``, None where a manifest has no such
    number (no timings, or no throughput of that kind)."""
    run_dir = Path(run_dir)
    rows = []
    for folder, dirs, files in os.walk(run_dir):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not (here == run_dir and d == "logs")
        )
        if MANIFEST not in files:
            continue
        try:
            manifest = read_json(here / MANIFEST)
        except (OSError, ValueError) as e:
            log.warning("cost: %s/%s unreadable (%s); skipped", here, MANIFEST, e)
            continue
        if not isinstance(manifest, dict) or manifest.get("stage") == "report":
            continue
        timings = manifest.get("timings") or {}
        outputs = manifest.get("outputs") or {}
        tp = outputs.get("throughput") if isinstance(outputs, dict) else None
        tp = tp if isinstance(tp, dict) else {}
        rows.append(
            {
                "output": here.relative_to(run_dir).as_posix(),
                "stage": manifest.get("stage"),
                "seconds": timings.get("seconds"),
                "train_examples_per_s": tp.get("train_examples_per_s"),
                "train_tokens_per_s": tp.get("train_tokens_per_s"),
                "rows_per_s": tp.get("rows_per_s"),
                "tokens_per_s": tp.get("tokens_per_s"),
                "peak_rss_mb": timings.get("peak_rss_mb"),
                "peak_cuda_mb": timings.get("peak_cuda_mb"),
            }
        )
    return sorted(rows, key=lambda r: r["output"])


# --------------------------------------------------------------------------- metrics


def _stage_scores(sp: StagePredictions) -> dict:
    return {
        "log_loss": log_loss(sp.probs, sp.labels),
        "accuracy": accuracy(sp.probs, sp.labels),
        "per_class": per_class_log_loss(sp.probs, sp.labels),
        "n": int(len(sp.ids)),
    }


def tta_gain(log_losses: Mapping[str, float]) -> dict[str, float]:
    """``{stage: plain − tta}`` for every stage scored both ways (positive: TTA helps)."""
    return {
        s: log_losses[s] - log_losses[s + TTA_SUFFIX]
        for s in log_losses
        if not s.endswith(TTA_SUFFIX) and s + TTA_SUFFIX in log_losses
    }


CE_ONLY_SUFFIX = "_ce_only"  # students/<student>_ce_only: the student without teacher terms


def recipe_gains(oof: Mapping[str, float], holdout: Mapping[str, float]) -> list[dict]:
    """What each step of the recipe bought, as ``{step, rows, compared, baseline, with, gain}``
    (gain = baseline − with: positive means the step lowered the log loss):

    - distillation: ``student/<s>_ce_only`` (kl = cos = 0, `make pipeline ABLATE=1`) against
      ``student/<s>``, OOF, plain and swap-TTA;
    - merge: the fold students' mean (``folds_mean``) against the one merged model, holdout
      (a negative gain is the cost of merging);
    - quantization: ``merged`` against ``quantized``, holdout (negative: its cost);
    - refit on every row: the fold students' mean (``folds_mean``) against the student trained
      on every cv and extra row, merged alone and quantized (``full``), holdout (positive: the
      full student beat the average of its folds there).
    """
    out: list[dict] = []
    for name in sorted(oof):
        if name.startswith("student/") and name.endswith(CE_ONLY_SUFFIX):
            distilled = name[: -len(CE_ONLY_SUFFIX)]
            for sfx in ("", TTA_SUFFIX):
                if name + sfx in oof and distilled + sfx in oof:
                    out.append(
                        {
                            "step": "distillation",
                            "rows": OOF,
                            "compared": f"{name + sfx} → {distilled + sfx}",
                            "baseline": oof[name + sfx],
                            "with": oof[distilled + sfx],
                            "gain": oof[name + sfx] - oof[distilled + sfx],
                        }
                    )
    for step, before, after in (
        ("merge", FOLDS_MEAN, "merged"),
        ("quantization", "merged", "quantized"),
        ("refit on every row", FOLDS_MEAN, "full"),
    ):
        for sfx in ("", TTA_SUFFIX):
            if before + sfx in holdout and after + sfx in holdout:
                out.append(
                    {
                        "step": step,
                        "rows": HOLDOUT,
                        "compared": f"{before + sfx} → {after + sfx}",
                        "baseline": holdout[before + sfx],
                        "with": holdout[after + sfx],
                        "gain": holdout[before + sfx] - holdout[after + sfx],
                    }
                )
    return out


MERGE_COST_WARN = 0.02  # holdout log loss the merge may cost before the report flags it


def merge_warnings(holdout: Mapping[str, float], prior: float | None) -> list[str]:
    """Flags for a merge that failed: the merged model scoring at or above the class prior
    while the fold students' mean beats it, or costing more than ``MERGE_COST_WARN``."""
    if FOLDS_MEAN not in holdout or "merged" not in holdout:
        return []
    mean, merged = holdout[FOLDS_MEAN], holdout["merged"]
    cost = merged - mean
    if prior is not None and merged >= prior > mean:
        head = (
            f"The merged model ({merged:.4f}) is no better than the class prior ({prior:.4f}) "
            f"on the holdout, while the fold students' mean scores {mean:.4f}"
        )
    elif cost > MERGE_COST_WARN:
        head = f"Merging cost {cost:.4f} of holdout log loss ({mean:.4f} → {merged:.4f})"
    else:
        return []
    return [
        head + ": the fold LoRAs moved in different directions and their average cancels out "
        "(see `fold_spread_mean` in merged/merge.json: about 1.4 for unrelated folds, 0 for "
        "equal ones). A common start (post-pretraining, `PRETRAIN=`), a lower rate or more "
        "data per fold keeps the folds together; the fold students themselves are fine."
    ]


def build_metrics(
    run: RunPredictions,
    *,
    temperature_scaling: bool = False,
    n_len_buckets: int = 5,
    n_calibration_bins: int = 10,
) -> dict:
    """The ``metrics.json`` contract (see ``METRICS_KEYS``) plus the report's other numbers."""
    labels = run.labels
    cv_ids, holdout_ids = run.ids_of("cv"), run.ids_of("holdout")
    cv_labels = labels.loc[cv_ids].to_numpy(dtype=np.int64)
    features = bucket_features(run.train, n_len_buckets)

    oof = list(run.section(OOF))
    ts_info: dict[str, dict] = {}
    if temperature_scaling:
        for sp in list(oof):
            if sp.name.endswith(TS_SUFFIX):
                continue
            scaled, info = temperature_scale(sp)
            ts_info[sp.name] = info
            oof.insert(oof.index(sp) + 1, scaled)
    holdout = run.section(HOLDOUT)

    m: dict = {
        "oof_log_loss": {},
        "fold_log_loss": {},
        "holdout_log_loss": {},
        "n_rows": {},
        "prior_log_loss": log_loss(prior_probs(cv_labels, len(cv_labels)), cv_labels)
        if len(cv_labels)
        else None,
    }
    m["holdout_prior_log_loss"] = (
        log_loss(prior_probs(cv_labels, len(holdout_ids)), labels.loc[holdout_ids].to_numpy())
        if len(holdout_ids) and len(cv_labels)
        else None
    )
    m["class_prior"] = (
        dict(zip(CLASSES, class_prior(cv_labels).tolist(), strict=True)) if len(cv_labels) else None
    )
    m.update(
        accuracy={},
        per_class_log_loss={},
        fold_log_loss_mean={},
        fold_log_loss_std={},
        holdout_accuracy={},
        holdout_per_class_log_loss={},
        holdout_n_rows={},
        calibration_error={},
        holdout_calibration_error={},
        temperature_scaled=ts_info,
        buckets={OOF: {}, HOLDOUT: {}},
        n_cv_rows=len(cv_ids),
        n_holdout_rows=len(holdout_ids),
        n_folds=int(run.folds.loc[run.folds["split"] == "cv", "fold"].nunique()),
        holdout_fold_models=list(run.fold_models),
    )
    calib: dict[str, dict] = {}
    for sp in oof:
        s = _stage_scores(sp)
        folds = fold_log_loss(sp.probs, sp.labels, sp.folds)
        m["oof_log_loss"][sp.name] = s["log_loss"]
        m["fold_log_loss"][sp.name] = folds
        m["fold_log_loss_mean"][sp.name] = float(np.mean(folds))
        m["fold_log_loss_std"][sp.name] = float(np.std(folds))
        m["n_rows"][sp.name] = s["n"]
        m["accuracy"][sp.name] = s["accuracy"]
        m["per_class_log_loss"][sp.name] = s["per_class"]
        m["buckets"][OOF][sp.name] = bucket_log_loss(sp, features)
        calib[f"{OOF}:{sp.name}"] = c = calibration_bins(sp.probs, sp.labels, n_calibration_bins)
        m["calibration_error"][sp.name] = c["ece"]
    for sp in holdout:
        s = _stage_scores(sp)
        m["holdout_log_loss"][sp.name] = s["log_loss"]
        m["holdout_n_rows"][sp.name] = s["n"]
        m["holdout_accuracy"][sp.name] = s["accuracy"]
        m["holdout_per_class_log_loss"][sp.name] = s["per_class"]
        m["buckets"][HOLDOUT][sp.name] = bucket_log_loss(sp, features)
        calib[f"{HOLDOUT}:{sp.name}"] = c = calibration_bins(
            sp.probs, sp.labels, n_calibration_bins
        )
        m["holdout_calibration_error"][sp.name] = c["ece"]
    m["tta_gain"] = tta_gain(m["oof_log_loss"])
    m["holdout_tta_gain"] = tta_gain(m["holdout_log_loss"])
    m["recipe_gains"] = recipe_gains(m["oof_log_loss"], m["holdout_log_loss"])
    m["warnings"] = merge_warnings(m["holdout_log_loss"], m["holdout_prior_log_loss"])
    m["final_model"] = final_model(m["oof_log_loss"], m["n_folds"])
    m["transformer_vs_baseline"] = transformer_vs_baseline(m["oof_log_loss"], m["holdout_log_loss"])
    m["calibration"] = calib
    m["data_summary"] = run.summary
    m["cost"] = cost_rows(run.run_dir)
    return m


# --------------------------------------------------------------------------- transformers vs baselines


def _is_transformer(name: str) -> bool:
    """A stage whose predictions come from a transformer alone: teachers, students, the merged,
    quantized and full models, the fold students' mean (not a baseline, not the stacker, which
    mixes in the baselines, nor a temperature-scaled copy)."""
    return not name.startswith(("baseline/", "stacked")) and not name.endswith(TS_SUFFIX)


def transformer_vs_baseline(
    oof: Mapping[str, float], holdout: Mapping[str, float]
) -> dict[str, dict]:
    """Per section (OOF, holdout): the best single transformer stage (swap-TTA variants
    included), the best baseline, and ``gap`` = transformer - baseline (negative: the
    transformer is better). A section without both has no entry."""
    out = {}
    for section, scores in ((OOF, oof), (HOLDOUT, holdout)):
        trans = {n: v for n, v in scores.items() if _is_transformer(n)}
        base = {n: v for n, v in scores.items() if n.startswith("baseline/")}
        if not trans or not base:
            continue
        t = min(trans, key=lambda n: trans[n])
        b = min(base, key=lambda n: base[n])
        out[section] = {
            "transformer": t,
            "transformer_log_loss": float(trans[t]),
            "baseline": b,
            "baseline_log_loss": float(base[b]),
            "gap": float(trans[t] - base[b]),
        }
    return out


# --------------------------------------------------------------------------- the final model


# finals with no out-of-fold score of their own, and why (the report says so instead of
# scoring them with another model's OOF)
NO_OOF = {
    "merge": (
        "the fold students merged into one model: every cv row trained some of its folds, so it "
        "has no out-of-fold score; only the holdout (`merged`, `quantized`) shows what the merge "
        "kept"
    ),
    "full": (
        "one more student trained on every cv and extra row (`pipeline.final=full`): no row is "
        "left out of its training, so it has no out-of-fold score; the fold students' OOF is "
        "the evidence for its recipe on (K-1)/K of the rows, not for the model itself, and only "
        "the holdout (`full`) scores it"
    ),
}


def final_model(oof: Mapping[str, float], n_folds: int) -> dict | None:
    """Which final model the run's cross-fitted evidence supports, never the holdout.

    Candidates with an out-of-fold score: ``folds`` (the fold students' averaged predictions,
    ``pipeline.final=folds``): the distilled student's OOF log loss (with swap-TTA when
    scored) bounds it, since a log loss is convex in the probabilities and the average of K
    fold models on unseen rows scores no worse than their mean (Jensen); every baseline (OOF)
    and a stacker (``stacked``, cross-fitted) when the run has one. The merge and the student
    refitted on every row (``full``) have no OOF score of their own: every cv row trained some
    of the merge's folds, and every row trained the full student, so only the holdout could
    show what they score; they are listed in ``no_oof`` with that reason, never ranked.
    The recommendation is the candidate with the lowest OOF log loss; ``folds`` costs
    ``n_folds`` forward passes per row (``make plan``: ``stages.plan`` with
    ``pipeline.final=folds``), ``full`` one more student training run."""
    students = sorted(
        n
        for n in oof
        if n.startswith("student/") and not n.endswith((TTA_SUFFIX, "+ts", "_ce_only"))
    )
    if not students:
        return None
    student = students[0]
    evidence = {"folds": oof.get(student + TTA_SUFFIX, oof[student])}
    for name, value in oof.items():
        if name.startswith("baseline/") and not name.endswith(TTA_SUFFIX):
            evidence[name] = value
    for name in ("stacked", "stacked" + TTA_SUFFIX):
        if name in oof:
            evidence[name] = oof[name]
    best = min(evidence, key=lambda k: evidence[k])
    return {
        "recommended": best,
        "evidence": {k: float(v) for k, v in sorted(evidence.items(), key=lambda kv: kv[1])},
        "student": student,
        "no_oof": dict(NO_OOF),
        "inference_passes": {"merge": 1, "folds": int(n_folds), "full": 1},
        "student_runs": {"merge": int(n_folds), "folds": int(n_folds), "full": int(n_folds) + 1},
    }
