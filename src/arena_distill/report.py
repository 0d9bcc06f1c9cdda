"""Scores, tables and plots of a run's predictions: the report stage's engine.

Two kinds of score, never mixed:

* **OOF** (``section="oof"``): per-fold models (teachers, students, baselines) scored
  out-of-fold on the ``cv`` rows of ``folds.csv``; every cv id once, with its fold.
* **holdout** (``section="holdout"``): whole-data models (merged, quantized, the mean of the
  fold models, baselines) scored on the labelled ``holdout`` rows, which no model trained on.

A "stage" is one column of predictions: ``teacher/<model>``, ``teacher/<model>+tta`` (the
swap-TTA probabilities), ``student/<model>[+tta]``, ``baseline/<name>``, ``merged[+tta]``,
``quantized[+tta]``, ``folds_mean[+tta]``; with temperature scaling also ``<stage>+ts``.

``build_metrics`` turns a loaded run into the ``metrics.json`` contract, ``render_report``
into markdown + self-contained HTML, ``compare_runs`` puts two runs side by side on the same
rows. ``cost_rows`` collects what every stage output of the run cost (its manifest's timings
and throughput) for the report's "Cost" section.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from arena_distill.data.folds import read_folds
from arena_distill.data.tableio import load_table
from arena_distill.io import MANIFEST, StageInputError, read_json, require_fresh, write_json
from arena_distill.layout import LOGIT_COLS, PROB_COLS, TTA_PROB_COLS
from arena_distill.metrics import EPS, accuracy, class_prior, log_loss

CLASSES = ("A", "B", "tie")
OOF, HOLDOUT = "oof", "holdout"
TTA_SUFFIX, TS_SUFFIX = "+tta", "+ts"
FOLDS_MEAN = "folds_mean"
# the keys of metrics.json other tools read (tests pin them)
METRICS_KEYS = ("oof_log_loss", "fold_log_loss", "holdout_log_loss", "n_rows", "prior_log_loss")
N_TURN_BUCKETS = ("1", "2", "3+")
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


class ReportError(StageInputError):
    """A prediction file that cannot be scored as it is (wrong ids, folds or labels)."""


# --------------------------------------------------------------------------- predictions


@dataclass
class StagePredictions:
    """One stage's probabilities on its rows, in the order of ``ids``."""

    name: str
    section: str  # OOF | HOLDOUT
    ids: np.ndarray  # str
    labels: np.ndarray  # int 0/1/2
    probs: np.ndarray  # (N, 3)
    folds: np.ndarray | None = None  # OOF: the validation fold of each row
    logits: np.ndarray | None = None  # what temperature scaling rescales (logits or log-probs)
    source: str | None = None  # the file it came from

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        n = len(self.ids)
        if self.probs.shape != (n, 3) or len(self.labels) != n:
            raise ValueError(
                f"{self.name}: {n} ids, probs {self.probs.shape}, {len(self.labels)} labels"
            )
        if self.folds is not None:
            self.folds = np.asarray(self.folds, dtype=np.int64)

    def subset(self, ids: Sequence[str]) -> StagePredictions:
        """The rows of ``ids`` (every one must be present), in that order."""
        pos = pd.Series(np.arange(len(self.ids)), index=self.ids)
        idx = pos.loc[list(ids)].to_numpy()
        return replace(
            self,
            ids=self.ids[idx],
            labels=self.labels[idx],
            probs=self.probs[idx],
            folds=None if self.folds is None else self.folds[idx],
            logits=None if self.logits is None else np.asarray(self.logits)[idx],
        )


def _probs_of(df: pd.DataFrame, cols: Sequence[str]) -> np.ndarray:
    return df[list(cols)].to_numpy(dtype=np.float64)


