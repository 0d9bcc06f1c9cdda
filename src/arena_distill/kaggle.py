"""The Kaggle scoring entry point: the competition's ``test.csv`` in, ``submission.csv`` out.

``notebooks/submission.ipynb`` calls :func:`predict_csv` once. It runs offline from an installed
wheel (no ``configs/`` folder, no Hydra composition) and does exactly what the ``predict``
stage does (``arena_distill.predict.predict_rows``: swap-TTA, length-sorted batches, one
process per GPU, the time-budget guard, post-processing, the submission validator); only the
rows come from the raw competition file (``read_competition``) instead of a run folder.

The model folder carries :data:`PROMPT_FILE` (written by ``scripts/package_kaggle.py`` from the
run's composed config): the prompt/template config the model was trained with, the model
config (family, head, attention, softcapping) and the run's prediction settings. Explicit
arguments win over the file; without the file the prompt is ``PromptConfig()`` (the 1st-place
template) and the model config is inferred from ``config.json``, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arena_distill.data.readers import read_competition, read_sample_submission
from arena_distill.data.summary import DataSummary
from arena_distill.settings import PredictSettings
from arena_distill.submission import read_submission, validate_submission
from arena_distill.text import PromptConfig

log = logging.getLogger(__name__)

PROMPT_FILE = "arena_distill_prompt.json"
PROMPT_FILE_FORMAT = 1
# settings of a run's ``stages.predict`` that describe the run's machine, not the model
MACHINE_SETTINGS = ("devices", "progress")
# config.json ``model_type`` -> the model config's ``family``
FAMILIES = {"llama": "llama", "gemma2": "gemma2", "qwen2": "qwen2", "bert": "bert"}
# model-config keys that earlier versions wrote into PROMPT_FILE and nothing reads any more
RETIRED_MODEL_KEYS = ("kind", "max_position_embeddings")


# ---------------------------------------------------------------------------------------------
# The prompt file beside the model
# ---------------------------------------------------------------------------------------------


def write_prompt_file(
    model_dir: str | Path,
    *,
    prompt: PromptConfig | Mapping[str, Any],
    model_cfg: Mapping[str, Any],
    predict: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write :data:`PROMPT_FILE` into ``model_dir``: prompt, model config (without
    ``name_or_path``, which is wherever the folder ends up), prediction settings, provenance."""
    prompt = prompt if isinstance(prompt, PromptConfig) else PromptConfig.from_dict(prompt)
    model = {k: v for k, v in dict(model_cfg).items() if k != "name_or_path"}
    data = {
        "format": PROMPT_FILE_FORMAT,
        "prompt": prompt.to_dict(),
        "model": model,
        "predict": dict(predict or {}),
        "source": dict(source or {}),
    }
    path = Path(model_dir) / PROMPT_FILE
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_prompt_file(model_dir: str | Path) -> dict[str, Any] | None:
    """The content of :data:`PROMPT_FILE` in ``model_dir``, or None when there is none."""
    path = Path(model_dir) / PROMPT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if int(data.get("format", 0)) > PROMPT_FILE_FORMAT:
        raise ValueError(
            f"{path} has format {data.get('format')}; this arena_distill reads up to "
            f"{PROMPT_FILE_FORMAT} (install the wheel the model was packaged with)"
        )
    return data


