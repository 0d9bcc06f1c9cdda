"""Stage ``dump_logits``: a teacher's logits for distillation, per fold.

Reads ``${run_dir}/data/`` and the teacher's fold adapters (``stages.teacher.out_dir``).
Writes ``stages.dump_logits.out_dir`` (default ``${run_dir}/logits/<model>/``):
``logits.parquet`` with one row per (fold, id, swapped): ``split`` (``train``: the fold's
training rows, in-sample, as the 1st place used them; ``valid``: out-of-fold, with
``out_of_fold=true``), ``logit_a, logit_b, logit_tie`` computed on the input in that
orientation (not mirrored: a swapped training row of the student is matched with the teacher's
logits on the same swapped input), plus ``manifest.json`` (its outputs include the
prediction ``throughput``: rows in every orientation, non-pad tokens, seconds of prediction).
The forward passes run on the inference engine (``arena_distill.inference``).

With ``stages.dump_logits.baseline: <name>`` (a teacher named ``baseline/<name>`` in
``pipeline.teachers``) the teacher is a classical baseline instead: for every fold fitted on
that fold's training rows (``stages.baselines``' knobs), its log-probabilities written in the
same layout, on the same rows and orientations; no model or adapter is read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from arena_distill import faults, fingerprint
from arena_distill import settings as config
from arena_distill.baselines import baseline_options, fold_logit_table
from arena_distill.config import hydra_app
from arena_distill.crossval import oof_logits
from arena_distill.data.folds import split_by_fold
from arena_distill.distributed import is_main_process, train_device
from arena_distill.encode import labelled_encodings
from arena_distill.features import row_features
from arena_distill.io import (
    StageTimer,
    atomic_dir,
    require_stage_output,
    write_manifest,
)
from arena_distill.layout import FOLDS, LOGIT_COLS, fold_dir, load_run_data
from arena_distill.metrics import count_tokens, inference_throughput
from arena_distill.models.factory import load_for_inference
from arena_distill.settings import ORIENTATIONS
from arena_distill.train import examples_for

log = logging.getLogger(__name__)

# the settings a dump records (the teacher's budget is stages.teacher.max_length)
BLOCKS = ("model", "prompt", "stages.dump_logits", "stages.teacher", *fingerprint.DATA_SPLIT)
# the settings a classical teacher's dump records (stages.dump_logits.baseline names it)
BASELINE_BLOCKS = ("stages.dump_logits", "stages.baselines", "seed", *fingerprint.DATA_SPLIT)
# what a teacher fold recorded that this stage's config vouches for (its own model)
TEACHER_BLOCKS = ("model", "prompt", "stages.teacher", *fingerprint.DATA_SPLIT)


def run_baseline(cfg: DictConfig, settings: config.DumpLogitsSettings) -> Path:
    """A classical baseline as a teacher (``stages.dump_logits.baseline``): per fold, fitted on
    the fold's training rows and scoring the rows a model teacher's fold would score, in the
    same ``logits.parquet`` layout (``baselines.fold_logit_table``)."""
    baselines = config.stage(cfg, "baselines")
    run_data = load_run_data(cfg)
    out_dir = Path(settings.out_dir)
    timer = StageTimer()
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    stamp = fingerprint.stamp(
        fingerprint.make(
            "dump_logits",
            settings=fingerprint.settings(cfg, BASELINE_BLOCKS),
            files=fingerprint.file_hashes(run_data.files, cfg.run_dir),
        ),
        accepted,
    )
    table = fold_logit_table(
        settings.baseline,
        run_data.labelled,
        run_data.folds,
        run_data.n_folds,
        in_sample=settings.in_sample,
        out_of_fold=settings.out_of_fold,
        orientations=[ORIENTATIONS[o] for o in settings.orientations],
        **baseline_options(baselines, int(cfg.seed)),
    )
    timer.lap("fit_predict")
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            table.to_parquet(tmp / "logits.parquet", index=False)
            write_manifest(
                tmp,
                stage="dump_logits",
                config={
                    "baseline": settings.baseline,
                    "baselines": config.to_dict(baselines),
                    "stage": config.to_dict(settings),
                },
                inputs=run_data.files,
                outputs={"rows": len(table), "folds": run_data.n_folds},
                timer=timer,
                extra=stamp,
            )
    log.info("%d logits of baseline %s written to %s", len(table), settings.baseline, out_dir)
    return out_dir


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "dump_logits")
    if settings.baseline is not None:
        return run_baseline(cfg, settings)
    teacher = config.stage(cfg, "teacher")
    teacher_dir = require_stage_output(teacher.out_dir, stage="teacher")
    out_dir = Path(settings.out_dir)
    run_data = load_run_data(cfg)
    timer = StageTimer()
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    # the folds' combined manifest: the folds' settings and files, the folds' ids upstream
    accepted += fingerprint.check_input(teacher_dir, cfg, TEACHER_BLOCKS)
    run_dir = cfg.run_dir
    stamp = fingerprint.stamp(
        fingerprint.make(
            "dump_logits",
            settings=fingerprint.settings(cfg, BLOCKS),
            files=fingerprint.file_hashes(run_data.files, run_dir),
            upstream=fingerprint.upstream_ids([teacher_dir], run_dir),
        ),
        accepted,
    )
    parts = []
    enc = features = None
    n_rows = n_tokens = 0
    predict_s = 0.0
    for fold in range(run_data.n_folds):
        model, tokenizer = load_for_inference(
            cfg.model, fold_dir(teacher_dir, fold) / "adapter", device=train_device()
        )
        if enc is None:
            enc = labelled_encodings(cfg, run_data, tokenizer, teacher.max_length)
            features = row_features(cfg.model, run_data.labelled)  # a hybrid head's input
        train_rows, valid_rows = split_by_fold(run_data.labelled, run_data.folds, fold)
        splits = {"train": train_rows} if settings.in_sample else {}
        if settings.out_of_fold:
            splits["valid"] = valid_rows
        for split, rows in splits.items():
            ids, labels = rows["id"].tolist(), rows["label"].astype(int).tolist()
            for orientation in settings.orientations:
                swapped = ORIENTATIONS[orientation]
                examples = examples_for(ids, labels, enc, swapped=swapped, features=features)
                t0 = time.perf_counter()
                logits = oof_logits(
                    model, examples, int(tokenizer.pad_token_id), settings.batch_size
                )
                predict_s += time.perf_counter() - t0
                rows, tokens = count_tokens(examples)
                n_rows, n_tokens = n_rows + rows, n_tokens + tokens
                part = pd.DataFrame({"fold": fold, "id": ids, "swapped": swapped, "split": split})
                part[list(LOGIT_COLS)] = logits
                parts.append(part)
        timer.lap(f"fold_{fold}")
        log.info("fold %d: logits on %s", fold, {k: len(v) for k, v in splits.items()})
    table = pd.concat(parts, ignore_index=True)
    throughput = inference_throughput(n_rows, n_tokens, predict_s)
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            table.to_parquet(tmp / "logits.parquet", index=False)
            faults.point("dump_logits.write")
            write_manifest(
                tmp,
                stage="dump_logits",
                config={
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "stage": config.to_dict(settings),
                },
                inputs=[teacher_dir / "manifest.json", run_data.data_dir / FOLDS],
                outputs={
                    "rows": len(table),
                    "folds": run_data.n_folds,
                    "throughput": throughput,
                },
                timer=timer,
                extra=stamp,
            )
    log.info("%d teacher logits written to %s", len(table), out_dir)
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