def stages_from_table(
    name: str,
    df: pd.DataFrame,
    section: str,
    labels: pd.Series,
    *,
    source: str | None = None,
) -> list[StagePredictions]:
    """``name`` (plain probabilities) and ``name+tta`` (when the table has ``tta_p_*``).

    ``labels`` maps id -> label (the data stage's truth); a ``label`` column in ``df`` must
    agree with it. OOF tables need a ``fold`` column.
    """
    ids = df["id"].astype(str).to_numpy()
    missing = [i for i in ids if i not in labels.index]
    if missing:
        raise ReportError(f"{source or name}: ids without a label in the data: {missing[:5]}")
    y = labels.loc[ids].to_numpy(dtype=np.int64)
    if "label" in df.columns:
        own = pd.to_numeric(df["label"], errors="coerce").to_numpy()
        known = ~np.isnan(own)
        if (own[known] != y[known]).any():
            raise ReportError(
                f"{source or name}: labels differ from data/train.parquet (a stale prediction file?)"
            )
    folds = None
    if section == OOF:
        if "fold" not in df.columns:
            raise ReportError(f"{source or name}: an OOF table needs a 'fold' column")
        folds = df["fold"].to_numpy(dtype=np.int64)
    has_logits = set(LOGIT_COLS) <= set(df.columns)
    if set(PROB_COLS) <= set(df.columns):
        probs = _probs_of(df, PROB_COLS)
    elif has_logits:
        probs = softmax(_probs_of(df, LOGIT_COLS), axis=1)
    else:
        raise ReportError(f"{source or name}: needs {list(PROB_COLS)} or {list(LOGIT_COLS)}")
    logits = _probs_of(df, LOGIT_COLS) if has_logits else None
    out = [StagePredictions(name, section, ids, y, probs, folds, logits, source)]
    if set(TTA_PROB_COLS) <= set(df.columns):
        tta = _probs_of(df, TTA_PROB_COLS)
        out.append(StagePredictions(name + TTA_SUFFIX, section, ids, y, tta, folds, None, source))
    return out


def mean_stage(name: str, members: Sequence[StagePredictions]) -> StagePredictions:
    """The mean of several stages' probabilities on the same ids (e.g. the fold models)."""
    first = members[0]
    probs = np.mean([m.subset(first.ids).probs for m in members], axis=0)
    return StagePredictions(name, first.section, first.ids, first.labels, probs, source="mean")


# --------------------------------------------------------------------------- scores


def per_class_log_loss(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """The mean log loss over the rows of each true class (None when a class has no rows)."""
    labels = np.asarray(labels)
    return {
        c: (log_loss(probs[labels == k], labels[labels == k]) if (labels == k).any() else None)
        for k, c in enumerate(CLASSES)
    }


def fold_log_loss(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> list[float]:
    """Log loss of each fold's rows, folds in increasing order."""
    return [log_loss(probs[folds == k], labels[folds == k]) for k in np.unique(folds)]


def prior_probs(train_labels: np.ndarray, n: int) -> np.ndarray:
    return np.tile(class_prior(train_labels), (n, 1))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict:
    """Per class: mean predicted probability, observed frequency and count in equal-width
    bins of the predicted probability; ``ece`` is the count-weighted mean |gap| over the
    classes' bins (the classwise expected calibration error)."""
    edges = np.linspace(0, 1, n_bins + 1)
    out: dict = {"edges": edges.tolist(), "classes": {}}
    gaps, total = 0.0, 0
    for k, c in enumerate(CLASSES):
        p = probs[:, k]
        hit = (labels == k).astype(np.float64)
        b = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        mean_p, freq, count = [], [], []
        for i in range(n_bins):
            m = b == i
            count.append(int(m.sum()))
            mean_p.append(float(p[m].mean()) if m.any() else None)
            freq.append(float(hit[m].mean()) if m.any() else None)
            if m.any():
                gaps += m.sum() * abs(p[m].mean() - hit[m].mean())
        total += len(p)
        out["classes"][c] = {"mean_p": mean_p, "freq": freq, "count": count}
    out["ece"] = float(gaps / total) if total else None
    return out


def scaled_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the log loss of softmax(logits / T) (searched in log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / math.exp(log_t), axis=1)[rows, labels]))

    res = minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def _ts_input(sp: StagePredictions) -> np.ndarray:
    """Logits when the stage has them, else log-probabilities (the same softmax)."""
    if sp.logits is not None:
        return np.asarray(sp.logits, dtype=np.float64)
    return np.log(np.clip(sp.probs, EPS, 1.0))