def infer_model_cfg(model_dir: str | Path) -> dict[str, Any]:
    """A model config for a folder without :data:`PROMPT_FILE`, from its ``config.json``."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = str(config.get("model_type", ""))
    family = FAMILIES.get(model_type, model_type)
    return {
        "name": Path(model_dir).name,
        "family": family,
        "num_labels": int(config.get("num_labels", len(config.get("id2label", {})) or 3)),
        "dtype": "float32",
        "attn_implementation": "auto",
        "softcapping": None,
        "head": "linear",
        "quantization": None,
        "lora": None,
    }


def _prompt(prompt: Any, info: Mapping[str, Any] | None, model_dir: Path) -> PromptConfig:
    if prompt is not None:
        if isinstance(prompt, PromptConfig):
            chosen = prompt
        elif isinstance(prompt, (str, Path)):
            data = json.loads(Path(prompt).read_text())
            chosen = PromptConfig.from_dict(data.get("prompt", data))
        else:
            chosen = PromptConfig.from_dict(prompt)
        if info and PromptConfig.from_dict(info["prompt"]) != chosen:
            log.warning("the prompt given differs from the one in %s/%s", model_dir, PROMPT_FILE)
        return chosen
    if info and info.get("prompt"):
        return PromptConfig.from_dict(info["prompt"])
    log.warning(
        "%s has no %s and no prompt was given: using the default (1st-place) template",
        model_dir,
        PROMPT_FILE,
    )
    return PromptConfig()


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def predict_csv(
    test_csv: str | Path,
    model_dir: str | Path,
    out_csv: str | Path = "/kaggle/working/submission.csv",
    *,
    sample_submission: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    prompt: PromptConfig | Mapping[str, Any] | str | Path | None = None,
    model_cfg: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    work_dir: str | Path | None = None,
    started_at: float | None = None,
) -> Path:
    """Predict every row of a competition-layout ``test_csv``; write and return ``out_csv``.

    ``model_dir``: a full classifier folder (GPTQ, LLM.int8, merged, or any fine-tuned one) with its
    tokenizer; ``adapter_dir`` an optional peft adapter on it. ``prompt``: a ``PromptConfig``,
    a mapping or a JSON file; default the model folder's :data:`PROMPT_FILE`. ``settings``:
    prediction settings (``settings.PredictSettings`` keys, e.g. ``{"tta": True,
    "time_budget_hours": 9.0, "max_length": 2000, "batch_size": 8, "devices": "auto"}``)
    over those saved in :data:`PROMPT_FILE` (else the predict stage's defaults: swap-TTA on,
    max length 2000, fallback 1024, batch 8, 9 hours, post-processing off); a key there that
    is not a setting is an error. ``devices`` defaults to every visible GPU (else the CPU).
    ``work_dir`` (default ``<out_csv folder>/arena_distill``) receives ``predictions/``
    (``submission.csv``, ``predictions.parquet``, ``metrics.json``, ``manifest.json``; replaced
    as a whole). ``started_at`` (``time.perf_counter()``) is when the time budget started,
    e.g. at the notebook's first cell (default: now).

    The submission holds every id of ``test_csv`` once (and exactly the sample submission's
    ids when given), with finite probabilities summing to 1; it is validated before it is
    written and again after.
    """
    from arena_distill.predict import PredictRequest, predict_rows

    t_start = time.perf_counter() if started_at is None else float(started_at)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    test_csv, model_dir, out_csv = Path(test_csv), Path(model_dir), Path(out_csv)

    summary = DataSummary()
    rows = read_competition(test_csv, summary=summary, source="kaggle", on_bad_row="error")
    if summary.counts:
        log.info("normalisation of %s: %s", test_csv, dict(summary.counts))
    inputs = [test_csv]
    sample_ids = None
    if sample_submission is not None:
        sample_ids = read_sample_submission(sample_submission)["id"].tolist()
        inputs.append(Path(sample_submission))

    info = read_prompt_file(model_dir)
    prompt_cfg = _prompt(prompt, info, model_dir)
    if model_cfg is None:
        if info and info.get("model"):
            model_cfg = {k: v for k, v in info["model"].items() if k not in RETIRED_MODEL_KEYS}
        else:
            model_cfg = infer_model_cfg(model_dir)
            log.warning(
                "%s has no %s: model config inferred as %s", model_dir, PROMPT_FILE, model_cfg
            )
    model_cfg = {**dict(model_cfg), "name_or_path": str(model_dir)}
    predict = prediction_settings(info, settings)

    work_dir = out_csv.parent / "arena_distill" if work_dir is None else Path(work_dir)
    out_dir = work_dir / "predictions"
    log.info("%d rows of %s -> %s (model %s, %s)", len(rows), test_csv, out_csv, model_dir, predict)
    with tempfile.TemporaryDirectory(prefix="arena-tokens-") as cache_dir:
        request = PredictRequest(
            rows=rows,
            model_cfg=model_cfg,
            prompt=prompt_cfg,
            out_dir=out_dir,
            cache_dir=cache_dir,
            adapter_dir=adapter_dir,
            sample_ids=sample_ids,
            split="test",
            inputs=inputs,
            manifest_config={
                "model": model_cfg,
                "prompt": prompt_cfg.to_dict(),
                "stage": predict.to_dict(),
                "adapter_dir": None if adapter_dir is None else str(adapter_dir),
                "prompt_file": info is not None,
            },
            t_start=t_start,
        )
        predict_rows(request, predict)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    if out_csv.resolve() != (out_dir / "submission.csv").resolve():
        tmp = out_csv.with_name(f".{out_csv.name}.tmp-{os.getpid()}")
        shutil.copyfile(out_dir / "submission.csv", tmp)
        os.replace(tmp, out_csv)
    validate_submission(
        read_submission(out_csv),
        rows["id"].tolist(),
        sample_ids=sample_ids,
        clip_eps=float(predict.clip_eps),
    )
    log.info("submission written: %s (%d rows)", out_csv, len(rows))
    return out_csv


def prediction_settings(
    info: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None
) -> PredictSettings:
    """The settings saved in a model folder's :data:`PROMPT_FILE` (without the settings that
    describe the machine it was packaged on), with ``overrides`` on top."""
    saved = {
        k: v for k, v in ((info or {}).get("predict") or {}).items() if k not in MACHINE_SETTINGS
    }
    settings = PredictSettings.from_config(saved, "prompt file: predict")
    if overrides:
        merged = {**settings.to_dict(), **dict(overrides)}
        settings = PredictSettings.from_config(merged, "predict_csv settings")
    return settings


def read_metrics(out_csv: str | Path, work_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``metrics.json`` of the :func:`predict_csv` call that wrote ``out_csv``."""
    work_dir = Path(out_csv).parent / "arena_distill" if work_dir is None else Path(work_dir)
    return json.loads((work_dir / "predictions" / "metrics.json").read_text())
