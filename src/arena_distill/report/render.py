"""The report as markdown + self-contained HTML: ``render_report`` turns ``build_metrics``'s
output into a ``Doc``, one function per section (``SECTIONS``, in the report's order), each
returning a ``Section`` that starts with its heading and is empty when the run has nothing for
it; ``write_report`` writes ``metrics.json``, ``report.md``, ``report.html`` and ``plots/``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from arena_distill.io import read_json, write_json
from arena_distill.report.doc import Doc, Section
from arena_distill.report.load import CLASSES, FOLDS_MEAN, HOLDOUT, OOF, TTA_SUFFIX, RunPredictions
from arena_distill.report.metrics import build_metrics
from arena_distill.report.plots import log_loss_png, reliability_png


def _fmt_cost(x: object, digits: int = 1) -> str:
    """A cost table cell: blank where not applicable."""
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


# --------------------------------------------------------------------------- sections


def section_intro(m: Mapping, *, plots: bool) -> Section:
    """The preamble (no heading): when the report was made, what it scores and how."""
    s = Section()
    s.p(
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
        "Metric: mean 3-class log loss (lower is better). Two kinds of score, never mixed: "
        "per-fold models scored out-of-fold on the cv rows (OOF), and whole-data models scored "
        "on the labelled holdout rows, which no model trained on."
    )
    return s


def section_warnings(m: Mapping, *, plots: bool) -> Section:
    """The run's warnings (``merge_warnings``), before the first heading; none: empty."""
    s = Section()
    for w in m.get("warnings") or []:
        s.p(f"**Warning.** {w}")
    return s


def section_final_model(m: Mapping, *, plots: bool) -> Section:
    """The final model the OOF evidence supports (``final_model``); none: empty."""
    s = Section()
    fm = m.get("final_model")
    if not fm:
        return s
    s.h("Final model (out-of-fold evidence only)")
    passes = fm["inference_passes"]
    runs = fm.get("student_runs") or {}
    s.p(
        f"Recommended: **{fm['recommended']}**, the lowest out-of-fold log loss among the "
        f"finals that have one. `folds` is the fold students' averaged predictions "
        f"(`pipeline.final=folds`, {passes['folds']} forward passes per row against the "
        f"merge's {passes['merge']}); its score is `{fm['student']}`'s OOF, which the average "
        "of the folds does not exceed (a log loss is convex)."
    )
    s.table(["final", "OOF log loss"], [[k, f"{v:.4f}"] for k, v in fm["evidence"].items()])
    no_oof = fm.get("no_oof") or {}
    if no_oof:
        s.p(
            "Not ranked here, because they have no out-of-fold score of their own (the "
            "holdout shows them, and is never used to choose):"
        )
        s.table(
            ["final", "why it has no OOF score", "forward passes per row", "student runs"],
            [[f"`{n}`", why, passes.get(n), runs.get(n)] for n, why in no_oof.items()],
        )
    return s


def section_transformer_gap(m: Mapping, *, plots: bool) -> Section:
    """The best single transformer stage against the best baseline, per section."""
    s = Section()
    gap = m.get("transformer_vs_baseline") or {}
    if not gap:
        return s
    s.h("Best transformer stage vs best baseline")
    s.table(
        ["scored on", "best transformer stage", "log loss", "best baseline", "log loss", "gap"],
        [
            [
                "OOF" if section == "oof" else section,
                f"`{g['transformer']}`",
                f"{g['transformer_log_loss']:.4f}",
                f"`{g['baseline']}`",
                f"{g['baseline_log_loss']:.4f}",
                f"{g['gap']:+.4f}",
            ]
            for section, g in gap.items()
        ],
    )
    s.p(
        "gap = transformer - baseline (negative: the transformer alone beats every baseline). "
        "The stacker is not a transformer stage: it mixes in the baselines."
    )
    return s


