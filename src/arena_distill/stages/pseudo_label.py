"""Stage ``pseudo_label``: the teachers' soft labels on an unlabelled pool.

Reads ``data.unlabelled`` (one or more entries in any supported layout, like ``data.extra``;
labels ignored if present), the run's data (``${run_dir}/data/``) and every teacher of
``pipeline.teachers`` (``stages.pseudo_label.teachers_dir/<teacher>/fold_<k>/adapter``).
Writes ``stages.pseudo_label.out_dir`` (default ``${run_dir}/pseudo/``; files: ``pseudo.py``).

1. The pool is read and normalised by the data stage's readers, then de-duplicated against the
   run's train rows (cv and holdout), extra rows and test rows, and against itself, matching
   A/B-swapped pairs too (``data.dedup``); ``max_rows`` keeps a seeded sample of the rest.
   Every dropped row is in ``summary.json`` with its reason.
2. Every fold adapter of every teacher predicts every row in both orientations (the inference
   engine, as the logit dump). The soft label is the mean probability over teachers, folds and
   orientations; ``confidence`` its largest probability; ``agreement`` the share of those
   predictions that pick the same class.
3. Rows are kept by ``min_confidence`` / ``min_agreement`` / ``top_fraction``
   (``pseudo.select_rows``); the manifest counts read = kept + dropped, by reason.

The pool lives here rather than in the data stage so that a new pool reruns only this stage and
the student: the data stage's output is upstream of every teacher.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.baselines import baseline_of
from arena_distill.config import hydra_app
from arena_distill.data.dedup import dedup_against
from arena_distill.data.schema import DataError
from arena_distill.data.sources import check_disjoint_ids, load_specs, spec_paths
from arena_distill.data.summary import DataSummary
from arena_distill.data.tableio import load_table, save_table
from arena_distill.distributed import is_main_process, train_device
from arena_distill.encode import encodings, prompt_config
from arena_distill.features import orientation_features, uses_features
from arena_distill.inference import predict_logits
from arena_distill.io import (
    MANIFEST,
    StageInputError,
    StageTimer,
    atomic_dir,
    read_json,
    require_stage_output,
    write_manifest,
)
from arena_distill.layout import LOGIT_COLS, SUMMARY, TEST, fold_dir, load_run_data
from arena_distill.metrics import inference_throughput
from arena_distill.models.factory import load_for_inference
from arena_distill.pseudo import (
    LOGITS,
    MEAN_FOLD,
    ROWS,
    SCORES,
    ensemble_scores,
    fold_mean_logits,
    select_rows,
)
from arena_distill.settings import DataSpec

log = logging.getLogger(__name__)

# the settings a pseudo-label folder records
BLOCKS = ("data.unlabelled", "prompt", "pipeline.teachers", "stages.pseudo_label", "stages.teacher")
POOL = "pool"  # the name of the pool in dedup reasons and events


def read_pool(cfg: DictConfig, summary: DataSummary) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``data.unlabelled``, normalised, labels removed (counted as
    ``<source>/label_ignored``); the files read."""
    dcfg = config.data(cfg)
    if not dcfg.unlabelled:
        raise StageInputError("data.unlabelled is empty: there is no pool to pseudo-label")
    # a bare path is a competition-layout file named by its stem (pandalm, hh_harmless, ...)
    specs = [
        DataSpec(path=s, format="competition", source=Path(s).stem) if isinstance(s, str) else s
        for s in dcfg.unlabelled
    ]
    pool = load_specs(specs, summary=summary, on_bad_row=dcfg.on_bad_row)
    check_disjoint_ids({"pool": pool})
    for source, n in pool.loc[pool["label"].notna(), "source"].value_counts().items():
        summary.count(str(source), "label_ignored", int(n))
    pool = pool.assign(label=pd.array([pd.NA] * len(pool), dtype="Int8"))
    return pool, [p for s in dcfg.unlabelled for p in spec_paths(s)]


def dedup_pool(
    pool: pd.DataFrame, references: dict[str, pd.DataFrame], summary: DataSummary
) -> pd.DataFrame:
    """Pool rows that duplicate no row of ``references`` (name -> table) nor an earlier pool
    row, A/B swap included; each dropped row recorded with its twin."""
    for name, table in references.items():
        pool = dedup_against(pool, table, summary=summary, reference_name=name, own_name=POOL)
    check_disjoint_ids({**references, "pool": pool})  # ids key the student's examples
    return pool


