"""Token ids of a run's rows, through the token cache.

Every stage that needs ids gets them here (training stages, the tokenize stage, prediction of
the test and holdout rows), with the same tokenizer loader (``models.factory.load_tokenizer``)
and the same cache keys, so an encoding computed once (e.g. by ``arena-distill tokenize``) is
read back by every later stage that asks for the same rows at the same budget. A cache key is
(data key, tokenizer, prompt config, format version): the data key names the rows by the
sha256 of the data stage's files they came from (``data_key``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from arena_distill import settings as config
from arena_distill.data.folds import read_folds
from arena_distill.data.tableio import load_table
from arena_distill.io import StageInputError, file_sha256
from arena_distill.layout import (
    EXTRA,
    FOLDS,
    HOLDOUT,
    PRETRAIN,
    TEST,
    TRAIN,
    RunData,
    rows_in_split,
)
from arena_distill.text import PromptConfig
from arena_distill.tokens import encoding_map, tokenize_both_orientations

Encodings = dict[tuple[str, bool], list[int]]


def prompt_config(cfg: DictConfig, max_length: int | None = None) -> PromptConfig:
    """The run's prompt config, with a stage's own token budget when it sets one."""
    prompt = config.prompt(cfg)
    return dataclasses.replace(prompt, max_length=max_length) if max_length else prompt


def cache_dir(cfg: DictConfig) -> Path:
    return Path(config.stage(cfg, "tokenize").cache_dir)


def data_key(*paths: Path) -> str:
    """The identity of the rows read from ``paths``: their contents' sha256 (16 hex each)."""
    return ":".join(file_sha256(p)[:16] for p in paths)


def labelled_key(data_dir: Path) -> str:
    """The data key of the labelled rows (train + extra) every training stage encodes."""
    return data_key(data_dir / TRAIN, data_dir / EXTRA)


def pretrain_key(data_dir: Path) -> str:
    """The data key of the post-pretraining rows (the pretrain stage's)."""
    return data_key(data_dir / PRETRAIN)


def test_key(data_dir: Path) -> str:
    return data_key(data_dir / TEST)


def holdout_key(data_dir: Path) -> str:
    return data_key(data_dir / TRAIN, data_dir / FOLDS) + ":holdout"


def encodings(
    df: pd.DataFrame, tokenizer, prompt: PromptConfig, cfg: DictConfig, key: str | None
) -> Encodings:
    """``{(id, swapped): ids}`` for every row of ``df``, through the run's token cache."""
    enc = tokenize_both_orientations(df, tokenizer, prompt, cache_dir=cache_dir(cfg), data_key=key)
    return encoding_map(enc)


def labelled_encodings(
    cfg: DictConfig, run: RunData, tokenizer, max_length: int | None = None
) -> Encodings:
    """``{(id, swapped): ids}`` of every labelled row (train and extra), with the run's prompt
    config and a stage's own token budget; the key every training-side stage shares."""
    key = labelled_key(run.data_dir)
    return encodings(run.labelled, tokenizer, prompt_config(cfg, max_length), cfg, key)


def rows_to_predict(data_dir: Path, split: str) -> tuple[pd.DataFrame, list[Path], str]:
    """The rows of ``split`` (``test``: ``test.parquet``; ``holdout``: the labelled holdout
    rows), the files they came from and their token-cache key."""
    if split == "test":
        path = data_dir / TEST
        if not path.exists():
            raise StageInputError(f"{path} is missing: the data config has no test set")
        return load_table(path), [path], test_key(data_dir)
    train, folds_path = data_dir / TRAIN, data_dir / FOLDS
    rows = rows_in_split(load_table(train), read_folds(folds_path), HOLDOUT)
    if rows.empty:
        raise StageInputError(f"{folds_path} has no holdout rows (data.holdout_frac is 0?)")
    return rows, [train, folds_path], holdout_key(data_dir)