def section_prior(m: Mapping, *, plots: bool) -> Section:
    s = Section()
    prior = m.get("prior_log_loss")
    s.h("Floor to beat: the class prior")
    cp = m.get("class_prior") or {}
    s.table(
        ["rows", "n", "P(A)", "P(B)", "P(tie)", "prior log loss"],
        [
            ["cv (OOF)", m.get("n_cv_rows"), cp.get("A"), cp.get("B"), cp.get("tie"), prior],
            [
                "holdout",
                m.get("n_holdout_rows"),
                cp.get("A"),
                cp.get("B"),
                cp.get("tie"),
                m.get("holdout_prior_log_loss"),
            ],
        ],
    )
    s.p("The prior is the class mix of the cv rows' labels, predicted for every row.")
    return s


def section_oof(m: Mapping, *, plots: bool) -> Section:
    """OOF scores per stage and fold, per class, and their plot."""
    s = Section()
    s.h("Out-of-fold scores (per-fold models, cv rows)")
    prior = m.get("prior_log_loss")
    oof = m["oof_log_loss"]
    if not oof:
        s.p("No OOF predictions in this run (`teachers/<model>/oof.parquet`, ...).")
        return s
    n_folds = max(len(v) for v in m["fold_log_loss"].values())
    rows = []
    for st in oof:
        folds = m["fold_log_loss"][st]
        rows.append(
            [
                st,
                oof[st],
                m["fold_log_loss_mean"][st],
                m["fold_log_loss_std"][st],
                *folds,
                *([None] * (n_folds - len(folds))),
                oof[st] - prior if prior is not None else None,
                m["accuracy"][st],
                m["n_rows"][st],
            ]
        )
    s.table(
        [
            "stage",
            "OOF log loss",
            "fold mean",
            "fold std",
            *[f"fold {k}" for k in range(n_folds)],
            "vs prior",
            "accuracy",
            "rows",
        ],
        rows,
    )
    s.p(
        "OOF log loss is pooled over every cv row; fold mean/std over the folds' scores. "
        "`+tta`: the mean of the original and the mirrored A/B-swapped prediction."
    )
    s.h("Per-class log loss (mean over the rows of each true class)", 3)
    s.table(
        ["stage", *CLASSES],
        [[st, *(m["per_class_log_loss"][st][c] for c in CLASSES)] for st in oof],
    )
    if plots:
        s.image("oof_log_loss", log_loss_png("OOF log loss", oof, prior), "OOF log loss per stage")
    return s


def section_tta(m: Mapping, *, plots: bool) -> Section:
    """Plain against swap-TTA, for every model scored both ways (OOF and holdout)."""
    s = Section()
    if not (m.get("tta_gain") or m.get("holdout_tta_gain")):
        return s
    s.h("Swap-TTA gain")
    oof, ho = m["oof_log_loss"], m["holdout_log_loss"]
    rows = [[st, "OOF", oof[st], oof[st + TTA_SUFFIX], g] for st, g in m["tta_gain"].items()]
    rows += [
        [st, "holdout", ho[st], ho[st + TTA_SUFFIX], g] for st, g in m["holdout_tta_gain"].items()
    ]
    s.table(["model", "rows", "plain", "+tta", "gain (plain − tta)"], rows)
    return s


def section_gains(m: Mapping, *, plots: bool) -> Section:
    """What distillation, the merge, quantization and the refit on every row gained
    (``recipe_gains``)."""
    s = Section()
    if not m.get("recipe_gains"):
        return s
    s.h("Distillation, merge and quantization")
    s.p(
        "Log loss before and after each step of the recipe; gain = before − after "
        "(negative: the step cost log loss)."
    )
    s.table(
        ["step", "rows", "compared", "before", "after", "gain"],
        [
            [g["step"], g["rows"], g["compared"], g["baseline"], g["with"], g["gain"]]
            for g in m["recipe_gains"]
        ],
    )
    return s


