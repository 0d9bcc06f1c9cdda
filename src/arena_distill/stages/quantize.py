"""Stage ``quantize``: the merged classifier -> an 8-bit (or fp16) folder, head kept, drift measured.

Reads ``stages.quantize.source`` (default ``${run_dir}/merged/``, the merge stage's output: any
full Hugging Face sequence-classification folder with its tokenizer) and the data stage's
``train.parquet`` / ``folds.csv``. ``stages.quantize.method`` (``quantize_methods``):

* ``gptq``: transformers' ``GPTQConfig`` (gptqmodel, ``backend``) on ``n_calibration`` cv rows
  drawn with ``seed``, rendered and tokenised with the run's prompt config (the inference
  template) and cut to ``calibration_max_length`` tokens (at most the model's positions);
* ``bnb_int8``: bitsandbytes LLM.int8 (``BitsAndBytesConfig(load_in_8bit=True)``), no
  calibration, on the GPU when there is one;
* ``none``: the source as float16.

The head (``score`` / ``classifier``) stays an unquantized ``nn.Linear`` with the source's
weights (``none``: cast to float16), which the stage checks on the reloaded output; a hybrid
head (``model.head: hybrid``, recorded in the source's ``config.json``) likewise stays the
unquantized ``models.hybrid.HybridHead`` with the source's tensors, and the drift is measured
with the rows' length features.

Writes ``stages.quantize.out_dir`` (default ``${run_dir}/quantized/``), atomically: the model
folder (``config.json`` with its ``quantization_config`` and ``arena_distill.quantize_method``,
``model.safetensors``, tokenizer; reload with ``AutoModelForSequenceClassification
.from_pretrained``), ``metrics.json`` (``method``; logit drift against the source on the
holdout rows, or fold 0's validation rows when there is no holdout; for GPTQ the group sizes
used and the calibration, None for the other methods; seconds) and ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from arena_distill import faults, fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.folds import split_by_fold
from arena_distill.encode import prompt_config
from arena_distill.features import folder_head, head_features
from arena_distill.io import (
    StageInputError,
    StageTimer,
    atomic_dir,
    write_json,
    write_manifest,
)
from arena_distill.layout import CV, FOLDS, HOLDOUT, TRAIN, load_run_data
from arena_distill.quantize import (
    CPU_WORKERS_ENV,
    QuantizationError,
    block_name,
    calibration_dataset,
    drift_logits,
    drift_metrics,
    group_report,
    head_intact,
    head_state,
    linear_in_features,
    load_classifier,
    model_positions,
    quantize_model,
    quantized_layers,
    save_quantized,
    usable_cpus,
)
from arena_distill.quantize_methods import (
    BNB_INT8_BITS,
    NONE_DTYPE,
    folder_method,
    load_fp16,
    quantize_bnb_int8,
    save_model,
    write_marker,
)
from arena_distill.text import encode_table

log = logging.getLogger(__name__)

# bits of the stored weights of the methods without a ``bits`` setting
BITS = {"bnb_int8": BNB_INT8_BITS, "none": 16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_source(source: Path) -> Path:
    """A full model folder (config.json and weights) or StageInputError."""
    hint = "run `arena-distill merge` (make merge) first, or set stages.quantize.source"
    if not source.is_dir():
        raise StageInputError(f"quantize: source model folder {source} does not exist; {hint}")
    if not (source / "config.json").is_file():
        raise StageInputError(f"quantize: {source} has no config.json (not a model folder); {hint}")
    if not any((source / f).is_file() for f in WEIGHT_FILES):
        raise StageInputError(
            f"quantize: {source} holds no full weights ({' / '.join(WEIGHT_FILES)}); an adapter "
            f"folder must be merged first; {hint}"
        )
    return source


def eval_rows(run) -> tuple[str, object]:
    """The holdout rows if the folds file has any, else fold 0's validation rows."""
    rows = run.rows(HOLDOUT)
    if not rows.empty:
        return "holdout", rows
    return "fold_0_valid", split_by_fold(run.train, run.folds, 0)[1]


def gptq_inputs(stage, run_data, prompt, positions, tokenizer) -> dict:
    """The GPTQ calibration rows (tokenised as prediction does) and their length."""
    settings = stage.gptq()
    seqlen = min(settings.calibration_max_length, positions or settings.calibration_max_length)
    if seqlen < settings.calibration_max_length:
        log.info(
            "calibration length %d clamped to the model's %d positions",
            settings.calibration_max_length,
            seqlen,
        )
    dataset = calibration_dataset(
        run_data.rows(CV), tokenizer, prompt, settings.n_calibration, settings.seed, seqlen
    )
    return {"settings": settings, "seqlen": seqlen, "dataset": dataset}


