"""Stage ``full``: one more student, trained on every cv and extra row (``pipeline.final: full``).

The fold students each train on the rows of K − 1 folds (plus the extra rows) and are scored
on their own fold; this student trains on all of them (``data.folds.full_training_rows``: every
cv and extra row, never a holdout row) with the fold students' settings (``stages.distill``:
epochs, rates, batch, swap augmentation, loss weights and temperature, ``init_from_pretrain``,
the pseudo-labelled rows). Nothing is left to validate on, so it keeps the adapter of its last
step (a fold student keeps its best validation checkpoint): it has no OOF score of its own.

Its teacher targets: the teachers' dumps hold, per fold k, teacher fold k's logits on fold k's
training rows (in-sample, what fold student k learns from). A row's target here is the log of
the mean probability over the teacher folds that trained on it (K − 1 for a cv row, K for an
extra row; ``distillation.all_rows_fields``): the same in-sample kind of target, from every
teacher fold that has one instead of one of them. A teacher refitted on every row would be the
other choice; it would cost a teacher training run per teacher (70B models in the recipe) and
the dumps already hold the logits.

Reads ``${run_dir}/data/``, every teacher's dump (``stages.distill.logits_dir``), the student's
post-pretrain adapter (``stages.distill.init_from_pretrain``) and the pseudo rows
(``stages.distill.pseudo_dir``). Writes ``stages.full.out_dir`` (default ``${run_dir}/full/``):
``adapter/`` (LoRA + head, as a fold's), ``train_ids.csv`` (``id, split``: the rows trained
on), ``metrics.json`` (rows, examples, steps, losses, throughput, history) and
``manifest.json``. Checkpoints live beside it in ``.<name>.work/`` while it trains; a rerun of
the same inputs resumes from them, a finished output of the same inputs is kept
(``overwrite=true`` or ``stages.distill.overwrite=true`` retrains).

The pipeline then merges the adapter alone into a full model (``merge full``: the merge stage
with ``stages.merge.source`` this folder) and quantizes it (``quantize full``), so the full
student is predicted, scored on the holdout and shipped as the merge's model is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig
from transformers import set_seed

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.crossval import pretrain_adapter
from arena_distill.data.folds import full_training_rows
from arena_distill.distillation import (
    all_rows_fields,
    check_dumps,
    distill_loss,
    load_teacher_logits,
    pseudo_examples,
    pseudo_rows,
)
from arena_distill.distributed import train_device
from arena_distill.encode import labelled_encodings
from arena_distill.features import row_features
from arena_distill.io import StageTimer
from arena_distill.layout import load_run_data
from arena_distill.models.factory import build_model, load_tokenizer
from arena_distill.pseudo import MEAN_FOLD
from arena_distill.train import make_examples, train_and_write_adapter

log = logging.getLogger(__name__)

# the settings the full student records: the fold students' (stages.distill, the teachers)
BLOCKS = (
    "model",
    "prompt",
    "stages.distill",
    "stages.full",
    *fingerprint.DATA_SPLIT,
    "pipeline.teachers",
)
TRAIN_IDS = "train_ids.csv"


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "distill")
    out_dir = Path(config.stage(cfg, "full").out_dir)
    teachers = list(config.pipeline(cfg).teachers)
    run_data = load_run_data(cfg)
    run_dir = str(cfg.run_dir)
    timer = StageTimer()
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    logits_dir = Path(settings.logits_dir)
    dumps, dump_changes = check_dumps(cfg, teachers, logits_dir, run_data.files)
    accepted += dump_changes
    lookups = {t: load_teacher_logits(logits_dir, t) for t in teachers}
    pseudo, pseudo_changes = pseudo_rows(cfg, settings, run_data)
    accepted += pseudo_changes
    upstream = [*dumps, *([pseudo.folder] if pseudo is not None else [])]
    init_adapter = pretrain_adapter(cfg) if settings.init_from_pretrain else None
    if init_adapter is not None:
        accepted += fingerprint.check_input(
            init_adapter.parent, cfg, ("model", "prompt", "stages.pretrain")
        )
        upstream.append(init_adapter.parent)
    extra_files = pseudo.files if pseudo is not None else []
    expected = fingerprint.make(
        "full",
        settings=fingerprint.settings(cfg, BLOCKS),
        files=fingerprint.file_hashes([*run_data.files, *extra_files], run_dir),
        upstream=fingerprint.upstream_ids([*upstream, *fingerprint.model_folder(cfg)], run_dir),
    )
    retrain = settings.overwrite or fingerprint.overwrite(cfg)
    if not retrain and fingerprint.is_current_output(out_dir, expected, run_dir):
        return out_dir

    rows = full_training_rows(run_data.labelled, run_data.folds)
    ids, labels = rows["id"].astype(str).tolist(), rows["label"].astype(int).tolist()
    tokenizer = load_tokenizer(cfg.model)
    enc = labelled_encodings(cfg, run_data, tokenizer, settings.max_length)
    fields = all_rows_fields(lookups, pseudo=pseudo is not None)
    features = row_features(cfg.model, rows)  # a hybrid head's input (None otherwise)
    examples = make_examples(ids, labels, enc, swap=settings.swap, fields=fields, features=features)
    extra = []
    if pseudo is not None:
        labelled = set(run_data.labelled["id"].astype(str))
        extra = pseudo_examples(cfg, pseudo, teachers, settings, labelled)(MEAN_FOLD)
    timer.lap("examples")
    set_seed(settings.seed)  # the fold students' seed: the same LoRA init
    model, tokenizer = build_model(
        cfg.model, train=True, init_adapter=init_adapter, device=train_device()
    )
    splits = run_data.folds.set_index(run_data.folds["id"].astype(str))["split"]
    by_split = pd.Series(splits.loc[ids].to_numpy()).value_counts().to_dict()
    log.info(
        "full student %s: %d rows (%s), %d examples (swap=%s) + %d pseudo",
        cfg.model.name,
        len(ids),
        by_split,
        len(examples),
        settings.swap,
        len(extra),
    )
    timer.lap("setup")

    def write_ids(tmp: Path) -> None:
        split = splits.loc[ids].to_numpy()
        pd.DataFrame({"id": ids, "split": split}).to_csv(tmp / TRAIN_IDS, index=False)

    metrics = train_and_write_adapter(
        cfg,
        model,
        tokenizer,
        examples + extra,
        settings,
        out_dir,
        stage="full",
        stamp=fingerprint.stamp(expected, accepted),
        timer=timer,
        loss_fn=distill_loss(settings, len(teachers)),
        metrics={
            "rows": len(ids),
            "rows_by_split": {str(k): int(v) for k, v in by_split.items()},
            "examples": len(examples),
            "pseudo_examples": len(extra),
            "teachers": teachers,
            "teacher_targets": "mean of the teacher folds' in-sample logits (log mean probability)",
        },
        write_files=write_ids,
        manifest_config={"teachers": teachers},
        inputs=[
            *run_data.files,
            *[d / "logits.parquet" for d in dumps],
            *extra_files,
            *([init_adapter] if init_adapter else []),
        ],
    )
    log.info("full student: %d rows, %d steps", len(ids), metrics["steps"])
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