def cap_rows(pool: pd.DataFrame, max_rows: int | None, seed: int, summary: DataSummary):
    """A seeded sample of ``max_rows`` pool rows (in pool order); the rest recorded as dropped."""
    if max_rows is None or len(pool) <= max_rows:
        return pool
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(pool), dtype=bool)
    keep[rng.choice(len(pool), size=max_rows, replace=False)] = True
    for rid, src in zip(pool.loc[~keep, "id"], pool.loc[~keep, "source"], strict=True):
        summary.drop(str(src), rid, f"over stages.pseudo_label.max_rows {max_rows}")
    return pool.loc[keep].reset_index(drop=True)


def teacher_model_config(teacher_dir: Path) -> DictConfig:
    """The model config a teacher was trained with (its fold manifest's), so that any teacher of
    ``pipeline.teachers`` loads whatever the ``model`` of this invocation is."""
    manifest = read_json(fold_dir(teacher_dir, 0) / MANIFEST)
    return OmegaConf.create(manifest["config"]["model"])


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "pseudo_label")
    teacher_settings = config.stage(cfg, "teacher")
    teachers = config.pipeline(cfg).teachers
    classical = [t for t in teachers if baseline_of(t) is not None]
    if classical:
        raise config.ConfigError(
            f"pipeline.teachers: {classical} are classical teachers; pseudo_label scores the "
            "pool with trained teachers only (drop data.unlabelled or the baseline teachers)"
        )
    out_dir = Path(settings.out_dir)
    run_data = load_run_data(cfg)
    timer = StageTimer()
    summary = DataSummary()

    pool, inputs = read_pool(cfg, summary)
    n_read = len(pool)
    references = {"train": run_data.train, "extra": run_data.extra}
    test_path = run_data.data_dir / TEST
    if test_path.exists():
        references["test"] = load_table(test_path)
    pool = dedup_pool(pool, references, summary)
    n_unique = len(pool)
    pool = cap_rows(pool, settings.max_rows, settings.seed, summary)
    if pool.empty:
        raise DataError("no pool row is left after de-duplication", file=", ".join(inputs))
    timer.lap("read")
    log.info("pool: %d rows read, %d after de-duplication, %d scored", n_read, n_unique, len(pool))

    ids = pool["id"].astype(str).tolist()
    predictions: dict[tuple[str, int, bool], np.ndarray] = {}
    teacher_dirs = []
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    n_rows = n_tokens = 0
    predict_s = 0.0
    for teacher in teachers:
        teacher_dir = require_stage_output(
            Path(settings.teachers_dir) / teacher, stage="teacher", files=[MANIFEST]
        )
        teacher_dirs.append(teacher_dir)
        accepted += fingerprint.check_input(teacher_dir, cfg, fingerprint.DATA_SPLIT)
        model_cfg = teacher_model_config(teacher_dir)
        enc = features = None
        for fold in range(run_data.n_folds):
            accepted += fingerprint.check_files(
                fold_dir(teacher_dir, fold), cfg, run_data.files, stage="teacher"
            )
            model, tokenizer = load_for_inference(
                model_cfg, fold_dir(teacher_dir, fold) / "adapter", device=train_device()
            )
            if enc is None:
                prompt = prompt_config(cfg, teacher_settings.max_length)
                enc = encodings(pool, tokenizer, prompt, cfg, key=None)
                # a hybrid teacher's head input: each orientation's own features
                features = orientation_features(pool) if uses_features(model_cfg) else None
            for swapped in (False, True):
                sequences = [enc[(rid, swapped)] for rid in ids]
                t0 = time.perf_counter()
                batches = predict_logits(
                    model,
                    sequences,
                    pad_token_id=int(tokenizer.pad_token_id),
                    batch_size=settings.batch_size,
                    progress=False,
                    features=None if features is None else features[swapped],
                )
                predict_s += time.perf_counter() - t0
                n_rows += len(sequences)
                n_tokens += sum(len(s) for s in sequences)
                predictions[(teacher, fold, swapped)] = batches.logits
            del model
            timer.lap(f"{teacher}/fold_{fold}")
            log.info("teacher %s fold %d: %d pool rows, both orientations", teacher, fold, len(ids))

    stamp = fingerprint.stamp(
        fingerprint.make(
            "pseudo_label",
            settings=fingerprint.settings(cfg, BLOCKS),
            files=fingerprint.file_hashes([*inputs, *run_data.files], cfg.run_dir),
            upstream=fingerprint.upstream_ids(teacher_dirs, cfg.run_dir),
        ),
        accepted,
    )
    scores = ensemble_scores(ids, predictions)
    scores.insert(1, "source", pool["source"].astype(str).to_numpy())
    scores = select_rows(
        scores,
        min_confidence=settings.min_confidence,
        min_agreement=settings.min_agreement,
        top_fraction=settings.top_fraction,
        rank_by=settings.rank_by,
    )
    for rid, src, reason in scores.loc[~scores["kept"], ["id", "source", "reason"]].itertuples(
        index=False
    ):
        summary.drop(src, rid, reason)
    kept_ids = set(scores.loc[scores["kept"], "id"])
    kept_mask = np.array([rid in kept_ids for rid in ids])
    rows = pool.loc[kept_mask].reset_index(drop=True)
    logits = logit_table(ids, predictions, teachers, run_data.n_folds, kept_mask)

    dropped = Counter(_kind(d["reason"]) for d in summary.dropped)
    counts = {
        "read": n_read,
        "kept": len(rows),
        "scored": len(scores),
        "dropped": dict(dropped),
        "kept_by_source": rows["source"].value_counts().to_dict(),
    }
    if n_read != len(rows) + sum(dropped.values()):
        raise RuntimeError(f"pool rows not accounted for: {counts}")
    throughput = inference_throughput(n_rows, n_tokens, predict_s)
    kept_scores = scores[scores["kept"]]
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            save_table(rows, tmp / ROWS)
            logits.to_parquet(tmp / LOGITS, index=False)
            scores.to_parquet(tmp / SCORES, index=False)
            summary.write(tmp / SUMMARY)
            write_manifest(
                tmp,
                stage="pseudo_label",
                config={
                    "unlabelled": OmegaConf.to_container(cfg.data.unlabelled, resolve=True),
                    "teachers": list(teachers),
                    "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                    "stage": config.to_dict(settings),
                },
                inputs=[
                    *inputs,
                    *run_data.files,
                    *([test_path] if test_path.exists() else []),
                    *[
                        fold_dir(d, k) / MANIFEST
                        for d in teacher_dirs
                        for k in range(run_data.n_folds)
                    ],
                ],
                outputs={
                    "rows": counts,
                    "mean_confidence_kept": _mean(kept_scores["confidence"]),
                    "mean_agreement_kept": _mean(kept_scores["agreement"]),
                    "soft_label_mix_kept": {
                        c: _mean(kept_scores[c]) for c in ("p_a", "p_b", "p_tie")
                    },
                    "throughput": throughput,
                },
                timer=timer,
                extra=stamp,
            )
    log.info(
        "pseudo-labels: %d of %d pool rows kept (dropped: %s) -> %s",
        len(rows),
        n_read,
        dict(dropped),
        out_dir,
    )
    return out_dir