def section_temperature(m: Mapping, *, plots: bool) -> Section:
    """The fitted temperatures and the scaled stages' log loss (with temperature scaling on)."""
    s = Section()
    if not m.get("temperature_scaled"):
        return s
    s.h("Temperature scaling (OOF)")
    s.table(
        ["stage", "T (all rows)", "T per fold", "before", "+ts (cross-fitted)", "in-sample"],
        [
            [
                st,
                i["temperature"],
                ", ".join(f"{t:.3f}" for t in i["fold_temperatures"]),
                i["log_loss_before"],
                i["log_loss"],
                i["log_loss_in_sample"],
            ]
            for st, i in m["temperature_scaled"].items()
        ],
    )
    s.p(
        "`<stage>+ts` rows are cross-fitted: each fold's rows are scaled with a temperature "
        "fitted on the other folds' OOF rows, so they stay out-of-fold. The in-sample column "
        "(T fitted and scored on the same rows) is optimistic. T is reported only; it is not "
        "applied to any other prediction."
    )
    return s


def section_holdout(m: Mapping, *, plots: bool) -> Section:
    """Holdout scores of the whole-data models, and their plot."""
    s = Section()
    s.h("Holdout scores (whole-data models, same rows)")
    ho = m["holdout_log_loss"]
    if not ho:
        s.p(
            "No holdout predictions in this run (`holdout/<name>/predictions.parquet` from "
            "`arena-distill predict stages.predict.split=holdout ...`)."
        )
        return s
    hp = m.get("holdout_prior_log_loss")
    s.table(
        [
            "stage",
            "log loss",
            "vs prior",
            "accuracy",
            *(f"log loss {c}" for c in CLASSES),
            "rows",
        ],
        [
            [
                st,
                ho[st],
                ho[st] - hp if hp is not None else None,
                m["holdout_accuracy"][st],
                *(m["holdout_per_class_log_loss"][st][c] for c in CLASSES),
                m["holdout_n_rows"][st],
            ]
            for st in ho
        ],
    )
    if m.get("holdout_fold_models"):
        s.p(
            f"`{FOLDS_MEAN}` is the mean of the probabilities of "
            f"{', '.join(m['holdout_fold_models'])} on the holdout."
        )
    if "full" in ho:
        s.p(
            "`full` is the student trained on every cv and extra row (`pipeline.final=full`), "
            "merged alone and quantized: the model shipped as the final one. It has no "
            "out-of-fold score; this row is its only score."
        )
    if plots:
        s.image("holdout_log_loss", log_loss_png("holdout log loss", ho, hp), "holdout log loss")
    return s


def section_buckets(m: Mapping, *, plots: bool) -> Section:
    """Log loss by length difference, number of turns and tie, OOF then holdout."""
    s = Section()
    for section, label in ((OOF, "OOF"), (HOLDOUT, "holdout")):
        b = m["buckets"].get(section) or {}
        if not b:
            continue
        s.h(f"Log loss by bucket ({label})")
        stages = list(b)
        for kind, what in (
            ("len_diff", "d = words(A) − words(B), quantile buckets"),
            ("turns", "number of turns"),
            ("tie", "true label tie vs not"),
        ):
            buckets = list(b[stages[0]][kind])
            s.p(f"**{kind}**: {what}")
            s.table(
                ["bucket", "rows", *stages],
                [
                    [
                        bk,
                        b[stages[0]][kind][bk]["n"],
                        *(b[st][kind][bk]["log_loss"] for st in stages),
                    ]
                    for bk in buckets
                ],
            )
    return s


def section_calibration(m: Mapping, *, plots: bool) -> Section:
    """A reliability diagram per stage and section (plots only)."""
    s = Section()
    if not (plots and m.get("calibration")):
        return s
    s.h("Calibration (reliability diagrams)")
    for key, c in m["calibration"].items():
        section, _, stage = key.partition(":")
        s.image(
            f"reliability_{section}_{_slug(stage)}",
            reliability_png(f"{stage} ({section})", c),
            f"{stage} ({section})",
        )
    return s