def temperature_scale(sp: StagePredictions) -> tuple[StagePredictions, dict]:
    """``<stage>+ts``: temperature scaling cross-fitted over the folds.

    For each fold k, T is fitted on the other folds' OOF rows and applied to fold k's rows,
    so the scaled score is still out-of-fold. ``temperature`` (fitted on all rows) is what a
    whole-data model would use; it is reported, never applied to anything else.
    """
    if sp.section != OOF or sp.folds is None:
        raise ValueError("temperature scaling is fitted on OOF predictions only")
    z = _ts_input(sp)
    probs = np.empty_like(sp.probs)
    fold_t = []
    for k in np.unique(sp.folds):
        test = sp.folds == k
        t = fit_temperature(z[~test], sp.labels[~test]) if (~test).any() else 1.0
        fold_t.append(t)
        probs[test] = scaled_probs(z[test], t)
    t_all = fit_temperature(z, sp.labels)
    scaled = StagePredictions(
        sp.name + TS_SUFFIX, OOF, sp.ids, sp.labels, probs, sp.folds, None, sp.source
    )
    info = {
        "temperature": t_all,
        "fold_temperatures": fold_t,
        "method": "cross-fitted: each fold scaled with T fitted on the other folds",
        "log_loss_before": log_loss(sp.probs, sp.labels),
        "log_loss": log_loss(probs, sp.labels),
        "log_loss_in_sample": log_loss(scaled_probs(z, t_all), sp.labels),
    }
    return scaled, info


# --------------------------------------------------------------------------- buckets


def _words(turns) -> int:
    return sum(len(str(t).split()) for t in (turns if turns is not None else []))


def bucket_features(train: pd.DataFrame, n_len_buckets: int = 5) -> pd.DataFrame:
    """Per id: ``len_diff`` (words of A minus words of B, all turns) and its quantile bucket,
    ``turns`` bucket (1, 2, 3+) and ``tie`` bucket (tie / non-tie). Quantile edges come from
    all the rows given (cv and holdout alike), so both sections share the buckets."""
    diff = np.array(
        [
            _words(a) - _words(b)
            for a, b in zip(train["response_a"], train["response_b"], strict=True)
        ],
        dtype=np.int64,
    )
    if len(diff) and n_len_buckets > 1:
        qs = np.unique(np.quantile(diff, np.linspace(0, 1, n_len_buckets + 1)))
    else:
        qs = np.array([diff.min(), diff.max()] if len(diff) else [0, 0])
    inner = qs[1:-1]
    idx = np.searchsorted(inner, diff, side="right")
    bounds = [-np.inf, *inner.tolist(), np.inf]
    names = [
        f"{_fmt_edge(bounds[i])} ≤ d < {_fmt_edge(bounds[i + 1])}" for i in range(len(bounds) - 1)
    ]
    len_bucket = [f"{i + 1}: {names[i]}" for i in idx]
    n_turns = train["n_turns"].to_numpy(dtype=np.int64)
    turns = np.where(n_turns <= 1, "1", np.where(n_turns == 2, "2", "3+"))
    label = pd.to_numeric(train["label"], errors="coerce").to_numpy()
    return pd.DataFrame(
        {
            "id": train["id"].astype(str).to_numpy(),
            "len_diff": diff,
            "len_diff_bucket": len_bucket,
            "turns": turns,
            "tie": np.where(label == 2, "tie", "non-tie"),
        }
    ).set_index("id")


def _fmt_edge(x: float) -> str:
    if np.isinf(x):
        return "-∞" if x < 0 else "∞"
    return f"{x:g}"


BUCKET_KINDS = {"len_diff": "len_diff_bucket", "turns": "turns", "tie": "tie"}


