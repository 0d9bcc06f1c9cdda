"""Fold training: one model per fold of ``folds.csv``, its out-of-fold predictions, the folds
combined. The ``teacher`` and ``distill`` stages are this with their own settings and loss.

For fold k the model trains on the fold's training rows (cv rows of the other folds plus every
extra row, with the swap augmentation of its settings) and is scored on the fold's validation
rows, in both A/B orientations (swap-TTA). Output layout under the stage's ``out_dir``:

- ``fold_<k>/adapter/``      the best validation checkpoint's LoRA adapter (head included)
- ``fold_<k>/oof.parquet``   one row per validation id (``layout.prediction_table``)
- ``fold_<k>/metrics.json``  log loss (plain and swap-TTA), accuracy, prior, padding share,
  throughput (training, and the OOF prediction), history
- ``fold_<k>/manifest.json``
- ``oof.parquet``, ``metrics.json``, ``manifest.json`` once every fold is done
- ``.work/fold_<k>/``        checkpoints while a fold trains (the resume point)

A killed run restarted with the same command resumes the unfinished fold from its last
checkpoint and skips finished folds (``overwrite`` retrains them).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback, set_seed

from arena_distill import faults, fingerprint
from arena_distill.data.folds import split_by_fold
from arena_distill.distributed import barrier, is_main_process, train_device
from arena_distill.encode import labelled_encodings
from arena_distill.features import FeatureMap, row_features
from arena_distill.inference import predict_logits
from arena_distill.io import (
    MANIFEST,
    StageTimer,
    atomic_dir,
    read_json,
    remove_dir,
    require_stage_output,
    write_json,
    write_manifest,
    write_parquet,
)
from arena_distill.layout import CV, RunData, fold_dir, prediction_table, score_predictions
from arena_distill.losses import LossFn, cross_entropy
from arena_distill.metrics import (
    count_tokens,
    inference_throughput,
    prior_log_loss,
    training_throughput,
)
from arena_distill.models.factory import build_model, count_parameters, load_tokenizer
from arena_distill.settings import TeacherSettings
from arena_distill.train import (
    example_features,
    examples_for,
    fit,
    make_examples,
    marked_work_dir,
    tracking_callbacks,
    training_config,
)

log = logging.getLogger(__name__)

FieldsFn = Callable[[str, bool], dict]


def fold_done(out_dir: Path, fold: int) -> bool:
    return (fold_dir(out_dir, fold) / MANIFEST).is_file()


def folds_to_run(spec, n_folds: int) -> list[int]:
    """``all`` or one fold index (``FOLD=k`` in the Makefile) or a list of them."""
    if spec in (None, "all"):
        return list(range(n_folds))
    folds = [int(f) for f in (spec if isinstance(spec, (list, tuple)) else [spec])]
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise ValueError(f"fold(s) {bad} out of range: the folds file has {n_folds} folds")
    return folds


def pretrain_adapter(cfg: DictConfig) -> Path:
    """The post-pretrain adapter of ``cfg.model`` (the pretrain stage's output)."""
    folder = require_stage_output(cfg.stages.pretrain.out_dir, stage="pretrain", files=["adapter"])
    return folder / "adapter"


def oof_logits(model, examples: Sequence[dict], pad_token_id: int, batch_size: int) -> np.ndarray:
    """Logits of ``examples`` (in their order) through the inference engine (with their
    ``features`` when they carry them: a hybrid head)."""
    run = predict_logits(
        model,
        [e["input_ids"] for e in examples],
        pad_token_id=pad_token_id,
        batch_size=batch_size,
        progress=False,
        features=example_features(examples),
    )
    return run.logits


def train_fold(
    cfg: DictConfig,
    run: RunData,
    fold: int,
    enc: dict,
    *,
    stage: str,
    settings: TeacherSettings,
    loss_fn: LossFn = cross_entropy,
    fields: FieldsFn | None = None,
    init_adapter: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    stamp: dict | None = None,
    extra_train: Sequence[dict] = (),
    extra_inputs: Sequence[Path] = (),
    features: FeatureMap | None = None,
) -> dict:
    """Train ``cfg.model`` on fold ``fold``'s training rows, keep the best validation checkpoint,
    and write its adapter, OOF predictions and metrics to ``<settings.out_dir>/fold_<fold>/``.
    ``stamp``: the fold's fingerprint keys for its manifest (``fingerprint.stamp``).

    ``extra_train``: more training examples (the distill stage's pseudo-labelled rows), added
    to the fold's training set only, never validated on; ``extra_inputs``: the files they came
    from (in the manifest: a fold built from other ones is not reused). ``features``: the rows'
    features by (id, swapped) for a hybrid head (``features.row_features``; None: no hybrid
    head), on every example. Returns the metrics."""
    out_dir = Path(settings.out_dir)
    timer = StageTimer()
    train_rows, valid_rows = split_by_fold(run.labelled, run.folds, fold)
    tr_ids, tr_y = train_rows["id"].tolist(), train_rows["label"].astype(int).tolist()
    va_ids, va_y = valid_rows["id"].tolist(), valid_rows["label"].astype(int).tolist()
    train_ex = make_examples(
        tr_ids, tr_y, enc, swap=settings.swap, fields=fields, features=features
    )
    train_ex += list(extra_train)
    valid_ex = examples_for(va_ids, va_y, enc, features=features)
    # the same seed for every fold: every fold's LoRA starts from the same init (1st place),
    # which is what makes averaging the fold adapters meaningful
    set_seed(settings.seed)
    model, tokenizer = build_model(
        cfg.model, train=True, init_adapter=init_adapter, device=train_device()
    )
    trainable, total = count_parameters(model)
    log.info(
        "fold %d: %d training examples (%d rows, swap=%s), %d validation rows; %d/%d params trainable",
        fold,
        len(train_ex),
        len(tr_ids),
        settings.swap,
        len(va_ids),
        trainable,
        total,
    )
    timer.lap("setup")
    # checkpoints of other inputs (a setting changed after a kill) are not resumed
    work = marked_work_dir(out_dir / ".work" / f"fold_{fold}", (stamp or {}).get("id"))
    tracking = tracking_callbacks(cfg, stage, f"fold_{fold}")
    result = fit(
        model,
        tokenizer,
        train_ex,
        valid_ex,
        settings,
        work,
        loss_fn=loss_fn,
        callbacks=[*callbacks, *tracking.callbacks],
        report_to=tracking.report_to,
        gradient_checkpointing=cfg.model.get("gradient_checkpointing", False),
    )
    timer.lap("train")
    trainer = result.trainer
    swapped_ex = examples_for(va_ids, va_y, enc, swapped=True, features=features)
    batch = int(settings.per_device_eval_batch_size)
    pad = int(tokenizer.pad_token_id)
    logits = oof_logits(trainer.model, valid_ex, pad, batch)
    swapped_logits = oof_logits(trainer.model, swapped_ex, pad, batch)
    oof = prediction_table(va_ids, logits, swapped_logits, fold=fold, label=va_y)
    timer.lap("predict")
    throughput = {
        **training_throughput(result.trained_rows, result.trained_tokens, timer.phases["train"]),
        **inference_throughput(*count_tokens(valid_ex + swapped_ex), timer.phases["predict"]),
    }
    metrics = {
        "fold": fold,
        **score_predictions(oof),
        "prior_log_loss": prior_log_loss(np.asarray(tr_y), np.asarray(va_y)),
        "train_rows": len(tr_ids),
        "train_examples": len(train_ex),
        "extra_train_examples": len(extra_train),
        "padding_share": round(result.padding_share, 4),
        "steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_eval_log_loss": trainer.state.best_metric,
        "resumed_from": result.resumed_from,
        "trainable_params": trainable,
        "total_params": total,
        "throughput": throughput,
        "history": result.log_history,
    }
    final_adapter = work / "final_adapter"
    trainer.save_model(str(final_adapter))  # every rank (ZeRO-3 gathers); the main one writes
    if is_main_process():
        with atomic_dir(fold_dir(out_dir, fold)) as tmp:
            shutil.copytree(final_adapter, tmp / "adapter")
            oof.to_parquet(tmp / "oof.parquet", index=False)
            write_json(tmp / "metrics.json", metrics)
            faults.point("crossval.fold_write")
            write_manifest(
                tmp,
                stage=stage,
                config=training_config(cfg, settings),
                inputs=run.files + ([init_adapter] if init_adapter else []) + list(extra_inputs),
                outputs={
                    "fold": fold,
                    "extra_inputs": [str(p) for p in extra_inputs],
                    "log_loss": metrics["log_loss"],
                    "rows": len(oof),
                    "throughput": throughput,
                },
                timer=timer,
                extra={"fold": fold, **(stamp or {})},
            )
        remove_dir(work)
    barrier()
    log.info(
        "fold %d: OOF log loss %.4f (swap-TTA %.4f, prior %.4f)",
        fold,
        metrics["log_loss"],
        metrics["log_loss_tta"],
        metrics["prior_log_loss"],
    )
    return metrics


def combine_folds(
    cfg: DictConfig, run: RunData, out_dir: Path, *, stage: str, stamp: dict | None = None
) -> Path:
    """Once every fold is done: ``oof.parquet`` (every cv id once), ``metrics.json``, manifest
    (``stamp``: its fingerprint keys, the folds' manifests among its upstreams)."""
    n_folds = run.n_folds
    oof = pd.concat(
        [pd.read_parquet(fold_dir(out_dir, k) / "oof.parquet") for k in range(n_folds)],
        ignore_index=True,
    )
    if oof["id"].duplicated().any():
        raise RuntimeError(f"{out_dir}: an id appears in more than one fold's OOF predictions")
    expected = set(run.rows(CV)["id"])
    if set(oof["id"]) != expected:
        missing, extra = expected - set(oof["id"]), set(oof["id"]) - expected
        raise RuntimeError(
            f"{out_dir}: the folds' OOF ids are not the cv rows of the folds file "
            f"({len(missing)} missing, e.g. {sorted(missing)[:3]}; {len(extra)} not cv rows, "
            f"e.g. {sorted(extra)[:3]}); retrain the folds with overwrite=true"
        )
    per_fold = [read_json(fold_dir(out_dir, k) / "metrics.json") for k in range(n_folds)]
    overall = score_predictions(oof)
    metrics = {
        "oof": overall,
        "folds": [{k: v for k, v in m.items() if k != "history"} for m in per_fold],
        "fold_log_loss": [m["log_loss"] for m in per_fold],
        "fold_log_loss_tta": [m["log_loss_tta"] for m in per_fold],
    }
    write_parquet(oof, out_dir / "oof.parquet")
    write_json(out_dir / "metrics.json", metrics)
    faults.point("crossval.combine")
    write_manifest(
        out_dir,
        stage=stage,
        config={"model": OmegaConf.to_container(cfg.model, resolve=True)},
        inputs=[fold_dir(out_dir, k) / "oof.parquet" for k in range(n_folds)],
        outputs={"oof_log_loss": overall["log_loss"], "oof_log_loss_tta": overall["log_loss_tta"]},
        extra=stamp,
    )
    log.info(
        "%s %s: OOF log loss %.4f (swap-TTA %.4f) over %d rows; folds %s",
        stage,
        cfg.model.name,
        overall["log_loss"],
        overall["log_loss_tta"],
        overall["rows"],
        [round(x, 4) for x in metrics["fold_log_loss"]],
    )
    return out_dir


def fold_blocks(stage: str) -> tuple[str, ...]:
    """The settings a fold of ``stage`` records (and its readers compare)."""
    extra = ("pipeline.teachers",) if stage == "distill" else ()
    return ("model", "prompt", f"stages.{stage}", *fingerprint.DATA_SPLIT, *extra)


def folds_fingerprint(
    cfg: DictConfig,
    run: RunData,
    stage: str,
    upstream: Sequence[Path],
    extra_files: Sequence[Path] = (),
) -> dict:
    """What every fold of ``stage`` is built from now: its settings, the labelled data files
    and folds (and ``extra_files``: the pseudo-labelled rows), its upstream outputs (the
    pretrain adapter, the tiny models, teacher dumps)."""
    run_dir = cfg.run_dir
    return fingerprint.make(
        stage,
        settings=fingerprint.settings(cfg, fold_blocks(stage)),
        files=fingerprint.file_hashes([*run.files, *extra_files], run_dir),
        upstream=fingerprint.upstream_ids([*upstream, *fingerprint.model_folder(cfg)], run_dir),
    )


def stale_fold(out_dir: Path, fold: int, expected: dict, run_dir: str) -> list[str]:
    """Why finished fold ``fold`` does not fit ``expected`` (its fingerprint now); [] if it does."""
    return fingerprint.output_changes(fold_dir(out_dir, fold), {**expected, "fold": fold}, run_dir)


def run_folds(
    cfg: DictConfig,
    run: RunData,
    *,
    stage: str,
    settings: TeacherSettings,
    loss_fn: LossFn = cross_entropy,
    fields_for_fold: Callable[[int], FieldsFn] | None = None,
    upstream: Sequence[Path] = (),
    accepted: Sequence[str] = (),
    extra_train: Callable[[int], list[dict]] | None = None,
    extra_inputs: Sequence[Path] = (),
) -> Path:
    """Train every requested fold not yet done, then combine when all folds are done.

    Checks its inputs first (the data stage's output; the pretrain adapter): a stale one is
    refused (``fingerprint.check_input``). A finished fold whose fingerprint differs from what
    the fold would be built from now (a setting, a data file, an upstream output changed) is
    retrained, with the changes logged; a fresh one is skipped unless ``overwrite``
    (``stages.<stage>.overwrite`` or the root ``overwrite``). ``upstream``: more outputs the
    folds are built from (the teachers' dumps), already checked by the caller, who passes the
    changes ``overwrite=true`` accepted in ``accepted``. ``extra_train(k)``: fold k's extra
    training examples (``train_fold``); their files ``extra_inputs`` are part of the folds'
    fingerprint (a fold built from other ones is stale)."""
    out_dir = Path(settings.out_dir)
    run_dir = str(cfg.run_dir)
    accepted = [*accepted, *fingerprint.check_data(cfg, run.data_dir)]
    init_adapter = pretrain_adapter(cfg) if settings.init_from_pretrain else None
    upstream = list(upstream)
    if init_adapter is not None:
        accepted += fingerprint.check_input(
            init_adapter.parent, cfg, ("model", "prompt", "stages.pretrain")
        )
        upstream.append(init_adapter.parent)
    expected = folds_fingerprint(cfg, run, stage, upstream, extra_inputs)
    retrain = settings.overwrite or fingerprint.overwrite(cfg)
    tokenizer = load_tokenizer(cfg.model)
    enc = labelled_encodings(cfg, run, tokenizer, settings.max_length)
    features = row_features(cfg.model, run.labelled)
    for fold in folds_to_run(settings.folds, run.n_folds):
        if fold_done(out_dir, fold) and not retrain:
            changes = stale_fold(out_dir, fold, expected, run_dir)
            if not changes:
                log.info("fold %d already done (%s): skipped", fold, fold_dir(out_dir, fold))
                continue
            log.warning("fold %d is stale, retrained: %s", fold, "; ".join(changes))
        if is_main_process() and (out_dir / MANIFEST).is_file():
            (out_dir / MANIFEST).unlink()  # the folds are about to change: not finished now
        train_fold(
            cfg,
            run,
            fold,
            enc,
            stage=stage,
            settings=settings,
            loss_fn=loss_fn,
            fields=fields_for_fold(fold) if fields_for_fold else None,
            init_adapter=init_adapter,
            stamp=fingerprint.stamp({**expected, "fold": fold}, accepted),
            extra_train=extra_train(fold) if extra_train else (),
            extra_inputs=extra_inputs,
            features=features,
        )
    if not is_main_process():
        return out_dir
    stale = {
        k: stale_fold(out_dir, k, expected, run_dir)
        for k in range(run.n_folds)
        if fold_done(out_dir, k)
    }
    missing = [k for k in range(run.n_folds) if k not in stale]
    if missing or any(stale.values()):
        log.info(
            "not combining the folds of %s: %s",
            out_dir,
            ", ".join(
                [f"fold {k} not done" for k in missing]
                + [f"fold {k} stale ({'; '.join(v)})" for k, v in stale.items() if v]
            ),
        )
        return out_dir
    folds = [fold_dir(out_dir, k) for k in range(run.n_folds)]
    combined = {
        **expected,
        "upstream": {**expected["upstream"], **fingerprint.upstream_ids(folds, run_dir)},
    }
    combine_folds(cfg, run, out_dir, stage=stage, stamp=fingerprint.stamp(combined))
    return out_dir
