"""Stage ``pretrain``: post-pretraining on the extra preference sets (UT at full scale).

Reads ``${run_dir}/data/pretrain.parquet`` (the ``data.pretrain`` sets, de-duplicated against
train). Writes ``stages.pretrain.out_dir`` (default ``${run_dir}/pretrain/<model>/``):
``adapter/`` (LoRA + head; later stages load the LoRA part and drop the head, as the 1st place
did), ``metrics.json`` (training loss history, padding share, throughput) and
``manifest.json``. One epoch at lr 1e-5 in the recipe. Resumes from ``.work/`` checkpoints when
restarted.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import set_seed

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.tableio import load_table
from arena_distill.distributed import barrier, is_main_process, train_device
from arena_distill.encode import encodings, pretrain_key, prompt_config
from arena_distill.features import row_features
from arena_distill.io import (
    StageInputError,
    StageTimer,
    atomic_dir,
    remove_dir,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import PRETRAIN
from arena_distill.metrics import training_throughput
from arena_distill.models.factory import build_model, count_parameters, load_tokenizer
from arena_distill.train import fit, make_examples, tracking_callbacks

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "pretrain")
    out_dir = Path(settings.out_dir)
    data_dir = require_stage_output(
        config.stage(cfg, "data").out_dir, stage="data", files=[PRETRAIN]
    )
    accepted = fingerprint.check_data(cfg, data_dir)
    stamp = fingerprint.stamp(
        fingerprint.make(
            "pretrain",
            settings=fingerprint.settings(cfg, ("model", "prompt", "stages.pretrain")),
            files=fingerprint.file_hashes([data_dir / PRETRAIN], cfg.run_dir),
            upstream=fingerprint.upstream_ids(fingerprint.model_folder(cfg), cfg.run_dir),
        ),
        accepted,
    )
    table = load_table(data_dir / PRETRAIN)
    if table.empty:
        raise StageInputError(
            f"{data_dir}/{PRETRAIN} has no rows: list post-pretraining sets in "
            "`data.pretrain` (e.g. UltraFeedback with format=ultrafeedback) and rerun the data stage"
        )
    timer = StageTimer()
    tokenizer = load_tokenizer(cfg.model)
    prompt = prompt_config(cfg, settings.max_length)
    enc = encodings(table, tokenizer, prompt, cfg, pretrain_key(data_dir))
    examples = make_examples(
        table["id"].tolist(),
        table["label"].astype(int).tolist(),
        enc,
        swap=settings.swap,
        features=row_features(cfg.model, table),  # a hybrid head's input (else None)
    )
    timer.lap("tokenize")
    set_seed(settings.seed)
    model, tokenizer = build_model(cfg.model, train=True, device=train_device())
    trainable, total = count_parameters(model)
    log.info(
        "pretrain %s on %d examples; %d/%d params trainable",
        cfg.model.name,
        len(examples),
        trainable,
        total,
    )
    timer.lap("setup")
    work = out_dir.parent / f".work-{out_dir.name}"
    tracking = tracking_callbacks(cfg, "pretrain")
    result = fit(
        model,
        tokenizer,
        examples,
        None,
        settings,
        work,
        callbacks=tracking.callbacks,
        report_to=tracking.report_to,
        gradient_checkpointing=cfg.model.get("gradient_checkpointing", False),
    )
    timer.lap("train")
    throughput = training_throughput(
        result.trained_rows, result.trained_tokens, timer.phases["train"]
    )
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    metrics = {
        "rows": len(table),
        "examples": len(examples),
        "steps": result.trainer.state.global_step,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "padding_share": round(result.padding_share, 4),
        "resumed_from": result.resumed_from,
        "trainable_params": trainable,
        "total_params": total,
        "throughput": throughput,
        "history": result.log_history,
    }
    final_adapter = work / "final_adapter"
    result.trainer.save_model(str(final_adapter))
    if is_main_process():
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(final_adapter, tmp / "adapter")
            write_json(tmp / "metrics.json", metrics)
            write_manifest(
                tmp,
                stage="pretrain",
                config={
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                    "stage": config.to_dict(settings),
                },
                inputs=[data_dir / PRETRAIN],
                outputs={
                    k: metrics[k] for k in ("rows", "steps", "last_logged_loss", "throughput")
                },
                timer=timer,
                extra=stamp,
            )
        remove_dir(work)
    barrier()
    log.info(
        "post-pretrain adapter written to %s (loss %s -> %s)",
        out_dir / "adapter",
        metrics["first_logged_loss"],
        metrics["last_logged_loss"],
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