def bucket_log_loss(sp: StagePredictions, features: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """``{kind: {bucket: {"n": rows, "log_loss": ...}}}`` for the kinds of ``BUCKET_KINDS``;
    each kind partitions the stage's rows."""
    feats = features.loc[sp.ids]
    out: dict[str, dict[str, dict]] = {}
    for kind, col in BUCKET_KINDS.items():
        values = feats[col].to_numpy()
        out[kind] = {}
        for b in sorted(set(values), key=_bucket_order):
            m = values == b
            out[kind][str(b)] = {
                "n": int(m.sum()),
                "log_loss": log_loss(sp.probs[m], sp.labels[m]),
            }
    return out


def _bucket_order(b: str):
    head = b.split(":")[0]
    return (0, int(head)) if head.isdigit() else (1, b)


# --------------------------------------------------------------------------- a run


@dataclass
class RunPredictions:
    """Everything the report reads from one run folder."""

    run_dir: Path
    train: pd.DataFrame  # id, label, response_a, response_b, n_turns ...
    folds: pd.DataFrame  # id, split, fold
    summary: dict | None
    stages: list[StagePredictions] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    fold_models: list[str] = field(default_factory=list)  # holdout/fold_<k> folders averaged

    @property
    def labels(self) -> pd.Series:
        lab = self.train[["id", "label"]].dropna(subset=["label"])
        return pd.Series(lab["label"].astype(int).to_numpy(), index=lab["id"].astype(str))

    def ids_of(self, split: str) -> np.ndarray:
        return self.folds.loc[self.folds["split"] == split, "id"].astype(str).to_numpy()

    def section(self, section: str) -> list[StagePredictions]:
        return [s for s in self.stages if s.section == section]


def _check_oof(sp: StagePredictions, folds: pd.DataFrame) -> None:
    cv = folds[folds["split"] == "cv"]
    want = pd.Series(cv["fold"].to_numpy(), index=cv["id"].astype(str))
    if len(set(sp.ids)) != len(sp.ids):
        raise ReportError(f"{sp.source}: duplicate ids")
    got, need = set(sp.ids), set(want.index)
    if got != need:
        raise ReportError(
            f"{sp.source}: OOF ids are not the cv ids of folds.csv "
            f"({len(need - got)} missing, {len(got - need)} not cv rows); stale or partial?"
        )
    if (want.loc[sp.ids].to_numpy() != sp.folds).any():
        raise ReportError(f"{sp.source}: folds differ from folds.csv (built on other folds?)")


def _check_holdout(sp: StagePredictions, holdout_ids: np.ndarray) -> None:
    got, need = set(sp.ids), set(holdout_ids)
    if len(got) != len(sp.ids) or got != need:
        raise ReportError(
            f"{sp.source}: ids are not exactly the holdout ids of folds.csv "
            f"({len(sp.ids)} rows, {len(need - got)} holdout ids missing, "
            f"{len(got - need)} ids outside the holdout, {len(sp.ids) - len(got)} duplicates)"
        )


def _fresh(folder: Path, data_files: Sequence[Path], stage: str) -> None:
    """Refuse outputs built from other data (their manifests, or their folds', list it)."""
    for f in (folder, *sorted(folder.glob("fold_*"))):
        if (f / "manifest.json").is_file():
            require_fresh(f, data_files, stage=stage)


def _fold_index(name: str) -> int | None:
    head, _, k = name.partition("_")
    return int(k) if head == "fold" and k.isdigit() else None


def load_run(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    teachers_dir: str | Path | None = None,
    students_dir: str | Path | None = None,
    holdout_dir: str | Path | None = None,
    baselines_dir: str | Path | None = None,
) -> RunPredictions:
    """Read a run's data and every prediction file the report knows (folders default to the
    run-folder layout); checks every file's ids, folds and labels against the data stage."""
    run_dir = Path(run_dir)
    data_dir = Path(data_dir or run_dir / "data")
    train_path, folds_path = data_dir / "train.parquet", data_dir / "folds.csv"
    for p in (train_path, folds_path):
        if not p.is_file():
            raise StageInputError(f"{p} is missing; run `arena-distill data` first")
    data_files = [train_path, folds_path]
    summary_path = data_dir / "summary.json"
    run = RunPredictions(
        run_dir=run_dir,
        train=load_table(train_path),
        folds=read_folds(folds_path),
        summary=read_json(summary_path) if summary_path.is_file() else None,
        inputs=[*data_files, *([summary_path] if summary_path.is_file() else [])],
    )
    labels = run.labels
    holdout_ids = run.ids_of("holdout")

    def add(sps: list[StagePredictions], path: Path) -> None:
        for sp in sps:
            (_check_oof if sp.section == OOF else _check_holdout)(
                sp, run.folds if sp.section == OOF else holdout_ids
            )
        run.stages.extend(sps)
        run.inputs.append(path)

    for kind, folder, stage in (
        ("teacher", teachers_dir or run_dir / "teachers", "teacher"),
        ("student", students_dir or run_dir / "students", "distill"),
    ):
        for path in sorted(Path(folder).glob("*/oof.parquet")):
            _fresh(path.parent, data_files, stage)
            df = pd.read_parquet(path)
            add(
                stages_from_table(f"{kind}/{path.parent.name}", df, OOF, labels, source=str(path)),
                path,
            )
    for model_dir in sorted(
        p for p in Path(baselines_dir or run_dir / "baselines").glob("*") if p.is_dir()
    ):
        _fresh(model_dir, data_files, "baseline")
        for fname, section in (("oof.parquet", OOF), ("holdout.parquet", HOLDOUT)):
            path = model_dir / fname
            if path.is_file():
                df = pd.read_parquet(path)
                name = f"baseline/{model_dir.name}"
                add(stages_from_table(name, df, section, labels, source=str(path)), path)
    fold_members: dict[int, list[StagePredictions]] = {}
    hdir = Path(holdout_dir or run_dir / "holdout")
    for path in sorted(hdir.glob("*/predictions.parquet"), key=lambda p: p.parent.name):
        name = path.parent.name
        _fresh(path.parent, data_files, "predict")
        sps = stages_from_table(name, pd.read_parquet(path), HOLDOUT, labels, source=str(path))
        k = _fold_index(name)
        if k is None:
            add(sps, path)
        else:
            for sp in sps:
                _check_holdout(sp, holdout_ids)
            fold_members[k] = sps
            run.inputs.append(path)
            run.fold_models.append(name)
    if fold_members:
        members = [fold_members[k] for k in sorted(fold_members)]
        run.stages.append(mean_stage(FOLDS_MEAN, [m[0] for m in members]))
        if all(len(m) > 1 for m in members):
            run.stages.append(mean_stage(FOLDS_MEAN + TTA_SUFFIX, [m[1] for m in members]))
    return run


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


def _fmt_cost(x: object, digits: int = 1) -> str:
    """A cost table cell: blank where not applicable."""
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


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
    - quantization: ``merged`` against ``quantized``, holdout (negative: its cost).
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
    m["calibration"] = calib
    m["data_summary"] = run.summary
    m["cost"] = cost_rows(run.run_dir)
    return m


# --------------------------------------------------------------------------- plots


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def reliability_png(title: str, calib: Mapping) -> bytes:
    """Reliability diagram: per class, observed frequency against mean predicted probability."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
    for c, d in calib["classes"].items():
        pts = [(p, f, n) for p, f, n in zip(d["mean_p"], d["freq"], d["count"], strict=True) if n]
        if pts:
            x, y, n = map(np.asarray, zip(*pts, strict=True))
            ax.plot(x, y, marker="o", linewidth=1.2, label=c)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ece = calib.get("ece")
    ax.set_title(f"{title}\nECE {ece:.4f}" if ece is not None else title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def log_loss_png(title: str, scores: Mapping[str, float], floor: float | None) -> bytes:
    """Horizontal bars of log loss per stage, the class prior as a vertical line."""
    from matplotlib.figure import Figure

    names = list(scores)
    fig = Figure(figsize=(6, 0.35 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names[::-1], [scores[n] for n in names[::-1]], color="tab:blue")
    if floor is not None:
        ax.axvline(floor, color="tab:red", linestyle="--", label=f"class prior {floor:.4f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("log loss (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


# --------------------------------------------------------------------------- documents


@dataclass
class Doc:
    """A document as blocks, rendered to markdown (images as files) or self-contained HTML."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def image(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))

    @property
    def images(self) -> dict[str, bytes]:
        return {b[1]: b[2] for b in self.blocks if b[0] == "img"}

    def markdown(self, plots_dir: str = "plots") -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in b[2]]
                out.append("")
            elif b[0] == "img":
                out += [f"![{b[3]}]({plots_dir}/{b[1]}.png)", ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
            "th:first-child,td:first-child{text-align:left}"
            "figure{display:inline-block;margin:0.5em}</style>",
            "</head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_md_inline_html(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in b[1]) + "</tr>")
                out += [
                    "<tr>" + "".join(f"<td>{esc(_cell(c))}</td>" for c in r) + "</tr>" for r in b[2]
                ]
                out.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode(b[2]).decode("ascii")
                out.append(
                    f'<figure><img alt="{esc(b[3])}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(b[3])}</figcaption></figure>"
                )
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, out_dir: Path, stem: str) -> None:
        """``<stem>.md`` (images in ``plots/``) and ``<stem>.html`` (images embedded)."""
        out_dir = Path(out_dir)
        if self.images:
            (out_dir / "plots").mkdir(parents=True, exist_ok=True)
            for name, png in self.images.items():
                (out_dir / "plots" / f"{name}.png").write_bytes(png)
        (out_dir / f"{stem}.md").write_text(self.markdown() + "\n")
        (out_dir / f"{stem}.html").write_text(self.html() + "\n")