def warn_narrow_layers(widths: dict[str, int], group_size: int) -> int:
    narrow = {n: w for n, w in widths.items() if w < group_size}
    if narrow:
        log.warning(
            "%d of %d linear layers have in_features < group_size %d (e.g. %s: %d); gptqmodel "
            "quantizes them with one group per row (see group_size_effective in metrics.json)",
            len(narrow),
            len(widths),
            group_size,
            next(iter(narrow)),
            next(iter(narrow.values())),
        )
    return len(narrow)


def gptq_metrics(gptq: dict | None, reloaded, narrow: int) -> dict:
    """The GPTQ-only metrics (all None for the other methods: the keys stay the same)."""
    if gptq is None:
        return dict.fromkeys(GPTQ_KEYS)
    settings, dataset = gptq["settings"], gptq["dataset"]
    cal_lengths = [len(x["input_ids"][0]) for x in dataset]
    return {
        "group_size": settings.group_size,
        **group_report(reloaded, settings.group_size),
        "layers_below_group_size_in_source": narrow,
        "backend": settings.backend,
        "n_calibration": len(dataset),
        "n_calibration_requested": settings.n_calibration,
        "calibration_max_length": gptq["seqlen"],
        "calibration_max_length_requested": settings.calibration_max_length,
        "calibration_tokens_mean": float(np.mean(cal_lengths)),
        "calibration_tokens_max": int(max(cal_lengths)),
        "calibration_tokens": int(sum(cal_lengths)),
        "gptqmodel_cpu_workers": int(os.environ.get(CPU_WORKERS_ENV, usable_cpus())),
    }


GPTQ_KEYS = (
    "group_size",
    "group_size_effective",
    "layers_not_at_group_size",
    "layers_below_group_size_in_source",
    "backend",
    "n_calibration",
    "n_calibration_requested",
    "calibration_max_length",
    "calibration_max_length_requested",
    "calibration_tokens_mean",
    "calibration_tokens_max",
    "calibration_tokens",
    "gptqmodel_cpu_workers",
)


def produce(method: str, source: Path, stage, tokenizer, gptq: dict | None):
    """The model of ``method`` from ``source`` (in memory, not saved yet)."""
    if method == "gptq":
        return quantize_model(
            source, tokenizer, gptq["dataset"], gptq["settings"], seqlen=gptq["seqlen"]
        )
    if method == "bnb_int8":
        return quantize_bnb_int8(source, stage.dtype)
    return load_fp16(source)


def save(method: str, model, tokenizer, out: Path) -> None:
    if method == "gptq":
        save_quantized(model, tokenizer, out)
        write_marker(out, method)
    else:
        save_model(model, tokenizer, out, method)


