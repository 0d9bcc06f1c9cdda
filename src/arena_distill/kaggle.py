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
template) and the model config is inferred from ``config.json``, with a warning. A hybrid-head
model (``model.head: hybrid``) needs nothing more: ``predict_rows`` computes every test row's
length features from the raw row, in each orientation, as training did.

A package of ``pipeline.final: folds`` holds the base model once and every fold student's LoRA
adapter (``folds/fold_<k>/``, listed in the file's ``final``): :func:`predict_csv` runs the
predict core once per fold (the base with that adapter, swap-TTA as for a single model) and
averages the folds' probabilities with the ``ensemble`` stage's code
(``ensemble.average_predictions`` / ``write_ensemble``). The time guard of fold k counts the
K − k folds still to run, and a fold that would not fit the time left is skipped (at least one
fold always runs), so the submission is written in time; :func:`plan_csv` projects the K passes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from arena_distill.data.readers import read_competition, read_sample_submission
from arena_distill.data.summary import DataSummary
from arena_distill.features import folder_head
from arena_distill.io import write_json
from arena_distill.settings import PredictSettings
from arena_distill.submission import read_submission, validate_submission, write_submission
from arena_distill.text import PromptConfig

if TYPE_CHECKING:
    from arena_distill.predict import PredictRequest

log = logging.getLogger(__name__)

PROMPT_FILE = "arena_distill_prompt.json"
# 1: one model (the folder itself, or with an adapter); 2: the file's ``final`` lists the fold
# students' adapters (pipeline.final=folds), which an older reader would silently ignore
PROMPT_FILE_FORMAT = 2
FOLDS_FINAL = "folds"
FOLDS_DIR = "folds"  # <model>/folds/fold_<k>/: the fold students' adapters of a folds package
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
    prior: Sequence[float] | None = None,
    final: Mapping[str, Any] | None = None,
) -> Path:
    """Write :data:`PROMPT_FILE` into ``model_dir``: prompt, model config (without
    ``name_or_path``, which is wherever the folder ends up), prediction settings, provenance
    and the class prior of the training rows (what a row the model cannot score gets).
    ``final``: which final model the folder holds (``{"kind": "folds", "adapters":
    ["folds/fold_0", ...]}``: the base model and the fold adapters, relative to the folder;
    ``{"kind": "merge" | "full"}``: the folder is the model); a folds package is format 2."""
    prompt = prompt if isinstance(prompt, PromptConfig) else PromptConfig.from_dict(prompt)
    model = {k: v for k, v in dict(model_cfg).items() if k != "name_or_path"}
    folds = final is not None and final.get("kind") == FOLDS_FINAL
    data = {
        "format": PROMPT_FILE_FORMAT if folds else 1,
        "prompt": prompt.to_dict(),
        "model": model,
        "predict": dict(predict or {}),
        "source": dict(source or {}),
    }
    if prior is not None:
        data["prior"] = [float(x) for x in prior]
    if final is not None:
        data["final"] = dict(final)
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


