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
from arena_distill.ensemble import average_predictions, ensemble_metrics, write_ensemble
from arena_distill.io import StageTimer, require_stage_output
from arena_distill.layout import fold_dir, load_run_data

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
    sample_ids, inputs = None, [s / "manifest.json" for s in sources]
    sample_path = config.data(cfg).sample_submission if settings.split == "test" else None
    if sample_path and Path(sample_path).exists():
        sample_ids = read_sample_submission(sample_path)["id"].tolist()
        inputs.append(Path(sample_path))
    out_dir = write_ensemble(
        settings.out_dir,
        table,
        metrics=ensemble_metrics(table, settings.split, len(sources)),
        sample_ids=sample_ids,
        clip_eps=float(predict.clip_eps),
        manifest={
            "stage": "ensemble",
            "config": {"stage": config.to_dict(settings)},
            "inputs": inputs,
            "outputs": {"rows": len(table), "models": len(sources)},
            "timer": timer,
            "extra": fingerprint.stamp(
                fingerprint.make(
                    "ensemble",
                    settings=fingerprint.settings(cfg, ("stages.ensemble",)),
                    upstream=fingerprint.upstream_ids(sources, cfg.run_dir),
                ),
                accepted,
            ),
        },
    )
    log.info(
        "%d rows: the mean of %d fold students, written to %s", len(table), len(sources), out_dir
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
