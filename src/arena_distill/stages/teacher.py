"""Stage ``teacher``: one model trained per fold (LoRA, or QLoRA for 70B/72B teachers).

Reads ``${run_dir}/data/`` and, with ``init_from_pretrain``, the post-pretrain adapter of the
same model (``stages.pretrain.out_dir``; its head is dropped). Writes ``stages.teacher.out_dir``
(default ``${run_dir}/teachers/<model>/``):

- ``fold_<k>/adapter/``      the best validation checkpoint's LoRA adapter (head included)
- ``fold_<k>/oof.parquet``   one row per validation id: logits and probabilities, both orientations
- ``fold_<k>/metrics.json``  log loss (plain and swap-TTA), accuracy, prior, padding share,
  throughput (training, and the OOF prediction), history
- ``fold_<k>/manifest.json``
- ``oof.parquet``, ``metrics.json``, ``manifest.json`` once every fold is done

A killed run restarted with the same command resumes the unfinished fold from its last
checkpoint (``.work/fold_<k>/``) and skips finished folds. The distillation stage reuses
``train_fold`` with its own loss.
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

from arena_distill.config import hydra_app
from arena_distill.data.folds import split_by_fold
from arena_distill.io import (
    MANIFEST,
    StageTimer,
    atomic_dir,
    read_json,
    require_fresh,
    require_stage_output,
    write_json,
    write_manifest,
    write_parquet,
)
from arena_distill.layout import prediction_table, score_predictions
from arena_distill.losses import LossFn, cross_entropy
from arena_distill.metrics import (
    count_tokens,
    inference_throughput,
    prior_log_loss,
    training_throughput,
)
from arena_distill.models.factory import build_model, count_parameters, load_tokenizer
from arena_distill.stages.common import (
    RunData,
    barrier,
    folds_to_run,
    is_main_process,
    labelled_encodings,
    load_run_data,
    remove_dir,
    train_device,
)
from arena_distill.train import (
    TrainSettings,
    examples_for,
    fit,
    make_examples,
    predict_logits,
)

log = logging.getLogger(__name__)


def fold_dir(out_dir: Path, fold: int) -> Path:
    return out_dir / f"fold_{fold}"


def fold_done(out_dir: Path, fold: int) -> bool:
    return (fold_dir(out_dir, fold) / MANIFEST).is_file()


def pretrain_adapter(cfg: DictConfig) -> Path:
    folder = require_stage_output(cfg.stages.pretrain.out_dir, stage="pretrain", files=["adapter"])
    return folder / "adapter"


def train_fold(
    cfg: DictConfig,
    run: RunData,
    fold: int,
    enc: dict,
    *,
    stage: str,
    scfg: DictConfig,
    out_dir: Path,
    loss_fn: LossFn = cross_entropy,
    fields: Callable[[str, bool], dict] | None = None,
    init_adapter: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict:
    """Train ``cfg.model`` on fold ``fold``'s training rows, keep the best validation checkpoint,
    and write its adapter, OOF predictions and metrics to ``out_dir/fold_<fold>/``.

    Returns the fold's metrics."""
    timer = StageTimer()
    train_rows, valid_rows = split_by_fold(run.labelled, run.folds, fold)
    tr_ids, tr_y = train_rows["id"].tolist(), train_rows["label"].astype(int).tolist()
    va_ids, va_y = valid_rows["id"].tolist(), valid_rows["label"].astype(int).tolist()
    settings = TrainSettings.from_config(scfg)
    train_ex = make_examples(tr_ids, tr_y, enc, swap=settings.swap, fields=fields)
    valid_ex = examples_for(va_ids, va_y, enc)
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
    work = out_dir / ".work" / f"fold_{fold}"
    result = fit(
        model,
        tokenizer,
        train_ex,
        valid_ex,
        settings,
        work,
        loss_fn=loss_fn,
        callbacks=callbacks,
    )
    timer.lap("train")
    trainer = result.trainer
    swapped_ex = examples_for(va_ids, va_y, enc, swapped=True)
    logits = predict_logits(trainer, valid_ex)
    swapped_logits = predict_logits(trainer, swapped_ex)
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
            write_manifest(
                tmp,
                stage=stage,
                config={
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                    "stage": OmegaConf.to_container(scfg, resolve=True),
                },
                inputs=[
                    run.data_dir / "train.parquet",
                    run.data_dir / "extra.parquet",
                    run.data_dir / "folds.csv",
                ]
                + ([init_adapter] if init_adapter else []),
                outputs={
                    "fold": fold,
                    "log_loss": metrics["log_loss"],
                    "rows": len(oof),
                    "throughput": throughput,
                },
                timer=timer,
                extra={"fold": fold},
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


def combine_folds(cfg: DictConfig, out_dir: Path, n_folds: int, *, stage: str) -> Path:
    """Once every fold is done: ``oof.parquet`` (every cv id once), ``metrics.json``, manifest."""
    oof = pd.concat(
        [pd.read_parquet(fold_dir(out_dir, k) / "oof.parquet") for k in range(n_folds)],
        ignore_index=True,
    )
    if oof["id"].duplicated().any():
        raise RuntimeError(f"{out_dir}: an id appears in more than one fold's OOF predictions")
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
    write_manifest(
        out_dir,
        stage=stage,
        config={"model": OmegaConf.to_container(cfg.model, resolve=True)},
        inputs=[fold_dir(out_dir, k) / "oof.parquet" for k in range(n_folds)],
        outputs={"oof_log_loss": overall["log_loss"], "oof_log_loss_tta": overall["log_loss_tta"]},
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


def run_folds(
    cfg: DictConfig,
    *,
    stage: str,
    scfg: DictConfig,
    loss_fn: LossFn = cross_entropy,
    fields_for_fold: Callable[[int], Callable[[str, bool], dict]] | None = None,
) -> Path:
    """Train every requested fold not yet done, then combine when all folds are done."""
    out_dir = Path(scfg.out_dir)
    run = load_run_data(cfg)
    init_adapter = pretrain_adapter(cfg) if scfg.init_from_pretrain else None
    tokenizer = load_tokenizer(cfg.model)
    enc = labelled_encodings(cfg, run, tokenizer, scfg.get("max_length"))
    data_files = [
        run.data_dir / "train.parquet",
        run.data_dir / "extra.parquet",
        run.data_dir / "folds.csv",
    ]
    for fold in folds_to_run(scfg.folds, run.n_folds):
        if fold_done(out_dir, fold) and not scfg.get("overwrite", False):
            require_fresh(fold_dir(out_dir, fold), data_files, stage=stage)
            log.info("fold %d already done (%s): skipped", fold, fold_dir(out_dir, fold))
            continue
        train_fold(
            cfg,
            run,
            fold,
            enc,
            stage=stage,
            scfg=scfg,
            out_dir=out_dir,
            loss_fn=loss_fn,
            fields=fields_for_fold(fold) if fields_for_fold else None,
            init_adapter=init_adapter,
        )
    if is_main_process() and all(fold_done(out_dir, k) for k in range(run.n_folds)):
        combine_folds(cfg, out_dir, run.n_folds, stage=stage)
    return out_dir


def run(cfg: DictConfig) -> Path:
    return run_folds(cfg, stage="teacher", scfg=cfg.stages.teacher)


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
