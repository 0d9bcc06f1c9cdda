"""Reading a run folder: every prediction file the report knows, checked against the data.

Two kinds of score, never mixed:

* **OOF** (``section="oof"``): per-fold models (teachers, students, baselines) scored
  out-of-fold on the ``cv`` rows of ``folds.csv``; every cv id once, with its fold.
* **holdout** (``section="holdout"``): whole-data models (merged, quantized, the mean of the
  fold models, the student trained on every row, baselines) scored on the labelled
  ``holdout`` rows, which no model trained on.

A "stage" is one column of predictions: ``teacher/<model>``, ``teacher/<model>+tta`` (the
swap-TTA probabilities), ``student/<model>[+tta]``, ``baseline/<name>``, ``merged[+tta]``,
``quantized[+tta]``, ``folds_mean[+tta]``, ``full[+tta]`` (``pipeline.final=full``),
``stacked[+tta]`` (the stack stage: cross-fitted
OOF, and the final model stacked on the holdout); with temperature scaling also ``<stage>+ts``.

``load_run`` reads a run into ``RunPredictions`` (one ``StagePredictions`` per stage) and
refuses prediction files whose ids, folds or labels do not match the data stage's, or that
were built from other data (``ReportError`` / ``StageInputError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from arena_distill.data.folds import read_folds
from arena_distill.data.tableio import load_table
from arena_distill.io import StageInputError, read_json, require_fresh
from arena_distill.layout import LOGIT_COLS, PROB_COLS, TTA_PROB_COLS

CLASSES = ("A", "B", "tie")
OOF, HOLDOUT = "oof", "holdout"
TTA_SUFFIX, TS_SUFFIX = "+tta", "+ts"
FOLDS_MEAN = "folds_mean"
STACKED = "stacked"  # the stack stage: cross-fitted OOF, the final model stacked on the holdout


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


def _fresh(folder: Path, data_files: Sequence[Path], stage: str, overwrite: bool) -> None:
    """Refuse outputs built from other data (their manifests, or their folds', list it);
    ``overwrite`` (the report's ``overwrite=true``): log them and go on."""
    for f in (folder, *sorted(folder.glob("fold_*"))):
        if (f / "manifest.json").is_file():
            require_fresh(f, data_files, stage=stage, overwrite=overwrite)


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
    stack_dir: str | Path | None = None,
    overwrite: bool = False,
) -> RunPredictions:
    """Read a run's data and every prediction file the report knows (folders default to the
    run-folder layout); checks every file's ids, folds and labels against the data stage, and
    refuses outputs built from other data files unless ``overwrite``."""
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
            _fresh(path.parent, data_files, stage, overwrite)
            df = pd.read_parquet(path)
            add(
                stages_from_table(f"{kind}/{path.parent.name}", df, OOF, labels, source=str(path)),
                path,
            )
    for model_dir in sorted(
        p for p in Path(baselines_dir or run_dir / "baselines").glob("*") if p.is_dir()
    ):
        _fresh(model_dir, data_files, "baseline", overwrite)
        for fname, section in (("oof.parquet", OOF), ("holdout.parquet", HOLDOUT)):
            path = model_dir / fname
            if path.is_file():
                df = pd.read_parquet(path)
                name = f"baseline/{model_dir.name}"
                add(stages_from_table(name, df, section, labels, source=str(path)), path)
    sdir = Path(stack_dir or run_dir / "stack")
    if (sdir / "manifest.json").is_file():
        _fresh(sdir, data_files, "stack", overwrite)
        for fname, section in (("oof.parquet", OOF), ("holdout.parquet", HOLDOUT)):
            path = sdir / fname
            if path.is_file():
                df = pd.read_parquet(path)
                add(stages_from_table(STACKED, df, section, labels, source=str(path)), path)
    fold_members: dict[int, list[StagePredictions]] = {}
    hdir = Path(holdout_dir or run_dir / "holdout")
    for path in sorted(hdir.glob("*/predictions.parquet"), key=lambda p: p.parent.name):
        name = path.parent.name
        _fresh(path.parent, data_files, "predict", overwrite)
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
