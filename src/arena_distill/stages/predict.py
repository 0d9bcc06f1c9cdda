"""Stage ``predict``: swap-TTA inference of one model and the submission file.

Reads ``${run_dir}/data/`` (``test.parquet``, or with ``split=holdout`` the labelled holdout rows
of ``train.parquet`` per ``folds.csv``), the model folder ``stages.predict.model_dir`` (default
``${run_dir}/quantized``; a merged or any fine-tuned classifier folder works too) and optionally a
peft adapter ``stages.predict.adapter_dir`` on top of it (a teacher fold, for OOF checks).
Writes ``stages.predict.out_dir`` (default ``${run_dir}/predictions/``): ``submission.csv``
(validated against the test ids and the sample submission's), ``predictions.parquet`` (``id``,
``label`` when known, the columns of ``train.prediction_table`` — ``logit_*``, ``p_*``,
``swap_logit_*`` (mirrored back), ``tta_p_*`` — plus ``final_p_*``, the submitted
probabilities, and ``postprocess_rule``), ``metrics.json`` (``rows_per_s`` counts ids;
``throughput`` counts every sequence predicted, both orientations under swap-TTA) and
``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from arena_distill.config import hydra_app
from arena_distill.data.folds import read_folds
from arena_distill.data.readers import read_sample_submission
from arena_distill.data.tableio import load_table
from arena_distill.io import (
    StageInputError,
    StageTimer,
    atomic_dir,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import PROB_COLS, TTA_PROB_COLS, prediction_table, score_predictions
from arena_distill.metrics import accuracy, inference_throughput, log_loss
from arena_distill.models.factory import load_tokenizer
from arena_distill.predict import (
    EMPTY_A,
    IDENTICAL,
    ORIGINAL,
    SWAPPED,
    ModelSpec,
    Plan,
    budget_seconds,
    guard_decision,
    identical_answers,
    load_model,
    measure_throughput,
    plan_tokens,
    postprocess,
    resolve_devices,
    run_inference,
)
from arena_distill.stages.common import data_key, prompt_config
from arena_distill.submission import read_submission, write_submission
from arena_distill.text import PromptConfig
from arena_distill.tokens import encoding_map, tokenize_both_orientations

log = logging.getLogger(__name__)

SPLITS = ("test", "holdout")
FINAL_COLS = ("final_p_a", "final_p_b", "final_p_tie")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_rows(cfg: DictConfig, data_dir: Path, split: str) -> tuple[pd.DataFrame, list[Path], str]:
    """The rows to predict, the files they came from and their token-cache key."""
    if split == "test":
        path = data_dir / "test.parquet"
        if not path.exists():
            raise StageInputError(f"{path} is missing: the data config has no test set")
        return load_table(path), [path], data_key(path)
    if split == "holdout":
        train, folds_path = data_dir / "train.parquet", data_dir / "folds.csv"
        folds = read_folds(folds_path)
        ids = set(folds.loc[folds["split"] == "holdout", "id"])
        if not ids:
            raise StageInputError(f"{folds_path} has no holdout rows (data.holdout_frac is 0?)")
        table = load_table(train)
        rows = table[table["id"].isin(ids)].reset_index(drop=True)
        return rows, [train, folds_path], data_key(train, folds_path) + ":holdout"
    raise ValueError(f"stages.predict.split must be one of {SPLITS}, got {split!r}")


def _tokenizer_dir(scfg: DictConfig, cfg: DictConfig, model_dir: Path) -> str:
    if scfg.get("tokenizer_dir"):
        return str(scfg.tokenizer_dir)
    if any((model_dir / f).exists() for f in TOKENIZER_FILES):
        return str(model_dir)
    return str(cfg.model.name_or_path)


def _labelled(rows: pd.DataFrame) -> bool:
    return "label" in rows.columns and len(rows) > 0 and bool(rows["label"].notna().all())


def _scores(table: pd.DataFrame, pp_probs: np.ndarray, final: np.ndarray) -> dict:
    labels = table["label"].to_numpy(dtype=np.int64)
    out = score_predictions(table)
    if set(TTA_PROB_COLS) <= set(table.columns):
        out["accuracy_tta"] = accuracy(table[list(TTA_PROB_COLS)].to_numpy(), labels)
    out["log_loss_postprocessed"] = log_loss(pp_probs, labels)
    out["accuracy_postprocessed"] = accuracy(pp_probs, labels)
    out["log_loss_submitted"] = log_loss(final, labels)
    return out


@dataclass
class PredictSettings:
    """The prediction settings (the fields of ``stages.predict`` that are not paths).

    ``max_length`` None: the prompt config's. ``devices``: ``auto``, a device name or a list.
    ``time_budget_hours`` None turns the guard off."""

    tta: bool = True
    max_length: int | None = 2000
    batch_size: int = 8
    max_tokens_per_batch: int | None = None
    devices: Any = "auto"
    dtype: str = "auto"
    progress: bool = True
    time_budget_hours: float | None = 9.0
    time_budget_safety: float = 0.9
    fallback_max_length: int | None = 1024
    guard_batches: int = 4
    postprocess: bool = False
    empty_answer: tuple[float, ...] = EMPTY_A
    identical_answers: tuple[float, ...] = IDENTICAL
    clip_eps: float = 1.0e-6

    @classmethod
    def from_config(cls, scfg: DictConfig | Mapping[str, Any]) -> PredictSettings:
        """From a ``stages.predict`` block (unknown keys, e.g. the paths, are ignored)."""
        d = OmegaConf.to_container(scfg, resolve=True) if OmegaConf.is_config(scfg) else dict(scfg)
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known and k != "postprocess"}
        pp = d.get("postprocess") or {}
        if isinstance(pp, Mapping):
            kw["postprocess"] = bool(pp.get("enabled", False))
            for key in ("empty_answer", "identical_answers"):
                if pp.get(key) is not None:
                    kw[key] = tuple(float(x) for x in pp[key])
        elif pp is not None:
            kw["postprocess"] = bool(pp)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["empty_answer"] = list(self.empty_answer)
        d["identical_answers"] = list(self.identical_answers)
        return d


def check_model_dir(model_dir: str | Path, adapter_dir: str | Path | None = None) -> None:
    """``StageInputError`` unless ``model_dir`` is a model folder (and ``adapter_dir`` an adapter)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise StageInputError(
            f"{model_dir} is not a model folder (no config.json); set stages.predict.model_dir "
            "(the quantize or merge stage's output, or any classifier folder)"
        )
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise StageInputError(f"{adapter_dir} is not a peft adapter (no adapter_config.json)")