def _mean(values: pd.Series) -> float | None:
    return round(float(values.mean()), 6) if len(values) else None


def _kind(reason: str) -> str:
    """The kind of a drop reason, for the manifest's counts (the reason itself names the twin
    or the threshold)."""
    if reason.startswith("duplicate of "):
        where = reason.removeprefix("duplicate of ").split(" id ")[0]
        return f"duplicate_of_{where}" + ("_swapped" if reason.endswith("(swapped)") else "")
    if reason.startswith("over stages.pseudo_label.max_rows"):
        return "over_max_rows"
    if reason.startswith("confidence below"):
        return "below_min_confidence"
    if reason.startswith("agreement below"):
        return "below_min_agreement"
    if reason.startswith("outside the top"):
        return "outside_top_fraction"
    return reason  # a reader's bad-row reason (on_bad_row=drop)


def logit_table(
    ids: list[str],
    predictions: dict[tuple[str, int, bool], np.ndarray],
    teachers: list[str],
    n_folds: int,
    kept: np.ndarray,
) -> pd.DataFrame:
    """``id, teacher, fold, swapped, logit_*`` of the kept rows: every fold, and the fold mean
    (``fold`` = ``MEAN_FOLD``)."""
    kept_ids = [rid for rid, k in zip(ids, kept, strict=True) if k]
    parts = []
    for teacher in teachers:
        for swapped in (False, True):
            per_fold = [predictions[(teacher, k, swapped)][kept] for k in range(n_folds)]
            for fold, values in [*enumerate(per_fold), (MEAN_FOLD, fold_mean_logits(per_fold))]:
                part = pd.DataFrame(
                    {"id": kept_ids, "teacher": teacher, "fold": fold, "swapped": swapped}
                )
                part[list(LOGIT_COLS)] = np.asarray(values, dtype=np.float32)
                parts.append(part)
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
