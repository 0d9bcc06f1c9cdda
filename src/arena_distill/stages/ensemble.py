"""Stage ``ensemble``: the fold students' averaged predictions as the final model
(``pipeline.final: folds``).

Reads ``${run_dir}/data/`` and, for every cv fold k, ``<stages.ensemble.sources_dir>/fold_<k>/
predictions.parquet`` (the predict stage run with fold k's student adapter on the same rows).
Writes ``stages.ensemble.out_dir`` (default ``${run_dir}/predictions/``, where the predict stage
writes the merge's): ``submission.csv`` (validated against the ids and the sample
submission's), ``predictions.parquet`` (the averaged ``p_*``, ``tta_p_*``, ``final_p_*``,
``n_models``), ``metrics.json`` (the rows, the models averaged, with labels the scores) and
``manifest.json``. The averaging is ``ensemble.average_predictions``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.readers import read_sample_submission
from arena_distill.ensemble import average_predictions
from arena_distill.io import (
    StageTimer,
    atomic_dir,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import FINAL_COLS, PROB_COLS, TTA_PROB_COLS, fold_dir, load_run_data
from arena_distill.metrics import accuracy, log_loss
from arena_distill.submission import write_submission

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "ensemble")
    predict = config.stage(cfg, "predict")
    run_data = load_run_data(cfg)
    timer = StageTimer()
    sources = [
        require_stage_output(
            fold_dir(settings.sources_dir, k), stage="predict", files=["predictions.parquet"]
        )
        for k in range(run_data.n_folds)
    ]
    accepted = [a for s in sources for a in fingerprint.check_input(s, cfg, ())]
    table = average_predictions([pd.read_parquet(s / "predictions.parquet") for s in sources])
    timer.lap("average")
    ids = table["id"].tolist()
    sample_ids, inputs = None, [s / "manifest.json" for s in sources]
    sample_path = config.data(cfg).sample_submission if settings.split == "test" else None
    if sample_path and Path(sample_path).exists():
        sample_ids = read_sample_submission(sample_path)["id"].tolist()
        inputs.append(Path(sample_path))
    metrics: dict = {"split": settings.split, "rows": len(ids), "models": len(sources)}
    if "label" in table.columns and table["label"].notna().all():
        y = table["label"].astype(int).to_numpy()
        metrics["scores"] = {
            name: {
                "log_loss": log_loss(table[list(cols)].to_numpy(), y),
                "accuracy": accuracy(table[list(cols)].to_numpy(), y),
            }
            for name, cols in (("plain", PROB_COLS), ("tta", TTA_PROB_COLS), ("final", FINAL_COLS))
            if set(cols) <= set(table.columns)
        }
    out_dir = Path(settings.out_dir)
    with atomic_dir(out_dir) as tmp:
        write_submission(
            tmp / "submission.csv",
            ids,
            table[list(FINAL_COLS)].to_numpy(),
            expected_ids=ids,
            sample_ids=sample_ids,
            clip_eps=float(predict.clip_eps),
        )
        table.to_parquet(tmp / "predictions.parquet", index=False)
        write_json(tmp / "metrics.json", metrics)
        write_manifest(
            tmp,
            stage="ensemble",
            config={"stage": config.to_dict(settings)},
            inputs=inputs,
            outputs={"rows": len(ids), "models": len(sources)},
            timer=timer,
            extra=fingerprint.stamp(
                fingerprint.make(
                    "ensemble",
                    settings=fingerprint.settings(cfg, ("stages.ensemble",)),
                    upstream=fingerprint.upstream_ids(sources, cfg.run_dir),
                ),
                accepted,
            ),
        )
    log.info(
        "%d rows: the mean of %d fold students, written to %s", len(ids), len(sources), out_dir
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