def section_cost(m: Mapping, *, plots: bool) -> Section:
    """What every stage output cost (``cost_rows``)."""
    s = Section()
    s.h("Cost")
    cost = m.get("cost") or []
    if not cost:
        s.p("No stage manifests found under the run folder.")
        return s
    cuda = any(r.get("peak_cuda_mb") is not None for r in cost)
    s.table(
        [
            "output",
            "stage",
            "seconds",
            "train examples/s",
            "train tokens/s",
            "inference rows/s",
            "tokens/s",
            "peak RSS MB",
            *(["peak CUDA MB"] if cuda else []),
        ],
        [
            [
                r["output"],
                r["stage"] or "",
                _fmt_cost(r.get("seconds")),
                _fmt_cost(r.get("train_examples_per_s")),
                _fmt_cost(r.get("train_tokens_per_s"), 0),
                _fmt_cost(r.get("rows_per_s")),
                _fmt_cost(r.get("tokens_per_s"), 0),
                _fmt_cost(r.get("peak_rss_mb")),
                *([_fmt_cost(r.get("peak_cuda_mb"))] if cuda else []),
            ]
            for r in cost
        ],
    )
    s.p(
        "From each output's `manifest.json`: wall seconds of the stage (of the fold, for "
        "`fold_<k>` folders), throughput measured on what was actually computed (training: "
        "every epoch's examples and non-pad tokens over the train phase; inference: every "
        "sequence, both orientations under swap-TTA), and the process's peak resident "
        "memory so far (a later fold's peak includes the earlier folds of the same process)."
    )
    return s


def section_data(m: Mapping, *, plots: bool) -> Section:
    """The data stage's summary: rows read and kept per source, normalisations, drops."""
    s = Section()
    s.h("Data")
    summary = m.get("data_summary")
    if not summary:
        s.p("No `data/summary.json`.")
        return s
    read, kept = summary.get("rows_read", {}), summary.get("rows_kept", {})
    s.table(
        ["source", "rows read", "rows kept"],
        [[k, read.get(k, 0), kept.get(k, 0)] for k in sorted(set(read) | set(kept))],
    )
    if summary.get("normalisations"):
        s.table(["normalisation", "count"], list(summary["normalisations"].items()))
    dropped = summary.get("dropped_by_reason") or {}
    s.table(["dropped (source/reason)", "rows"], list(dropped.items()) or [["none", 0]])
    return s


def section_pseudo_labels(m: Mapping, *, plots: bool) -> Section:
    """The pseudo_label stage's counts (pool rows read, kept, dropped by reason) and the
    students trained on them, with their scores; none: empty."""
    s = Section()
    info = m.get("pseudo_labels")
    if not info:
        return s
    s.h("Pseudo-labels")
    rows = info["rows"]
    s.p(
        f"`{info['folder']}`: {rows['kept']} of {rows['read']} pool rows kept "
        f"({rows['scored']} scored by the teachers; mean confidence of the kept rows "
        f"{info.get('mean_confidence_kept')}, mean agreement {info.get('mean_agreement_kept')})."
    )
    dropped = rows.get("dropped") or {}
    s.table(["dropped (reason)", "rows"], list(dropped.items()) or [["none", 0]])
    students = info.get("students") or []
    if students:
        oof = m.get("oof_log_loss", {})

        def score(name: str) -> str:
            value = oof.get(name)
            return f"{value:.4f}" if value is not None else "-"

        s.p(
            "Students trained on them too (teacher terms only; the holdout section scores the "
            "merged, quantized and fold-mean models of the run's student):"
        )
        s.table(
            ["student", "OOF log loss", "+swap-TTA"],
            [[f"student/{n}", score(f"student/{n}"), score(f"student/{n}+tta")] for n in students],
        )
    else:
        s.p("No student of this run was trained on them.")
    return s


# the report's sections, in order: each ``(metrics, *, plots) -> Section``
def section_training_logs(m: Mapping, *, plots: bool) -> Section:
    """Where the training stages' TensorBoard event files are (``logging.report_to``); none:
    empty."""
    s = Section()
    logs = m.get("training_logs") or {}
    if not logs.get("runs"):
        return s
    s.h("Training logs")
    s.p(
        f"TensorBoard event files of {len(logs['runs'])} training runs under "
        f"`{logs['tensorboard_dir']}` (`tensorboard --logdir {logs['tensorboard_dir']}`):"
    )
    s.table(["run", "event files"], [[r["run"], r["files"]] for r in logs["runs"]])
    return s


