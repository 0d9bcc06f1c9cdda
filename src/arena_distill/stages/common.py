"""Pieces the training stages share: the run's tables, a model's token ids, output helpers."""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from arena_distill.data.folds import read_folds
from arena_distill.data.tableio import load_table
from arena_distill.io import file_sha256, require_stage_output
from arena_distill.text import PromptConfig
from arena_distill.tokens import encoding_map, tokenize_both_orientations


@dataclass
class RunData:
    """The data stage's output, loaded."""

    data_dir: Path
    train: pd.DataFrame  # competition rows (cv + holdout)
    extra: pd.DataFrame  # training-only rows
    folds: pd.DataFrame  # id, split, fold

    @property
    def labelled(self) -> pd.DataFrame:
        return pd.concat([self.train, self.extra], ignore_index=True)

    @property
    def n_folds(self) -> int:
        return int(self.folds.loc[self.folds["split"] == "cv", "fold"].max()) + 1


def load_run_data(cfg: DictConfig) -> RunData:
    data_dir = require_stage_output(
        cfg.stages.data.out_dir, stage="data", files=["train.parquet", "extra.parquet", "folds.csv"]
    )
    return RunData(
        data_dir=data_dir,
        train=load_table(data_dir / "train.parquet"),
        extra=load_table(data_dir / "extra.parquet"),
        folds=read_folds(data_dir / "folds.csv"),
    )


def prompt_config(cfg: DictConfig, max_length: int | None = None) -> PromptConfig:
    """The run's prompt config, with the stage's own token budget when it sets one."""
    prompt = PromptConfig.from_dict(OmegaConf.to_container(cfg.prompt, resolve=True))
    return dataclasses.replace(prompt, max_length=max_length) if max_length else prompt


def encodings(
    df: pd.DataFrame, tokenizer, prompt: PromptConfig, cfg: DictConfig, data_key: str
) -> dict[tuple[str, bool], list[int]]:
    """``{(id, swapped): ids}`` for every row of ``df``, through the run's token cache."""
    enc = tokenize_both_orientations(
        df, tokenizer, prompt, cache_dir=cfg.stages.tokenize.cache_dir, data_key=data_key
    )
    return encoding_map(enc)


def labelled_encodings(
    cfg: DictConfig, run: RunData, tokenizer, max_length: int | None = None
) -> dict[tuple[str, bool], list[int]]:
    """``{(id, swapped): ids}`` of every labelled row (train and extra), with the run's prompt
    config and a stage's own token budget; the key every training-side stage shares."""
    key = data_key(run.data_dir / "train.parquet", run.data_dir / "extra.parquet")
    return encodings(run.labelled, tokenizer, prompt_config(cfg, max_length), cfg, key)


def data_key(*paths: Path) -> str:
    return ":".join(file_sha256(p)[:16] for p in paths)


def folds_to_run(spec, n_folds: int) -> list[int]:
    """``all`` or one fold index (``FOLD=k`` in the Makefile) or a list of them."""
    if spec in (None, "all"):
        return list(range(n_folds))
    folds = [
        int(f)
        for f in (spec if isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec) else [spec])
    ]
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise ValueError(f"fold(s) {bad} out of range: the folds file has {n_folds} folds")
    return folds


def train_device() -> str:
    """This process's device: its local GPU under a launcher (``LOCAL_RANK``), else the CPU.

    4-bit (QLoRA) weights are placed at load time, so the device must be known then."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
