"""Stage ``pretrain``: post-pretraining on the extra preference sets (UT at full scale).

Reads ``${run_dir}/data/pretrain.parquet`` (the ``data.pretrain`` sets, de-duplicated against
train). Writes ``stages.pretrain.out_dir`` (default ``${run_dir}/pretrain/<model>/``):
``adapter/`` (LoRA + head; later stages load the LoRA part and drop the head, as the 1st place
did), ``metrics.json`` (training loss history, padding share, throughput) and
``manifest.json``. One epoch at lr 1e-5 in the recipe. Checkpoints live beside it in
``.<name>.work/`` while it trains (``train.train_and_write_adapter``): a rerun of the same inputs
resumes from them, a finished output of the same inputs is kept (root ``overwrite=true``
retrains).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from transformers import set_seed

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.tableio import load_table
from arena_distill.distributed import train_device
from arena_distill.encode import encodings, pretrain_key, prompt_config
from arena_distill.features import row_features
from arena_distill.io import StageInputError, StageTimer, require_stage_output
from arena_distill.layout import PRETRAIN
from arena_distill.models.factory import build_model, load_tokenizer
from arena_distill.train import make_examples, train_and_write_adapter

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "pretrain")
    out_dir = Path(settings.out_dir)
    data_dir = require_stage_output(
        config.stage(cfg, "data").out_dir, stage="data", files=[PRETRAIN]
    )
    accepted = fingerprint.check_data(cfg, data_dir)
    expected = fingerprint.make(
        "pretrain",
        settings=fingerprint.settings(cfg, ("model", "prompt", "stages.pretrain")),
        files=fingerprint.file_hashes([data_dir / PRETRAIN], cfg.run_dir),
        upstream=fingerprint.upstream_ids(fingerprint.model_folder(cfg), cfg.run_dir),
    )
    if not fingerprint.overwrite(cfg) and fingerprint.is_current_output(
        out_dir, expected, cfg.run_dir
    ):
        return out_dir
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
    log.info("pretrain %s on %d rows, %d examples", cfg.model.name, len(table), len(examples))
    timer.lap("setup")
    train_and_write_adapter(
        cfg,
        model,
        tokenizer,
        examples,
        settings,
        out_dir,
        stage="pretrain",
        stamp=fingerprint.stamp(expected, accepted),
        timer=timer,
        metrics={"rows": len(table)},
        inputs=[data_dir / PRETRAIN],
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
