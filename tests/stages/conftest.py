"""A small trained run shared by the stage tests: 150 demo rows, 3 folds, tiny Llama."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import DictConfig

from arena_distill.config import compose

# small optimisation settings for every training stage (fast on 2 CPU cores)
SMALL_TRAIN = {
    "epochs": 2,
    "lr": 3.0e-3,
    "global_batch_size": 16,
    "per_device_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "warmup_steps": 2,
    "logging_steps": 2,
}


def small_overrides(root: Path) -> list[str]:
    """Hydra overrides of the small run rooted at ``root`` (also usable on the command line)."""
    train = [
        f"stages.{stage}.{key}={value}"
        for stage in ("pretrain", "teacher", "distill")
        for key, value in SMALL_TRAIN.items()
    ]
    return [
        "experiment=demo",
        "model=tiny_llama",
        f"runs_root={root}/runs",
        f"stages.demo_data.out_dir={root}/demo",
        "stages.demo_data.n_train=150",
        "stages.demo_data.n_test=10",
        "stages.demo_data.n_pretrain=48",
        "stages.tiny_models.vocab_size=512",
        "stages.tiny_models.hidden_size=64",
        "stages.tiny_models.num_heads=2",
        "stages.tiny_models.num_kv_heads=1",
        "stages.tiny_models.intermediate_size=128",
        "prompt.max_length=128",
        "data.holdout_frac=0.1",
        *train,
    ]


def small_cfg(root: Path, *extra: str) -> DictConfig:
    return compose([*small_overrides(root), *extra])


@dataclass
class TrainedRun:
    root: Path
    cfg: DictConfig


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """demo data -> data -> tiny models -> pretrain -> teacher (3 folds), once per session.

    Tests must not modify its folders; they write their own outputs under ``root``."""
    from arena_distill.stages import data, demo_data, pretrain, teacher, tiny_models

    root = tmp_path_factory.mktemp("trained")
    cfg = small_cfg(root)
    for stage in (demo_data, data, tiny_models, pretrain, teacher):
        stage.run(cfg)
    return TrainedRun(root, cfg)
