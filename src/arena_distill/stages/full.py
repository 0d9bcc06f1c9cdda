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
import shutil
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
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
from arena_distill.distributed import barrier, is_main_process, train_device
from arena_distill.encode import labelled_encodings
from arena_distill.features import row_features
from arena_distill.io import (
    MANIFEST,
    StageTimer,
    atomic_dir,
    remove_dir,
    write_json,
    write_manifest,
)
from arena_distill.layout import load_run_data
from arena_distill.metrics import training_throughput
from arena_distill.models.factory import build_model, count_parameters, load_tokenizer
from arena_distill.pseudo import MEAN_FOLD
from arena_distill.train import fit, make_examples, tracking_callbacks

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
WORK_MARK = "fingerprint_id"  # in the work folder: the inputs its checkpoints were trained from


def work_dir(out_dir: Path, ident: str) -> Path:
    """The checkpoint folder beside ``out_dir``; checkpoints of other inputs are removed (a
    resume continues only the run it belongs to)."""
    work = out_dir.parent / f".{out_dir.name}.work"
    mark = work / WORK_MARK
    if is_main_process():
        if work.exists() and (not mark.is_file() or mark.read_text().strip() != ident):
            log.warning("%s holds checkpoints of other inputs: removed, training afresh", work)
            remove_dir(work)
        work.mkdir(parents=True, exist_ok=True)
        mark.write_text(ident)
    barrier()
    return work


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "distill")
    out_dir = Path(config.stage(cfg, "full").out_dir)
    teachers = list(config.pipeline(cfg).teachers)
    run_data = load_run_data(cfg)
    run_dir = str(cfg.run_dir)
    timer = StageTimer()
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    logits_dir = Path(settings.logits_dir)
    dumps, dump_changes = check_dumps(cfg, teachers, logits_dir)
    accepted += dump_changes
    keep = fingerprint.overwrite(cfg)  # overwrite=true: the checks above named what they took
    lookups = {
        t: load_teacher_logits(logits_dir, t, run_data.files, overwrite=keep) for t in teachers
    }
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
    if (out_dir / MANIFEST).is_file() and not (settings.overwrite or fingerprint.overwrite(cfg)):
        old = fingerprint.recorded(out_dir)
        name = fingerprint.label(out_dir, run_dir)
        changes = (
            ["no input fingerprint"]
            if old is None
            else fingerprint.differences(name, old, expected)
        )
        if not changes:
            log.info("%s is already trained from these inputs: kept", out_dir)
            return out_dir
        log.warning("%s is stale, retrained: %s", out_dir, "; ".join(changes))

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
    trainable, total = count_parameters(model)
    splits = run_data.folds.set_index(run_data.folds["id"].astype(str))["split"]
    by_split = pd.Series(splits.loc[ids].to_numpy()).value_counts().to_dict()
    log.info(
        "full student %s: %d rows (%s), %d examples (swap=%s) + %d pseudo; %d/%d params trainable",
        cfg.model.name,
        len(ids),
        by_split,
        len(examples),
        settings.swap,
        len(extra),
        trainable,
        total,
    )
    timer.lap("setup")
    work = work_dir(out_dir, fingerprint.manifest_id(expected))
    tracking = tracking_callbacks(cfg, "full")
    result = fit(
        model,
        tokenizer,
        examples + extra,
        None,
        settings,
        work,
        loss_fn=distill_loss(settings, len(teachers)),
        callbacks=tracking.callbacks,
        report_to=tracking.report_to,
        gradient_checkpointing=cfg.model.get("gradient_checkpointing", False),
    )
    timer.lap("train")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    throughput = training_throughput(
        result.trained_rows, result.trained_tokens, timer.phases["train"]
    )
    metrics = {
        "rows": len(ids),
        "rows_by_split": {str(k): int(v) for k, v in by_split.items()},
        "examples": len(examples),
        "pseudo_examples": len(extra),
        "teachers": teachers,
        "teacher_targets": "mean of the teacher folds' in-sample logits (log mean probability)",
        "steps": result.trainer.state.global_step,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "padding_share": round(result.padding_share, 4),
        "resumed_from": result.resumed_from,
        "trainable_params": trainable,
        "total_params": total,
        "throughput": throughput,
        "memory_plan": result.memory_plan,
        "history": result.log_history,
    }
    final_adapter = work / "final_adapter"
    result.trainer.save_model(str(final_adapter))  # every rank (ZeRO-3 gathers); main writes
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(final_adapter, tmp / "adapter")
            pd.DataFrame({"id": ids, "split": splits.loc[ids].to_numpy()}).to_csv(
                tmp / TRAIN_IDS, index=False
            )
            write_json(tmp / "metrics.json", metrics)
            write_manifest(
                tmp,
                stage="full",
                config={
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                    "stage": config.to_dict(settings),
                    "teachers": teachers,
                },
                inputs=[
                    *run_data.files,
                    *[d / "logits.parquet" for d in dumps],
                    *extra_files,
                    *([init_adapter] if init_adapter else []),
                ],
                outputs={
                    k: metrics[k] for k in ("rows", "steps", "last_logged_loss", "throughput")
                },
                timer=timer,
                extra=fingerprint.stamp(expected, accepted),
            )
        remove_dir(work)
    barrier()
    log.info(
        "full student written to %s (%d rows, %d steps, loss %s -> %s)",
        out_dir,
        len(ids),
        metrics["steps"],
        metrics["first_logged_loss"],
        metrics["last_logged_loss"],
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