SECTIONS = (
    section_intro,
    section_warnings,
    section_final_model,
    section_transformer_gap,
    section_prior,
    section_oof,
    section_tta,
    section_gains,
    section_temperature,
    section_holdout,
    section_buckets,
    section_calibration,
    section_cost,
    section_training_logs,
    section_data,
    section_pseudo_labels,
)


def pseudo_labels(pseudo_dir: str | Path | None, students_dir: str | Path | None) -> dict | None:
    """The pseudo_label stage's manifest counts and the students (``students_dir/<name>``)
    whose folds were trained on its rows; None without that stage's output."""
    if not pseudo_dir or not (Path(pseudo_dir) / "manifest.json").is_file():
        return None
    folder = Path(pseudo_dir)
    outputs = read_json(folder / "manifest.json").get("outputs", {})
    rows_file = str((folder / "rows.parquet").resolve())
    students = []
    for manifest in sorted(Path(students_dir or folder).glob("*/fold_0/manifest.json")):
        extra = read_json(manifest).get("outputs", {}).get("extra_inputs", [])
        if rows_file in {str(Path(p).resolve()) for p in extra}:
            students.append(manifest.parent.parent.name)
    return {
        "folder": str(folder),
        "rows": outputs.get("rows", {}),
        "mean_confidence_kept": outputs.get("mean_confidence_kept"),
        "mean_agreement_kept": outputs.get("mean_agreement_kept"),
        "soft_label_mix_kept": outputs.get("soft_label_mix_kept"),
        "students": students,
    }


def render_report(
    metrics: Mapping, *, title: str = "arena-distill report", plots: bool = True
) -> Doc:
    """The report document of ``build_metrics``'s output: its ``SECTIONS`` in order."""
    doc = Doc(title)
    for section in SECTIONS:
        doc.extend(section(metrics, plots=plots))
    return doc


def write_report(
    run: RunPredictions,
    out_dir: str | Path,
    *,
    temperature_scaling: bool = False,
    n_len_buckets: int = 5,
    n_calibration_bins: int = 10,
    plots: bool = True,
    tensorboard_dir: str | Path | None = None,
    pseudo_dir: str | Path | None = None,
    students_dir: str | Path | None = None,
) -> dict:
    """``metrics.json``, ``report.md``, ``report.html`` and ``plots/`` into ``out_dir``
    (not atomic: the stage writes into a temporary folder). Returns the metrics.
    ``tensorboard_dir``: where the training stages wrote TensorBoard event files, if they
    did (``training_logs`` in the metrics, a "Training logs" section)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(
        run,
        temperature_scaling=temperature_scaling,
        n_len_buckets=n_len_buckets,
        n_calibration_bins=n_calibration_bins,
    )
    logs = training_logs(tensorboard_dir)
    if logs:
        metrics["training_logs"] = logs
    pseudo = pseudo_labels(pseudo_dir, students_dir)
    if pseudo:
        metrics["pseudo_labels"] = pseudo
    write_json(out_dir / "metrics.json", metrics)
    render_report(metrics, title=f"arena-distill report: {run.run_dir.name}", plots=plots).write(
        out_dir, "report"
    )
    return metrics


def training_logs(tensorboard_dir: str | Path | None) -> dict | None:
    """The TensorBoard runs under ``tensorboard_dir``: one per folder holding event files."""
    if tensorboard_dir is None or not Path(tensorboard_dir).is_dir():
        return None
    root = Path(tensorboard_dir)
    runs: dict[str, int] = {}
    for f in sorted(root.rglob("events.out.tfevents.*")):
        key = f.parent.relative_to(root).as_posix()
        runs[key] = runs.get(key, 0) + 1
    if not runs:
        return None
    return {"tensorboard_dir": str(root), "runs": [{"run": k, "files": v} for k, v in runs.items()]}