def fold_adapters(model_dir: str | Path, info: Mapping[str, Any] | None) -> list[Path]:
    """The fold students' adapter folders of a ``final: folds`` package (none for a single
    model); every one must be there."""
    final = (info or {}).get("final") or {}
    if final.get("kind") != FOLDS_FINAL:
        return []
    adapters = [Path(model_dir) / a for a in final.get("adapters") or []]
    missing = [str(a) for a in adapters if not (a / "adapter_config.json").is_file()]
    if not adapters or missing:
        raise FileNotFoundError(
            f"{model_dir}/{PROMPT_FILE} lists the fold adapters {final.get('adapters')}; "
            f"missing: {missing or 'all (none listed)'}"
        )
    return adapters


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
        # a merged / quantized hybrid-head folder records its head (the loader restores it)
        "head": "hybrid" if folder_head(model_dir) is not None else "linear",
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
    fail_safe: bool = True,
    stack: bool = True,
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
    (``submission.csv`` of the predicted rows, ``predictions.parquet``, ``metrics.json``,
    ``manifest.json``; replaced as a whole), ``submission.json`` (how every id of the
    submission was obtained) and, when there were any, ``malformed_rows.csv`` (id, reason).
    ``started_at`` (``time.perf_counter()``) is when the time budget started, e.g. at the
    notebook's first cell (default: now).

    A submission that errors scores nothing, so nothing here may stop it:

    * a row that cannot be parsed gets the class prior (``prior`` in :data:`PROMPT_FILE`, else
      uniform), is counted and listed in ``malformed_rows.csv``; so does an id of the sample
      submission that the test file lacks;
    * the inference engine splits a batch that runs out of memory, and a row the model gives
      no finite prediction gets the prior (``predict.with_fallback``); the time guard falls
      back to a shorter length, then to no TTA;
    * with ``fail_safe`` (default), any other error is logged with its traceback and the
      prior is written for every id (``fallback.json`` says why): a scored submission at the
      prior's log loss instead of none.

    The submission holds every id once (exactly the sample submission's ids when given), with
    finite probabilities summing to 1; it is validated before it is written and again after.

    With ``stack`` (default) and a ``stacker/`` folder in ``model_dir`` (the stack stage's,
    shipped by ``scripts/package_kaggle.py``), every row with finite logits gets the stacker's
    probabilities instead of the model's (``stacked+tta`` when the model predicted both
    orientations, else ``stacked``): the model's logits, the shipped baselines and the length
    features of the row, plain numpy (``stacking.load_stacker_dir``), what the stage wrote to
    ``stack/submission.csv`` for the run's test rows. ``submission.json`` counts them.

    A ``final: folds`` package (:func:`fold_adapters`; ``adapter_dir`` not given) is predicted
    once per fold student into ``<work_dir>/fold_predictions/fold_<k>/`` and averaged into
    ``<work_dir>/predictions/`` (the ``ensemble`` stage's files); the stacker then reads the
    averaged logits (the log of the folds' mean probability), as the stack stage does with
    ``pipeline.final=folds``. ``submission.json`` says how many folds were averaged.
    """
    t_start = time.perf_counter() if started_at is None else float(started_at)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    test_csv, model_dir, out_csv = Path(test_csv), Path(model_dir), Path(out_csv)
    work_dir = out_csv.parent / "arena_distill" if work_dir is None else Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        info = read_prompt_file(model_dir)
    except Exception:  # noqa: BLE001 (a broken prompt file must not stop the fallback)
        if not fail_safe:
            raise
        log.exception("cannot read %s/%s", model_dir, PROMPT_FILE)
        info = None
    prior = _prior(info)
    try:
        return _predict_csv(
            test_csv,
            model_dir,
            out_csv,
            work_dir=work_dir,
            info=info,
            prior=prior,
            sample_submission=sample_submission,
            adapter_dir=adapter_dir,
            prompt=prompt,
            model_cfg=model_cfg,
            settings=settings,
            t_start=t_start,
            stack=stack,
        )
    except Exception as exc:
        if not fail_safe:
            raise
        log.exception("prediction failed: writing the class prior for every id instead")
        return _fallback_submission(test_csv, out_csv, work_dir, sample_submission, prior, exc)


def _prior(info: Mapping[str, Any] | None) -> np.ndarray:
    """The class prior saved with the model (its training rows' class mix), else uniform."""
    values = (info or {}).get("prior")
    if values is None or len(values) != 3 or not np.isfinite(values).all() or min(values) <= 0:
        return np.full(3, 1 / 3)
    p = np.asarray(values, dtype=np.float64)
    return p / p.sum()


def _predict_csv(
    test_csv: Path,
    model_dir: Path,
    out_csv: Path,
    *,
    work_dir: Path,
    info: Mapping[str, Any] | None,
    prior: np.ndarray,
    sample_submission,
    adapter_dir,
    prompt,
    model_cfg,
    settings,
    t_start: float,
    stack: bool = True,
) -> Path:
    from arena_distill.predict import PredictRequest, predict_rows

    summary = DataSummary()
    rows = read_competition(test_csv, summary=summary, source="kaggle", on_bad_row="drop")
    if summary.counts:
        log.info("normalisation of %s: %s", test_csv, dict(summary.counts))
    malformed = {str(d["id"]): d["reason"] for d in summary.dropped}
    inputs = [test_csv]
    sample_ids = None
    if sample_submission is not None:
        sample_ids = read_sample_submission(sample_submission)["id"].tolist()
        inputs.append(Path(sample_submission))
    ids = list(sample_ids) if sample_ids is not None else _test_ids(rows, malformed)

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
    out_dir = work_dir / "predictions"
    adapters = fold_adapters(model_dir, info) if adapter_dir is None else []
    log.info("%d rows of %s -> %s (model %s, %s)", len(rows), test_csv, out_csv, model_dir, predict)
    predicted: dict[str, np.ndarray] = {}
    folds_info = None
    if len(rows):
        with tempfile.TemporaryDirectory(prefix="arena-tokens-") as cache_dir:
            request = PredictRequest(
                rows=rows,
                model_cfg=model_cfg,
                prompt=prompt_cfg,
                out_dir=out_dir,
                cache_dir=cache_dir,
                adapter_dir=adapter_dir,
                prior=prior.tolist(),
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
            if adapters:
                folds_info = predict_folds(
                    request, adapters, predict, work_dir / "fold_predictions"
                )
            else:
                predict_rows(request, predict)
        sub = read_submission(out_dir / "submission.csv")
        predicted = dict(zip(sub["id"].astype(str), sub.iloc[:, 1:].to_numpy(), strict=True))
    n_stacked = 0
    if stack and predicted and stacker_path(model_dir) is not None:
        stacked = stacked_predictions(
            stacker_path(model_dir), rows, out_dir / "predictions.parquet"
        )
        predicted.update(stacked)
        n_stacked = len(stacked)
        log.info("stacker %s applied to %d rows", stacker_path(model_dir), n_stacked)
    # an id without a prediction gets the prior: its row could not be parsed, or it is not
    # in the test file (a duplicate row's id keeps the prediction of its first row)
    reasons = {i: malformed.get(i, "not in the test file") for i in ids if i not in predicted}
    probs = np.array([predicted.get(i, prior) for i in ids], dtype=np.float64)
    _write(out_csv, ids, probs, sample_ids, float(predict.clip_eps))
    listed = [
        (d["id"], d["reason"], "prior" if d["id"] in reasons else "predicted (another row)")
        for d in summary.dropped
    ] + [(i, r, "prior") for i, r in reasons.items() if i not in malformed]
    if listed:
        log.warning("%d ids get the class prior: %s", len(reasons), dict(Counter(reasons.values())))
        pd.DataFrame(listed, columns=["id", "reason", "submitted"]).to_csv(
            work_dir / "malformed_rows.csv", index=False
        )
    write_json(
        work_dir / "submission.json",
        {
            "rows": len(ids),
            "predicted": len(ids) - len(reasons),
            "prior": len(reasons),
            "prior_reasons": dict(Counter(reasons.values())),
            "prior_probs": prior.tolist(),
            "fallback": False,
            "stacked": n_stacked,
            **({"folds": folds_info} if folds_info is not None else {}),
        },
    )
    log.info("submission written: %s (%d rows, %d at the prior)", out_csv, len(ids), len(reasons))
    return out_csv


def predict_folds(
    request: PredictRequest,
    adapters: Sequence[Path],
    settings: PredictSettings,
    folds_dir: Path,
) -> dict[str, Any]:
    """Every fold student of a ``final: folds`` package predicts ``request.rows`` (the base
    model with its adapter, through ``predict.predict_rows``, into ``folds_dir/fold_<k>``),
    then their mean goes to ``request.out_dir`` (``ensemble.write_ensemble``, the ensemble
    stage's files). Fold k's guard plans for the K − k folds left (``PredictRequest.passes``);
    with a time budget, a fold is skipped when the time left is less than the folds so far
    took on average (at least one fold runs), and a fold that fails after others succeeded
    ends the loop with those. Returns what ran: folds planned, averaged, skipped, the one
    that failed (None)."""
    from arena_distill.ensemble import average_predictions, ensemble_metrics, write_ensemble
    from arena_distill.predict import budget_seconds, predict_rows

    t_start = time.perf_counter() if request.t_start is None else float(request.t_start)
    budget = budget_seconds(settings.time_budget_hours, settings.time_budget_safety)
    tables, per_fold, skipped = [], [], []
    failed = None
    started = time.perf_counter()
    for k, adapter in enumerate(adapters):
        now = time.perf_counter()
        if tables and now - t_start + (now - started) / len(tables) > budget:
            skipped = list(range(k, len(adapters)))
            log.warning(
                "time budget: folds %s skipped (%.0f s used of %.0f s, %.0f s per fold): the "
                "submission averages %d of %d fold students",
                skipped,
                now - t_start,
                budget,
                (now - started) / len(tables),
                len(tables),
                len(adapters),
            )
            break
        out = folds_dir / f"fold_{k}"
        fold_request = dataclasses.replace(
            request, adapter_dir=adapter, out_dir=out, passes=len(adapters) - k
        )
        log.info("fold %d of %d: %s", k + 1, len(adapters), adapter)
        try:
            predict_rows(fold_request, settings)
        except Exception:
            if not tables:  # nothing to average: predict_csv's own fallback decides
                raise
            failed = k
            log.exception(
                "fold %d failed: the submission averages the %d folds done", k, len(tables)
            )
            break
        tables.append(pd.read_parquet(out / "predictions.parquet"))
        fold_metrics = json.loads((out / "metrics.json").read_text())
        per_fold.append(
            {
                "fold": k,
                "adapter": str(adapter),
                **{
                    key: fold_metrics.get(key)
                    for key in ("seconds", "inference_seconds", "tta", "max_length", "devices")
                },
                "guard": (fold_metrics.get("guard") or {}).get("action"),
            }
        )
    table = average_predictions(tables)
    inference_s = sum(f["inference_seconds"] or 0.0 for f in per_fold)
    info = {
        "planned": len(adapters),
        "averaged": len(tables),
        "skipped": skipped,
        "failed": failed,
    }
    metrics = {
        **ensemble_metrics(table, "test", len(tables)),
        "seconds": round(time.perf_counter() - t_start, 3),
        "rows_per_s": len(table) * len(tables) / inference_s if inference_s > 0 else None,
        "devices": per_fold[0]["devices"],
        "tta": all(f["tta"] for f in per_fold),
        "max_length": min(f["max_length"] for f in per_fold),
        "guard": {"action": ", ".join(f"fold_{f['fold']}: {f['guard']}" for f in per_fold)},
        "folds": {**info, "per_fold": per_fold},
    }
    write_ensemble(
        request.out_dir,
        table,
        metrics=metrics,
        # the predicted rows only, as predict_rows writes them: predict_csv fills in the ids
        # without a prediction and checks the submission against the sample's ids
        sample_ids=None,
        clip_eps=float(settings.clip_eps),
        manifest={
            "stage": "ensemble",
            "config": {**dict(request.manifest_config or {}), "final": FOLDS_FINAL},
            "inputs": [folds_dir / f"fold_{f['fold']}" / "manifest.json" for f in per_fold],
            "outputs": {"rows": len(table), "models": len(tables), **info},
        },
    )
    return info


def stacker_path(model_dir: str | Path) -> Path | None:
    """The model folder's ``stacker/`` (the stack stage's level-2 model), if it has one."""
    from arena_distill.stacking import STACKER_DIR, STACKER_FILE

    folder = Path(model_dir) / STACKER_DIR
    return folder if (folder / STACKER_FILE).is_file() else None


def stacked_predictions(
    stacker_dir: str | Path, rows: pd.DataFrame, predictions: str | Path
) -> dict[str, np.ndarray]:
    """id -> the stacker's probabilities (swap-TTA when the predictions have both
    orientations) for every row of ``rows`` whose logits in ``predictions`` (the predict
    engine's table) are finite; a duplicate id keeps its first row."""
    from arena_distill.layout import LOGIT_COLS, SWAP_LOGIT_COLS
    from arena_distill.stacking import load_stacker_dir

    shipped = load_stacker_dir(stacker_dir)
    preds = pd.read_parquet(predictions)
    preds["id"] = preds["id"].astype(str)
    preds = preds.drop_duplicates("id").set_index("id")
    rows = rows.assign(id=rows["id"].astype(str)).drop_duplicates("id")
    rows = rows[rows["id"].isin(preds.index)].reset_index(drop=True)
    cols = list(LOGIT_COLS)
    has_swap = set(SWAP_LOGIT_COLS) <= set(preds.columns)
    if has_swap:
        cols += list(SWAP_LOGIT_COLS)
    values = preds.loc[rows["id"], cols].to_numpy(dtype=np.float64)
    finite = np.isfinite(values).all(axis=1)
    rows, values = rows[finite].reset_index(drop=True), values[finite]
    if rows.empty:
        return {}
    logits, swap = values[:, :3], (values[:, 3:] if has_swap else None)
    p, tta = shipped.predict(rows, logits, swap)
    final = tta if tta is not None else p
    return dict(zip(rows["id"], final, strict=True))


def _test_ids(rows: pd.DataFrame, malformed: Mapping[str, str]) -> list[str]:
    """Every id of the test file: the parsed rows' and the malformed rows' (no duplicates)."""
    return list(dict.fromkeys([*rows["id"].astype(str), *malformed]))


def _write(out_csv: Path, ids: list[str], probs: np.ndarray, sample_ids, clip_eps: float) -> None:
    """The submission, written atomically and validated before and after."""
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp-{os.getpid()}")
    write_submission(tmp, ids, probs, expected_ids=ids, sample_ids=sample_ids, clip_eps=clip_eps)
    os.replace(tmp, out_csv)
    validate_submission(read_submission(out_csv), ids, sample_ids=sample_ids, clip_eps=clip_eps)


def _fallback_submission(
    test_csv: Path,
    out_csv: Path,
    work_dir: Path,
    sample_submission,
    prior: np.ndarray,
    exc: BaseException,
) -> Path:
    """The class prior for every id (the sample submission's, else the test file's ``id``
    column read as plain text): the submission when prediction itself failed."""
    import traceback

    ids = None
    if sample_submission is not None:
        try:
            ids = read_sample_submission(sample_submission)["id"].tolist()
        except Exception:  # noqa: BLE001
            log.exception("cannot read the sample submission %s", sample_submission)
    if ids is None:
        raw = pd.read_csv(test_csv, usecols=["id"], dtype=str, keep_default_na=False)
        ids = list(dict.fromkeys(raw["id"].str.strip()))
    probs = np.tile(prior, (len(ids), 1))
    _write(out_csv, ids, probs, None, 1e-6)
    write_json(
        work_dir / "fallback.json",
        {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exception(exc),
            "rows": len(ids),
            "prior_probs": prior.tolist(),
        },
    )
    write_json(
        work_dir / "submission.json",
        {"rows": len(ids), "predicted": 0, "prior": len(ids), "fallback": True},
    )
    log.error("fallback submission written: %s (%d rows at the prior)", out_csv, len(ids))
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


def plan_csv(
    test_csv: str | Path,
    model_dir: str | Path,
    *,
    device: str | None = None,
    n_devices: int | None = None,
    settings: Mapping[str, Any] | None = None,
    fixed_seconds: float = 300.0,
) -> str:
    """The time plan of :func:`predict_csv` on ``test_csv`` (``planner``), as a printable
    table, before any GPU work: the test rows tokenised with the packaged model's tokenizer and
    prompt, FLOPs from its ``config.json``, the device's rate from ``planner.DEVICES``
    (``device`` default: the visible GPU's kind, ``t4`` for a Tesla T4; ``cpu`` without one)
    times ``n_devices`` (default: every visible GPU). The guard inside :func:`predict_csv`
    then measures the real rate on the first batches and decides; this is the forecast.

    A ``final: folds`` package costs one forward pass per fold student and row: the projection
    counts K passes, and when no plan fits the budget a warning says so (the predictor then
    averages only the folds that fit, at least one)."""
    import torch

    from arena_distill import planner
    from arena_distill.models.factory import load_tokenizer
    from arena_distill.predict import budget_seconds, candidate_lengths
    from arena_distill.tokens import encoding_map, tokenize_both_orientations

    model_dir = Path(model_dir)
    info = read_prompt_file(model_dir)
    predict = prediction_settings(info, settings)
    prompt_cfg = _prompt(None, info, model_dir)
    rows = read_competition(Path(test_csv), summary=DataSummary(), on_bad_row="drop")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device is None:
        name = torch.cuda.get_device_name(0).lower() if gpus else "cpu"
        device = next((k for k in planner.DEVICES if k in name), "t4" if gpus else "cpu")
    rate = planner.DEVICES[device]
    n = n_devices or max(gpus, 1)
    lengths_at = candidate_lengths(
        predict.max_length or prompt_cfg.max_length, predict.fallback_max_length
    )
    longest = lengths_at[0]
    tokenizer = load_tokenizer({"name_or_path": str(model_dir)})
    with tempfile.TemporaryDirectory(prefix="arena-plan-") as cache:
        enc = encoding_map(
            tokenize_both_orientations(
                rows,
                tokenizer,
                dataclasses.replace(prompt_cfg, max_length=longest),
                cache_dir=cache,
            )
        )
    ids = rows["id"].astype(str).tolist()
    lengths = {o: [len(enc[(i, o)]) for i in ids] for o in (False, True)}
    n_models = len(fold_adapters(model_dir, info)) or 1
    plans = planner.project(
        lengths,
        planner.Architecture.of(model_dir),
        max_lengths=lengths_at,
        flops_per_s=rate.flops_per_s,
        n_devices=n,
        batch_size=predict.batch_size,
        max_tokens=predict.max_tokens_per_batch,
        budget_s=budget_seconds(predict.time_budget_hours, predict.time_budget_safety),
        fixed_seconds=fixed_seconds,
        scale=float(n_models),
    )
    header = f"{len(ids)} rows of {test_csv} on {n} x {device} ({rate.flops_per_s / 1e12:.2f} TFLOP/s each)"
    if n_models > 1:
        header += (
            f"; final model: the {n_models} fold students averaged (final: folds), "
            f"{n_models} forward passes per row"
        )
    chosen = planner.choose(plans)
    text = planner.render(plans, chosen, header)
    if n_models > 1 and chosen is None:
        text += (
            f"\nWARNING: the {n_models} fold students do not fit the time budget with any plan: "
            "the predictor averages only the folds that fit (at least one). Ship "
            "pipeline.final=merge or full (one pass per row), or fewer folds, to use them all."
        )
    return text


def read_metrics(out_csv: str | Path, work_dir: str | Path | None = None) -> dict[str, Any]:
    """What the :func:`predict_csv` call that wrote ``out_csv`` measured: the prediction's
    ``metrics.json`` (when prediction ran), ``submission`` (how every id was obtained) and,
    after a failure, ``failure`` (the error, from ``fallback.json``)."""
    work_dir = Path(out_csv).parent / "arena_distill" if work_dir is None else Path(work_dir)
    out: dict[str, Any] = {}
    for key, path in (
        (None, work_dir / "predictions" / "metrics.json"),
        ("submission", work_dir / "submission.json"),
        ("failure", work_dir / "fallback.json"),
    ):
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if key is None:
            out.update(data)
        else:
            out[key] = data
    return out
