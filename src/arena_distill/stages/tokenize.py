"""Stage ``tokenize``: normalised tables -> token ids, for one model's tokenizer.

Reads ``${run_dir}/data/`` (the data stage) and the tokenizer of the ``model`` config.
Writes ``stages.tokenize.out_dir`` (default ``${run_dir}/tokens/<model>/``): one
``<split>.parquet`` per table (``id, swapped, input_ids, length``; both A/B orientations, since
training uses swap augmentation and prediction swap-TTA), ``stats.json`` (length percentiles and
how many rows hit the budget) and ``manifest.json``. Encodings are cached under
``stages.tokenize.cache_dir`` keyed by (data, tokenizer, template, max length), so training and
prediction stages that need the same ids reuse them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from arena_distill.config import hydra_app
from arena_distill.data.tableio import load_table
from arena_distill.io import (
    StageTimer,
    atomic_dir,
    file_sha256,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.text import PromptConfig
from arena_distill.tokens import tokenize_both_orientations

log = logging.getLogger(__name__)


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    q = np.percentile(lengths, [50, 90, 99, 100]) if len(lengths) else [0, 0, 0, 0]
    return {
        "rows": int(len(lengths)),
        "mean": float(np.mean(lengths)) if len(lengths) else 0.0,
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "max": float(q[3]),
        "at_budget": int(np.sum(lengths >= max_length)),
    }


def run(cfg: DictConfig) -> Path:
    scfg = cfg.stages.tokenize
    data_dir = require_stage_output(cfg.stages.data.out_dir, stage="data")
    prompt = PromptConfig.from_dict(OmegaConf.to_container(cfg.prompt, resolve=True))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    out_dir = Path(scfg.out_dir)
    cache_dir = Path(scfg.cache_dir)
    timer = StageTimer()
    stats: dict[str, dict] = {}
    inputs = []
    with atomic_dir(out_dir) as tmp:
        for split in scfg.splits:
            path = data_dir / f"{split}.parquet"
            if not path.exists():
                log.info("no %s table in %s: skipped", split, data_dir)
                continue
            inputs.append(path)
            df = load_table(path)
            enc = tokenize_both_orientations(
                df, tokenizer, prompt, cache_dir=cache_dir, data_key=file_sha256(path)
            )
            enc.to_parquet(tmp / f"{split}.parquet", index=False)
            stats[split] = length_stats(enc["length"].to_numpy(), prompt.max_length)
            timer.lap(split)
            log.info("%s: %s", split, stats[split])
        write_json(tmp / "stats.json", stats)
        write_manifest(
            tmp,
            stage="tokenize",
            config={
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                "stage": OmegaConf.to_container(scfg, resolve=True),
            },
            inputs=inputs,
            outputs={"stats": stats},
            timer=timer,
        )
    log.info("token ids written to %s", out_dir)
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
