"""Stage ``predict``: swap-TTA inference of one model and the submission file.

Reads ``${run_dir}/data/`` (``test.parquet``, or with ``split=holdout`` the labelled holdout rows
of ``train.parquet`` per ``folds.csv``), the model folder ``stages.predict.model_dir`` (default
``${run_dir}/quantized``; a merged or any fine-tuned classifier folder works too) and optionally a
peft adapter ``stages.predict.adapter_dir`` on top of it (a teacher fold, for OOF checks).
Writes ``stages.predict.out_dir`` (default ``${run_dir}/predictions/``): ``submission.csv``
(validated against the test ids and the sample submission's), ``predictions.parquet`` (``id``,
``label`` when known, the columns of ``layout.prediction_table`` — ``logit_*``, ``p_*``,
``swap_logit_*`` (mirrored back), ``tta_p_*`` — plus ``final_p_*``, the submitted
probabilities, and ``postprocess_rule``), ``metrics.json`` (``rows_per_s`` counts ids;
``throughput`` counts every sequence predicted, both orientations under swap-TTA) and
``manifest.json``. The work is ``predict.predict_rows``, which the Kaggle notebook shares.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.readers import read_sample_submission
from arena_distill.encode import cache_dir, prompt_config, rows_to_predict
from arena_distill.io import MANIFEST, require_stage_output
from arena_distill.layout import load_run_data
from arena_distill.metrics import class_prior
from arena_distill.predict import PredictRequest, check_model_dir, predict_rows

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# what a model folder's manifest (quantize, merge) records that prediction must share
MODEL_DIR_BLOCKS = ("prompt",)
# what an adapter's fold (teacher, distill) records that prediction must share
ADAPTER_BLOCKS = ("model", "prompt", *fingerprint.DATA_SPLIT)


def model_upstream(settings: config.PredictStageSettings) -> list[Path]:
    """The stage outputs the predicted model comes from: the model folder (or the tiny-models
    folder holding it) and the adapter's fold folder, those with a manifest."""
    model_dir = Path(settings.model_dir)
    folders = [model_dir, model_dir.parent]
    if settings.adapter_dir:
        folders.append(Path(settings.adapter_dir).parent)
    return [f for f in folders if (f / MANIFEST).is_file()]


def check_model(cfg: DictConfig, settings: config.PredictStageSettings) -> list[str]:
    """Refuse a model folder or adapter built from other inputs than the run's now."""
    accepted = []
    for folder in model_upstream(settings):
        is_fold = settings.adapter_dir and folder == Path(settings.adapter_dir).parent
        blocks = ADAPTER_BLOCKS if is_fold else MODEL_DIR_BLOCKS
        accepted += fingerprint.check_input(folder, cfg, blocks)
    return accepted


def tokenizer_dir(settings: config.PredictStageSettings, cfg: DictConfig) -> str:
    """``tokenizer_dir`` if set, else the model folder when it holds a tokenizer, else the
    ``model`` config's ``name_or_path``."""
    if settings.tokenizer_dir:
        return str(settings.tokenizer_dir)
    if any((Path(settings.model_dir) / f).exists() for f in TOKENIZER_FILES):
        return str(settings.model_dir)
    return str(cfg.model.name_or_path)


def run(cfg: DictConfig) -> Path:
    t_start = time.perf_counter()
    settings = config.stage(cfg, "predict")
    data_dir = require_stage_output(config.stage(cfg, "data").out_dir, stage="data")
    accepted = fingerprint.check_data(cfg, data_dir)
    rows, inputs, key = rows_to_predict(data_dir, settings.split)
    check_model_dir(settings.model_dir, settings.adapter_dir)
    accepted += check_model(cfg, settings)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["name_or_path"] = str(settings.model_dir)
    sample_ids = None
    sample_path = config.data(cfg).sample_submission if settings.split == "test" else None
    if sample_path and Path(sample_path).exists():
        sample_ids = read_sample_submission(sample_path)["id"].tolist()
        inputs.append(Path(sample_path))
    run = load_run_data(cfg)
    blocks = ("model", "prompt", "stages.predict")
    if settings.split != "test":
        blocks += fingerprint.DATA_SPLIT
    stamp = fingerprint.stamp(
        fingerprint.make(
            "predict",
            settings=fingerprint.settings(cfg, blocks, model=model_cfg),
            files=fingerprint.file_hashes(inputs, cfg.run_dir),
            upstream=fingerprint.upstream_ids(model_upstream(settings), cfg.run_dir),
        ),
        accepted,
    )
    prior = class_prior(run.labelled["label"].dropna().astype(int).to_numpy())
    request = PredictRequest(
        rows=rows,
        model_cfg=model_cfg,
        prompt=prompt_config(cfg),
        out_dir=settings.out_dir,
        cache_dir=cache_dir(cfg),
        adapter_dir=settings.adapter_dir,
        tokenizer_dir=tokenizer_dir(settings, cfg),
        data_key=key,
        sample_ids=sample_ids,
        prior=prior.tolist(),
        split=settings.split,
        inputs=inputs,
        manifest_config={
            "model": model_cfg,
            "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
            "stage": config.to_dict(settings),
        },
        manifest_extra=stamp,
        t_start=t_start,
    )
    return predict_rows(request, settings.predict())


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
