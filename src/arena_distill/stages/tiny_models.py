"""Stage ``tiny_models``: a tokenizer trained on the run's text and random-init tiny classifiers.

Reads ``${run_dir}/data/`` (the data stage's tables: the tokenizer learns from their text).
Writes ``stages.tiny_models.out_dir`` (default ``${run_dir}/models/``): ``tokenizer/`` and one
Hugging Face folder per family (``tiny_gemma2/``, ``tiny_llama/``, ``tiny_qwen2/``) that every
later stage loads by path exactly like a real checkpoint, plus ``manifest.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.tableio import load_table
from arena_distill.io import StageTimer, atomic_dir, require_stage_output, write_manifest
from arena_distill.layout import TEST, TRAIN
from arena_distill.models.tiny import build_tiny_models

log = logging.getLogger(__name__)


def table_texts(df: pd.DataFrame) -> Iterator[str]:
    """Every prompt and answer turn of a normalised table."""
    for col in ("prompt", "response_a", "response_b"):
        for turns in df[col]:
            yield from turns


def run(cfg: DictConfig) -> Path:
    scfg = config.stage(cfg, "tiny_models")
    data_dir = require_stage_output(config.stage(cfg, "data").out_dir, stage="data", files=[TRAIN])
    out_dir = Path(scfg.out_dir)
    timer = StageTimer()
    accepted = fingerprint.check_data(cfg, data_dir)
    read = [p for p in (data_dir / TRAIN, data_dir / TEST) if p.exists()]
    stamp = fingerprint.stamp(
        fingerprint.make(
            "tiny_models",
            settings=fingerprint.settings(cfg, ("stages.tiny_models",)),
            files=fingerprint.file_hashes(read, cfg.run_dir),
        ),
        accepted,
    )
    tables = [load_table(data_dir / TRAIN)]
    if (data_dir / TEST).exists():
        tables.append(load_table(data_dir / TEST))
    texts = [t for df in tables for t in table_texts(df)]
    timer.lap("read")
    with atomic_dir(out_dir) as tmp:
        paths = build_tiny_models(
            texts,
            tmp,
            families=tuple(scfg.families),
            vocab_size=scfg.vocab_size,
            hidden_size=scfg.hidden_size,
            num_layers=scfg.num_layers,
            num_heads=scfg.num_heads,
            num_kv_heads=scfg.num_kv_heads,
            intermediate_size=scfg.intermediate_size,
            max_position_embeddings=scfg.max_position_embeddings,
            seed=scfg.seed,
        )
        timer.lap("build")
        write_manifest(
            tmp,
            stage="tiny_models",
            config=config.to_dict(scfg),
            inputs=[data_dir / TRAIN],
            outputs={name: Path(p).name for name, p in paths.items()},
            timer=timer,
            extra=stamp,
        )
    log.info("tiny models %s written to %s", sorted(paths), out_dir)
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
