"""Stage ``teacher``: one model trained per fold (LoRA, or QLoRA for 70B/72B teachers).

Reads ``${run_dir}/data/`` and, with ``init_from_pretrain``, the post-pretrain adapter of the
same model (``stages.pretrain.out_dir``; its head is dropped). Writes ``stages.teacher.out_dir``
(default ``${run_dir}/teachers/<model>/``) in the layout of ``arena_distill.crossval``:
``fold_<k>/{adapter/, oof.parquet, metrics.json, manifest.json}`` and, once every fold is done,
the combined ``oof.parquet``, ``metrics.json`` and ``manifest.json``. A killed run restarted
with the same command resumes the unfinished fold from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.crossval import run_folds
from arena_distill.layout import load_run_data


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "teacher")
    return run_folds(cfg, load_run_data(cfg), stage="teacher", settings=settings)


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