def _cell(c: object) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        return "–" if math.isnan(c) else f"{c:.4f}"
    return str(c)


def _md_inline_html(text: str) -> str:
    """Escape, then render markdown's `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def render_report(
    metrics: Mapping, *, title: str = "arena-distill report", plots: bool = True
) -> Doc:
    """The report document of ``build_metrics``'s output."""
    m = metrics
    doc = Doc(title)
    doc.p(
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
        "Metric: mean 3-class log loss (lower is better). Two kinds of score, never mixed: "
        "per-fold models scored out-of-fold on the cv rows (OOF), and whole-data models scored "
        "on the labelled holdout rows, which no model trained on."
    )
    for w in m.get("warnings") or []:
        doc.p(f"**Warning.** {w}")
    prior = m.get("prior_log_loss")
    doc.h("Floor to beat: the class prior")
    cp = m.get("class_prior") or {}
    doc.table(
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
    doc.p("The prior is the class mix of the cv rows' labels, predicted for every row.")

    # ---- OOF
    doc.h("Out-of-fold scores (per-fold models, cv rows)")
    oof = m["oof_log_loss"]
    if not oof:
        doc.p("No OOF predictions in this run (`teachers/<model>/oof.parquet`, ...).")
    else:
        n_folds = max(len(v) for v in m["fold_log_loss"].values())
        rows = []
        for s in oof:
            folds = m["fold_log_loss"][s]
            rows.append(
                [
                    s,
                    oof[s],
                    m["fold_log_loss_mean"][s],
                    m["fold_log_loss_std"][s],
                    *folds,
                    *([None] * (n_folds - len(folds))),
                    oof[s] - prior if prior is not None else None,
                    m["accuracy"][s],
                    m["n_rows"][s],
                ]
            )
        doc.table(
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
        doc.p(
            "OOF log loss is pooled over every cv row; fold mean/std over the folds' scores. "
            "`+tta`: the mean of the original and the mirrored A/B-swapped prediction."
        )
        doc.h("Per-class log loss (mean over the rows of each true class)", 3)
        doc.table(
            ["stage", *CLASSES],
            [[s, *(m["per_class_log_loss"][s][c] for c in CLASSES)] for s in oof],
        )
        if plots:
            doc.image(
                "oof_log_loss", log_loss_png("OOF log loss", oof, prior), "OOF log loss per stage"
            )
    if m.get("tta_gain") or m.get("holdout_tta_gain"):
        doc.h("Swap-TTA gain")
        rows = [[s, "OOF", oof[s], oof[s + TTA_SUFFIX], g] for s, g in m["tta_gain"].items()]
        ho = m["holdout_log_loss"]
        rows += [
            [s, "holdout", ho[s], ho[s + TTA_SUFFIX], g] for s, g in m["holdout_tta_gain"].items()
        ]
        doc.table(["model", "rows", "plain", "+tta", "gain (plain − tta)"], rows)
    if m.get("recipe_gains"):
        doc.h("Distillation, merge and quantization")
        doc.p(
            "Log loss before and after each step of the recipe; gain = before − after "
            "(negative: the step cost log loss)."
        )
        doc.table(
            ["step", "rows", "compared", "before", "after", "gain"],
            [
                [g["step"], g["rows"], g["compared"], g["baseline"], g["with"], g["gain"]]
                for g in m["recipe_gains"]
            ],
        )
    if m.get("temperature_scaled"):
        doc.h("Temperature scaling (OOF)")
        doc.table(
            ["stage", "T (all rows)", "T per fold", "before", "+ts (cross-fitted)", "in-sample"],
            [
                [
                    s,
                    i["temperature"],
                    ", ".join(f"{t:.3f}" for t in i["fold_temperatures"]),
                    i["log_loss_before"],
                    i["log_loss"],
                    i["log_loss_in_sample"],
                ]
                for s, i in m["temperature_scaled"].items()
            ],
        )
        doc.p(
            "`<stage>+ts` rows are cross-fitted: each fold's rows are scaled with a temperature "
            "fitted on the other folds' OOF rows, so they stay out-of-fold. The in-sample column "
            "(T fitted and scored on the same rows) is optimistic. T is reported only; it is not "
            "applied to any other prediction."
        )

    # ---- holdout
    doc.h("Holdout scores (whole-data models, same rows)")
    ho = m["holdout_log_loss"]
    if not ho:
        doc.p(
            "No holdout predictions in this run (`holdout/<name>/predictions.parquet` from "
            "`arena-distill predict stages.predict.split=holdout ...`)."
        )
    else:
        hp = m.get("holdout_prior_log_loss")
        doc.table(
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
                    s,
                    ho[s],
                    ho[s] - hp if hp is not None else None,
                    m["holdout_accuracy"][s],
                    *(m["holdout_per_class_log_loss"][s][c] for c in CLASSES),
                    m["holdout_n_rows"][s],
                ]
                for s in ho
            ],
        )
        if m.get("holdout_fold_models"):
            doc.p(
                f"`{FOLDS_MEAN}` is the mean of the probabilities of "
                f"{', '.join(m['holdout_fold_models'])} on the holdout."
            )
        if plots:
            doc.image(
                "holdout_log_loss", log_loss_png("holdout log loss", ho, hp), "holdout log loss"
            )

    # ---- buckets
    for section, label in ((OOF, "OOF"), (HOLDOUT, "holdout")):
        b = m["buckets"].get(section) or {}
        if not b:
            continue
        doc.h(f"Log loss by bucket ({label})")
        stages = list(b)
        for kind, what in (
            ("len_diff", "d = words(A) − words(B), quantile buckets"),
            ("turns", "number of turns"),
            ("tie", "true label tie vs not"),
        ):
            buckets = list(b[stages[0]][kind])
            doc.p(f"**{kind}**: {what}")
            doc.table(
                ["bucket", "rows", *stages],
                [
                    [bk, b[stages[0]][kind][bk]["n"], *(b[s][kind][bk]["log_loss"] for s in stages)]
                    for bk in buckets
                ],
            )

    # ---- calibration
    if plots and m.get("calibration"):
        doc.h("Calibration (reliability diagrams)")
        for key, c in m["calibration"].items():
            section, _, stage = key.partition(":")
            doc.image(
                f"reliability_{section}_{_slug(stage)}",
                reliability_png(f"{stage} ({section})", c),
                f"{stage} ({section})",
            )

    # ---- cost
    doc.h("Cost")
    cost = m.get("cost") or []
    if not cost:
        doc.p("No stage manifests found under the run folder.")
    else:
        cuda = any(r.get("peak_cuda_mb") is not None for r in cost)
        doc.table(
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
        doc.p(
            "From each output's `manifest.json`: wall seconds of the stage (of the fold, for "
            "`fold_<k>` folders), throughput measured on what was actually computed (training: "
            "every epoch's examples and non-pad tokens over the train phase; inference: every "
            "sequence, both orientations under swap-TTA), and the process's peak resident "
            "memory so far (a later fold's peak includes the earlier folds of the same process)."
        )

    # ---- data
    doc.h("Data")
    s = m.get("data_summary")
    if not s:
        doc.p("No `data/summary.json`.")
    else:
        srcs = sorted(set(s.get("rows_read", {})) | set(s.get("rows_kept", {})))
        doc.table(
            ["source", "rows read", "rows kept"],
            [[k, s.get("rows_read", {}).get(k, 0), s.get("rows_kept", {}).get(k, 0)] for k in srcs],
        )
        if s.get("normalisations"):
            doc.table(["normalisation", "count"], list(s["normalisations"].items()))
        dropped = s.get("dropped_by_reason") or {}
        doc.table(["dropped (source/reason)", "rows"], list(dropped.items()) or [["none", 0]])
    return doc


# --------------------------------------------------------------------------- comparison


def compare_runs(
    run_a: str | Path | RunPredictions,
    run_b: str | Path | RunPredictions,
    out_dir: str | Path | None = None,
    *,
    plots: bool = True,
) -> dict:
    """Two runs' stages side by side on the SAME rows: for every stage both runs have, the
    ids both scored, with ``diff = b − a``. Refuses runs whose folds (split, fold) differ on
    a shared id, or whose labels do. Writes ``comparison.{json,md,html}`` into ``out_dir``."""
    a = run_a if isinstance(run_a, RunPredictions) else load_run(run_a)
    b = run_b if isinstance(run_b, RunPredictions) else load_run(run_b)
    fa, fb = a.folds.set_index("id"), b.folds.set_index("id")
    shared = fa.index.intersection(fb.index)
    if not len(shared):
        raise ReportError(f"{a.run_dir} and {b.run_dir} share no ids")
    differ = (fa.loc[shared, ["split", "fold"]] != fb.loc[shared, ["split", "fold"]]).any(axis=1)
    if differ.any():
        raise ReportError(
            f"folds differ between {a.run_dir} and {b.run_dir} on {int(differ.sum())} shared ids "
            f"(e.g. {list(shared[differ.to_numpy()][:3])}); their scores are not comparable"
        )
    la, lb = a.labels, b.labels
    both = la.index.intersection(lb.index)
    if (la.loc[both] != lb.loc[both]).any():
        raise ReportError(f"labels differ between {a.run_dir} and {b.run_dir}")

    out: dict = {
        "run_a": str(a.run_dir),
        "run_b": str(b.run_dir),
        "oof_log_loss": {},
        "fold_log_loss": {},
        "holdout_log_loss": {},
    }
    for section, key in ((OOF, "oof_log_loss"), (HOLDOUT, "holdout_log_loss")):
        sa = {s.name: s for s in a.section(section)}
        sb = {s.name: s for s in b.section(section)}
        for name in [n for n in sa if n in sb]:
            ids = [i for i in sa[name].ids if i in set(sb[name].ids)]
            pa, pb = sa[name].subset(ids), sb[name].subset(ids)
            lla, llb = log_loss(pa.probs, pa.labels), log_loss(pb.probs, pb.labels)
            out[key][name] = {"a": lla, "b": llb, "diff": llb - lla, "n_rows": len(ids)}
            if section == OOF:
                fa_ = fold_log_loss(pa.probs, pa.labels, pa.folds)
                fb_ = fold_log_loss(pb.probs, pb.labels, pb.folds)
                out["fold_log_loss"][name] = {
                    "a": fa_,
                    "b": fb_,
                    "diff": [y - x for x, y in zip(fa_, fb_, strict=True)],
                }
        out.setdefault("only_in_a", []).extend(f"{section}:{n}" for n in sa if n not in sb)
        out.setdefault("only_in_b", []).extend(f"{section}:{n}" for n in sb if n not in sa)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "comparison.json", out)
        render_comparison(out, plots=plots).write(out_dir, "comparison")
    return out