def run(cfg: DictConfig) -> Path:
    from transformers import AutoConfig

    from arena_distill.models.factory import load_tokenizer

    stage = config.stage(cfg, "quantize")
    method = stage.method
    source = check_source(Path(stage.source))
    out_dir = Path(stage.out_dir)
    timer = StageTimer()

    run_data = load_run_data(cfg)
    accepted = fingerprint.check_data(cfg, run_data.data_dir)
    # a stage output (merged/): its files and upstream (the folds it merged) as they are now
    accepted += fingerprint.check_inputs([source], cfg, ())
    data_files = [run_data.data_dir / TRAIN, run_data.data_dir / FOLDS]
    stamp = fingerprint.stamp(
        fingerprint.make(
            "quantize",
            settings=fingerprint.settings(
                cfg, ("prompt", "stages.quantize", *fingerprint.DATA_SPLIT)
            ),
            files=fingerprint.file_hashes(
                [
                    *data_files,
                    *([] if (source / "manifest.json").is_file() else [source / "config.json"]),
                ],
                cfg.run_dir,
            ),
            upstream=fingerprint.upstream_ids([source], cfg.run_dir),
        ),
        accepted,
    )
    prompt = prompt_config(cfg)
    model_config = AutoConfig.from_pretrained(str(source))
    positions = model_positions(model_config)
    eval_length = min(prompt.max_length, positions or prompt.max_length)
    tokenizer = load_tokenizer({"name_or_path": str(source)})
    gptq = gptq_inputs(stage, run_data, prompt, positions, tokenizer) if method == "gptq" else None

    split_name, rows = eval_rows(run_data)
    if stage.eval_max_rows:
        rows = rows.head(int(stage.eval_max_rows))
    if rows.empty:
        raise StageInputError("quantize: no held-out rows (holdout or fold 0) to measure drift on")
    eval_ids = encode_table(rows, tokenizer, dataclasses.replace(prompt, max_length=eval_length))
    # a hybrid head's input (the source folder records one): the rows' own features
    eval_features = head_features(rows) if folder_head(source) is not None else None
    labels = rows["label"].to_numpy()
    labels = labels.astype(np.int64) if not rows["label"].isna().any() else None
    pad_id = tokenizer.pad_token_id
    batch = int(stage.eval_batch_size)
    timer.lap("prepare")

    # The source first, then freed: only one full model in memory at a time.
    source_model = load_classifier(source, stage.dtype)
    head_name, head_weights = head_state(source_model)
    widths = linear_in_features(source_model, block_name(model_config))
    source_logits = drift_logits(source_model, eval_ids, pad_id, batch, eval_features)
    del source_model
    gc.collect()
    narrow = warn_narrow_layers(widths, stage.group_size) if gptq else 0
    if method == "none":  # the head is saved in float16 too: compare with the source's cast
        head_weights = {k: v.to(getattr(torch, NONE_DTYPE)) for k, v in head_weights.items()}
    timer.lap("source_logits")

    model = produce(method, source, stage, tokenizer, gptq)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_id
    timer.lap("quantize")
    faults.point("quantize.quantized")

    with atomic_dir(out_dir) as tmp:
        save(method, model, tokenizer, tmp)
        del model
        gc.collect()
        timer.lap("save")
        faults.point("quantize.save")
        # Measure what the predict stage will load: the saved folder, reloaded.
        reloaded = load_classifier(tmp)
        ok, why = head_intact(reloaded, head_weights)
        if not ok:
            raise QuantizationError(f"the {method} head did not survive quantization: {why}")
        layers = quantized_layers(reloaded)
        if method != "none" and not layers:
            raise QuantizationError(f"{method}: the reloaded {tmp} has no quantized layer")
        saved_method = folder_method(tmp)
        if saved_method != method:
            raise QuantizationError(f"{tmp} holds a {saved_method!r} model, not {method!r}")
        method_metrics = gptq_metrics(gptq, reloaded, narrow)
        quant_logits = drift_logits(reloaded, eval_ids, pad_id, batch, eval_features)
        del reloaded
        timer.lap("quantized_logits")

        drift = drift_metrics(source_logits, quant_logits, labels)
        if not drift["finite"]:
            raise QuantizationError(f"the {method} model gives non-finite logits")
        metrics = {
            "method": method,
            "architecture": (model_config.architectures or [model_config.model_type])[0],
            "model_type": model_config.model_type,
            "eval_split": split_name,
            "eval_max_length": eval_length,
            **drift,
            "bits": BITS[method] if gptq is None else gptq["settings"].bits,
            **method_metrics,
            "quantized_layers": len(layers),
            "block_name_to_quantize": block_name(model_config) if gptq else None,
            "head": head_name,
            "head_intact": ok,
            "seconds": {**timer.phases, "total": timer.to_dict()["seconds"]},
        }
        write_json(tmp / "metrics.json", metrics)
        write_manifest(
            tmp,
            stage="quantize",
            config={
                "prompt": OmegaConf.to_container(cfg.prompt, resolve=True),
                "stage": config.to_dict(stage),
            },
            inputs=[
                p
                for p in (
                    source / "config.json",
                    source / "manifest.json",
                    run_data.data_dir / TRAIN,
                    run_data.data_dir / FOLDS,
                )
                if p.exists()
            ],
            outputs={
                "method": method,
                "metrics": metrics,
                "calibration_rows": metrics["n_calibration"] or 0,
                "calibration_tokens": metrics["calibration_tokens"] or 0,
            },
            timer=timer,
            extra={"source": str(source), **stamp},
        )
    log.info(
        "%s: %s -> %s: relative logit error %.4f, max |diff| %.4f on %d %s rows",
        method,
        source,
        out_dir,
        metrics["relative_error"],
        metrics["max_abs_logit_diff"],
        metrics["rows"],
        split_name,
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
