"""Stage ``tokenize``: the run's rows as token ids for one model, ahead of the stages that use them.

Reads ``${run_dir}/data/`` (the data stage) and the tokenizer of the ``model`` config. Encodes
each table of ``splits`` exactly as the stage that uses it will ask for it (same tokenizer
loader, prompt config, token budget and data key; ``arena_distill.encode``), so the ids land in
the run's token cache (``stages.tokenize.cache_dir``) and those stages read them back:

* ``train``    the labelled rows (train + extra), at the budget of every training stage that
  trains ``model`` (pretrain's for its own rows; teacher's and distill's for these);
* ``pretrain`` the post-pretraining rows, at the pretrain stage's budget;
* ``test``     the test rows, at the predict stage's budget;
* ``holdout``  the labelled holdout rows, at the predict stage's budget.

Writes ``stages.tokenize.out_dir`` (default ``${run_dir}/tokens/<model>/``): ``stats.json``
(per table and budget: rows, length percentiles, rows at the budget, the cache file) and
``manifest.json``. The ids themselves stay in the cache, one copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.tableio import load_table
from arena_distill.encode import (
    cache_dir,
    labelled_key,
    pretrain_key,
    prompt_config,
    rows_to_predict,
)
from arena_distill.io import (
    StageInputError,
    StageTimer,
    atomic_dir,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import EXTRA, FOLDS, PRETRAIN, TEST, TRAIN, read_run_data
from arena_distill.models.factory import load_tokenizer
from arena_distill.tokens import tokenize_both_orientations

log = logging.getLogger(__name__)

SPLITS = ("train", "pretrain", "test", "holdout")
# the token budgets of the stages whose rows this stage encodes
BUDGETS = tuple(f"stages.{s}.max_length" for s in ("pretrain", "teacher", "distill", "predict"))


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


def _budgets(*values: int | None) -> list[int | None]:
    """Distinct stage budgets in order (None: the prompt config's)."""
    out: list[int | None] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def jobs(cfg: DictConfig, data_dir: Path) -> list[tuple[str, object, str, list[int | None]]]:
    """``(split, rows, data key, budgets)`` for every requested table that exists."""
    stages = {n: config.stage(cfg, n) for n in ("pretrain", "teacher", "distill", "predict")}
    want = config.stage(cfg, "tokenize").splits
    bad = sorted(set(want) - set(SPLITS))
    if bad:
        raise config.ConfigError(f"stages.tokenize.splits: {bad} are not among {SPLITS}")
    out = []
    predict_budget = [stages["predict"].max_length]
    if "train" in want:
        budgets = _budgets(stages["teacher"].max_length, stages["distill"].max_length)
        labelled = read_run_data(data_dir).labelled
        out.append(("train", labelled, labelled_key(data_dir), budgets))
    if "pretrain" in want and (data_dir / PRETRAIN).exists():
        rows = load_table(data_dir / PRETRAIN)
        if len(rows):
            out.append(("pretrain", rows, pretrain_key(data_dir), [stages["pretrain"].max_length]))
    # the rows the predict stage reads, with its keys (a table the run lacks is skipped)
    for split in ("test", "holdout"):
        if split in want:
            try:
                rows, _, key = rows_to_predict(data_dir, split)
            except StageInputError:
                continue
            out.append((split, rows, key, predict_budget))
    return out


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "tokenize")
    data_dir = require_stage_output(config.stage(cfg, "data").out_dir, stage="data")
    accepted = fingerprint.check_data(cfg, data_dir)
    tokenizer = load_tokenizer(cfg.model)
    out_dir = Path(settings.out_dir)
    timer = StageTimer()
    stats: dict[str, dict] = {}
    for split, rows, key, budgets in jobs(cfg, data_dir):
        for budget in budgets:
            prompt = prompt_config(cfg, budget)
            enc = tokenize_both_orientations(
                rows, tokenizer, prompt, cache_dir=cache_dir(cfg), data_key=key
            )
            name = f"{split}@{prompt.max_length}"
            stats[name] = length_stats(enc["length"].to_numpy(), prompt.max_length)
            timer.lap(name)
            log.info("%s: %s", name, stats[name])
    read = [p for p in (data_dir / f for f in (TRAIN, EXTRA, FOLDS, PRETRAIN, TEST)) if p.exists()]
    stamp = fingerprint.stamp(
        fingerprint.make(
            "tokenize",
            settings=fingerprint.settings(cfg, ("model", "prompt", "stages.tokenize", *BUDGETS)),
            files=fingerprint.file_hashes(read, cfg.run_dir),
            upstream=fingerprint.upstream_ids(fingerprint.model_folder(cfg), cfg.run_dir),
        ),
        accepted,
    )
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "stats.json", stats)
        write_manifest(
            tmp,
            stage="tokenize",
            config={
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                "stage": config.to_dict(settings),
            },
            inputs=read,
            outputs={"stats": stats},
            timer=timer,
            extra=stamp,
        )
    log.info("token ids of %s cached in %s; stats in %s", sorted(stats), cache_dir(cfg), out_dir)
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
