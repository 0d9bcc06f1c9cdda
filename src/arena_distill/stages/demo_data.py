"""Stage ``demo_data``: write the embedded demo set (Kaggle-shaped CSVs), offline and deterministic.

Reads nothing; writes ``stages.demo_data.out_dir`` (default ``data/demo/``): ``train.csv``,
``test.csv``, ``sample_submission.csv``, ``test_labels.csv``, ``pretrain.csv`` (the demo's
stand-in for UltraFeedback-as-arena) and ``manifest.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.demo import generate_demo
from arena_distill.io import StageTimer, atomic_dir, write_manifest

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    scfg = config.stage(cfg, "demo_data")
    out_dir = Path(scfg.out_dir)
    timer = StageTimer()
    with atomic_dir(out_dir) as tmp:
        files = generate_demo(
            tmp,
            n_train=scfg.n_train,
            n_test=scfg.n_test,
            n_pretrain=scfg.n_pretrain,
            seed=scfg.seed,
        )
        timer.lap("generate")
        write_manifest(
            tmp,
            stage="demo_data",
            config=config.to_dict(scfg),
            outputs={name: Path(p).name for name, p in files.items()},
            timer=timer,
            extra=fingerprint.stamp(
                fingerprint.make(
                    "demo_data", settings=fingerprint.settings(cfg, ("stages.demo_data",))
                )
            ),
        )
    log.info("demo data (%d train, %d test rows) written to %s", scfg.n_train, scfg.n_test, out_dir)
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