def render_comparison(c: Mapping, *, plots: bool = True) -> Doc:
    doc = Doc("arena-distill comparison")
    doc.p(
        f"a = `{c['run_a']}`, b = `{c['run_b']}`. diff = b − a (negative: b is better). "
        "Each stage is scored on the ids both runs scored; folds are the same."
    )
    for key, label in (("oof_log_loss", "OOF (cv rows)"), ("holdout_log_loss", "holdout")):
        doc.h(label)
        rows = [[s, v["a"], v["b"], v["diff"], v["n_rows"]] for s, v in c[key].items()]
        doc.table(["stage", "a", "b", "diff", "rows"], rows or [["none", None, None, None, 0]])
    if c["fold_log_loss"]:
        doc.h("Per fold (diff = b − a)")
        n = max(len(v["diff"]) for v in c["fold_log_loss"].values())
        doc.table(
            ["stage", *(f"fold {k}" for k in range(n))],
            [[s, *v["diff"]] for s, v in c["fold_log_loss"].items()],
        )
    if c.get("only_in_a") or c.get("only_in_b"):
        doc.p(
            f"Only in a: {', '.join(c.get('only_in_a', [])) or 'none'}. "
            f"Only in b: {', '.join(c.get('only_in_b', [])) or 'none'}."
        )
    if plots and c["oof_log_loss"]:
        doc.image(
            "comparison_oof",
            log_loss_png(
                "OOF log loss diff (b − a)",
                {s: v["diff"] for s, v in c["oof_log_loss"].items()},
                0.0,
            ),
            "OOF log loss difference",
        )
    return doc


def write_report(
    run: RunPredictions,
    out_dir: str | Path,
    *,
    temperature_scaling: bool = False,
    n_len_buckets: int = 5,
    n_calibration_bins: int = 10,
    plots: bool = True,
) -> dict:
    """``metrics.json``, ``report.md``, ``report.html`` and ``plots/`` into ``out_dir``
    (not atomic: the stage writes into a temporary folder). Returns the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(
        run,
        temperature_scaling=temperature_scaling,
        n_len_buckets=n_len_buckets,
        n_calibration_bins=n_calibration_bins,
    )
    write_json(out_dir / "metrics.json", metrics)
    render_report(metrics, title=f"arena-distill report: {run.run_dir.name}", plots=plots).write(
        out_dir, "report"
    )
    return metrics