def predict_rows(
    rows: pd.DataFrame,
    *,
    model_cfg: Mapping[str, Any],
    prompt: PromptConfig,
    settings: PredictSettings,
    out_dir: str | Path,
    cache_dir: str | Path,
    adapter_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    data_key: str | None = None,
    sample_ids: Sequence[str] | None = None,
    split: str = "test",
    inputs: Sequence[Path] = (),
    manifest_config: Mapping[str, Any] | None = None,
    t_start: float | None = None,
) -> Path:
    """Predict normalised ``rows`` with the model of ``model_cfg`` and write ``out_dir``.

    The core of the stage, without the run folder: ``rows`` is a normalised table (as the data
    stage writes; ``label`` is scored when every row has one), ``model_cfg["name_or_path"]`` the
    model folder, ``prompt`` the template the model was trained with. Writes ``submission.csv``
    (validated against the row ids and ``sample_ids``), ``predictions.parquet``,
    ``metrics.json`` and ``manifest.json`` into ``out_dir`` atomically. ``t_start`` (a
    ``time.perf_counter()`` value) is when the time budget started (default: now).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    timer = StageTimer()
    ids = rows["id"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        raise StageInputError(f"duplicate ids in the {split} rows")
    model_cfg = dict(model_cfg)
    model_dir = Path(model_cfg["name_or_path"])
    check_model_dir(model_dir, adapter_dir)
    spec = ModelSpec(
        model_cfg, None if adapter_dir is None else str(adapter_dir), str(settings.dtype)
    )
    tokenizer = load_tokenizer({**model_cfg, "name_or_path": str(tokenizer_dir or model_dir)})

    def encode(max_length: int) -> dict[bool, list[list[int]]]:
        enc = encoding_map(
            tokenize_both_orientations(
                rows,
                tokenizer,
                dataclasses.replace(prompt, max_length=max_length),
                cache_dir=cache_dir,
                data_key=data_key,
            )
        )
        return {o: [enc[(i, o)] for i in ids] for o in (ORIGINAL, SWAPPED)}

    max_length = int(settings.max_length or prompt.max_length)
    enc = encode(max_length)
    timer.lap("tokenize")
    devices = resolve_devices(settings.devices)
    batch_size = int(settings.batch_size)
    cfg_max_tokens = settings.max_tokens_per_batch
    requested = Plan(max_length, bool(settings.tta))
    log.info("%d %s rows, devices %s, plan %s", len(ids), split, devices, requested)

    decision = None
    model = None
    if settings.time_budget_hours is not None and ids:
        model, _ = load_model(spec, devices[0])
        max_tokens = int(cfg_max_tokens or batch_size * max_length)
        measured = measure_throughput(
            model,
            enc[ORIGINAL],
            pad_token_id=int(model.config.pad_token_id),
            batch_size=batch_size,
            max_tokens=max_tokens,
            n_batches=int(settings.guard_batches),
            device=devices[0],
        )
        lengths = {o: [len(s) for s in enc[o]] for o in enc}
        fallback = settings.fallback_max_length
        lens = {max_length, int(fallback) if fallback else max_length}
        plans = [Plan(m, t) for m in lens for t in (True, False)]
        tokens = {
            p: plan_tokens(lengths, p, batch_size, int(cfg_max_tokens) if cfg_max_tokens else None)
            for p in plans
        }
        decision = guard_decision(
            requested=requested,
            tokens=tokens,
            tokens_per_s=max(measured["padded_tokens_per_s"], 1e-9),
            budget_s=budget_seconds(settings.time_budget_hours, settings.time_budget_safety),
            elapsed_s=time.perf_counter() - t_start,
            n_devices=len(devices),
            fallback_max_length=int(fallback) if fallback else None,
        )
        decision_info = {**decision.to_dict(), "measured": measured}
        log_fn = log.info if decision.action == "none" else log.warning
        log_fn(
            "time-budget guard: %s -> plan %s (estimated %.0f s of %.0f s at %.0f tokens/s)",
            decision.action,
            decision.plan,
            decision.estimated_s,
            decision.budget_s,
            decision.tokens_per_s,
        )
        if len(devices) > 1:  # every worker loads its own copy
            del model
            model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        timer.lap("guard")
    else:
        decision_info = None

    plan = decision.plan if decision is not None else requested
    if plan.max_length != max_length:
        enc = encode(plan.max_length)
        timer.lap("tokenize_fallback")
    result = run_inference(
        spec,
        enc,
        devices=devices,
        tta=plan.tta,
        batch_size=batch_size,
        max_tokens=int(cfg_max_tokens or batch_size * plan.max_length),
        progress=bool(settings.progress),
        model=model,
    )
    timer.lap("inference")
    # every sequence predicted: both orientations of a row under swap-TTA
    throughput = inference_throughput(
        sum(int(s["items"]) for s in result.shards), result.tokens, result.seconds
    )

    labelled = _labelled(rows)
    extra = {"label": rows["label"].astype("int64").to_numpy()} if labelled else {}
    table = prediction_table(ids, result.logits[ORIGINAL], result.logits.get(SWAPPED), **extra)
    probs = table[list(TTA_PROB_COLS if plan.tta else PROB_COLS)].to_numpy(dtype=np.float64)
    pp_probs, rule, pp_counts = postprocess(
        probs,
        empty_a=rows["empty_a"].to_numpy(dtype=bool),
        empty_b=rows["empty_b"].to_numpy(dtype=bool),
        identical=identical_answers(rows),
        empty_answer=list(settings.empty_answer),
        identical_answers=list(settings.identical_answers),
    )
    final = pp_probs if settings.postprocess else probs
    table[list(FINAL_COLS)] = final
    table["postprocess_rule"] = rule if settings.postprocess else ""

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        sub = write_submission(
            tmp / "submission.csv",
            ids,
            final,
            expected_ids=ids,
            sample_ids=sample_ids,
            clip_eps=float(settings.clip_eps),
        )
        table.to_parquet(tmp / "predictions.parquet", index=False)
        seconds = time.perf_counter() - t_start
        metrics = {
            "split": str(split),
            "rows": len(ids),
            "seconds": round(seconds, 3),
            "inference_seconds": round(result.seconds, 3),
            "rows_per_s": len(ids) / result.seconds if result.seconds > 0 else None,
            "tokens": result.tokens,
            "padded_tokens": result.padded,
            "padding_share": 1 - result.tokens / result.padded if result.padded else 0.0,
            "tokens_per_s": result.tokens / result.seconds if result.seconds > 0 else None,
            "throughput": throughput,
            "devices": devices,
            "shards": result.shards,
            "tta": plan.tta,
            "max_length": plan.max_length,
            "requested": {"tta": requested.tta, "max_length": requested.max_length},
            "guard": decision_info,
            "postprocess": {"enabled": bool(settings.postprocess), "rows_changed": pp_counts},
            "model_dir": str(model_dir),
            "adapter_dir": None if adapter_dir is None else str(adapter_dir),
        }
        if labelled:
            submitted = read_submission(tmp / "submission.csv")
            metrics["scores"] = _scores(table, pp_probs, submitted.iloc[:, 1:].to_numpy())
            log.info("scores: %s", metrics["scores"])
        write_json(tmp / "metrics.json", metrics)
        small_inputs = [*inputs, model_dir / "config.json"]
        if adapter_dir is not None:
            small_inputs.append(Path(adapter_dir) / "adapter_config.json")
        write_manifest(
            tmp,
            stage="predict",
            config=dict(
                manifest_config
                or {"model": model_cfg, "prompt": prompt.to_dict(), "stage": settings.to_dict()}
            ),
            inputs=small_inputs,
            outputs={
                "rows": len(sub),
                "tta": plan.tta,
                "max_length": plan.max_length,
                "throughput": throughput,
            },
            timer=timer,
        )
    log.info(
        "%d predictions written to %s (%.1f rows/s)", len(ids), out_dir, metrics["rows_per_s"] or 0
    )
    return out_dir


def run(cfg: DictConfig) -> Path:
    scfg = cfg.stages.predict
    t_start = time.perf_counter()
    data_dir = require_stage_output(cfg.stages.data.out_dir, stage="data")
    rows, inputs, key = load_rows(cfg, data_dir, str(scfg.split))
    model_dir = Path(scfg.model_dir)
    adapter_dir = scfg.get("adapter_dir")
    check_model_dir(model_dir, adapter_dir)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["name_or_path"] = str(model_dir)
    sample_ids = None
    if scfg.split == "test" and cfg.data.get("sample_submission"):
        sample_path = Path(cfg.data.sample_submission)
        if sample_path.exists():
            sample_ids = read_sample_submission(sample_path)["id"].tolist()
            inputs.append(sample_path)
    return predict_rows(
        rows,
        model_cfg=model_cfg,
        prompt=prompt_config(cfg),
        settings=PredictSettings.from_config(scfg),
        out_dir=scfg.out_dir,
        cache_dir=cfg.stages.tokenize.cache_dir,
        adapter_dir=adapter_dir,
        tokenizer_dir=_tokenizer_dir(scfg, cfg, model_dir),
        data_key=key,
        sample_ids=sample_ids,
        split=str(scfg.split),
        inputs=inputs,
        manifest_config={
            "model": model_cfg,
            "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
            "stage": OmegaConf.to_container(scfg, resolve=True),
        },
        t_start=t_start,
    )


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
