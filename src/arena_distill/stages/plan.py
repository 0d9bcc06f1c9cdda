"""Stage ``plan``: how long the predict stage's settings take on a device, before they run.

Reads the rows to project: ``stages.plan.lengths=test`` (or ``holdout``) tokenises the run's
rows with the ``model`` config's tokenizer and the prompt config at the longest candidate budget
(both orientations, through the token cache); a JSON file gives token lengths directly (e.g.
``../shared/gpu/lengths.json``, a Gemma-2 length mix), the same for both orientations (the
truncation is symmetric in A and B). ``rows`` scales them to a test set's size. The FLOPs come
from the architecture (``stages.plan.architecture``, else ``model.name_or_path``: a folder's
``config.json`` or a shipped hub id), the device's rate from ``planner.DEVICES``, the budget and
batching from ``stages.predict``. With ``pipeline.final: folds`` the final model is the
``data.folds.n_folds`` fold students averaged: every row is predicted once per fold, and the
projection counts that work (``plan.json["models"]``). With ``pipeline.final: full`` it is one
model (one pass per row) that costs one more student training run over every cv and extra row
(``plan.json["final"]``: ``planner.final_cost``, the rows from the run's folds file when the
data stage has run).

Writes ``stages.plan.out_dir`` (default ``${run_dir}/plan/``): ``plan.json`` (every
(max_length, TTA) plan with its FLOPs, padding and projected time, the chosen one, the device
and its source) and ``manifest.json``, and prints the table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from arena_distill import fingerprint, planner
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.folds import read_folds
from arena_distill.encode import encodings, prompt_config, rows_to_predict
from arena_distill.io import (
    StageTimer,
    atomic_dir,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import CV, EXTRA_SPLIT, FOLDS, TEST, TRAIN
from arena_distill.models.factory import load_tokenizer
from arena_distill.predict import budget_seconds, candidate_lengths

log = logging.getLogger(__name__)


def row_lengths(cfg: DictConfig, settings: config.PlanSettings, longest: int) -> dict[bool, list]:
    """Token lengths of every row, both orientations, at the ``longest`` budget."""
    source = settings.lengths
    if source not in ("test", "holdout"):
        values = [int(x) for x in json.loads(Path(source).read_text())]
        capped = [min(v, longest) for v in values]
        return {False: capped, True: capped}
    data_dir = require_stage_output(config.stage(cfg, "data").out_dir, stage="data")
    rows, _, key = rows_to_predict(data_dir, source)
    tokenizer = load_tokenizer(cfg.model)
    enc = encodings(rows, tokenizer, prompt_config(cfg, longest), cfg, key)
    ids = rows["id"].astype(str).tolist()
    return {o: [len(enc[(i, o)]) for i in ids] for o in (False, True)}


def plan_fingerprint(cfg: DictConfig, settings: config.PlanSettings) -> dict:
    """The plan's settings (its own, the predict stage's, model, prompt, the final model and
    the folds) and the rows' files (and the folds file the training rows are counted on)."""
    data_dir = Path(config.stage(cfg, "data").out_dir)
    files = {
        "test": [data_dir / TEST],
        "holdout": [data_dir / TRAIN, data_dir / FOLDS],
    }.get(settings.lengths, [Path(settings.lengths)])
    if (data_dir / FOLDS).is_file() and data_dir / FOLDS not in files:
        files.append(data_dir / FOLDS)
    blocks = ("model", "prompt", "stages.plan", "stages.predict", "pipeline.final", "data.folds")
    return fingerprint.make(
        "plan",
        settings=fingerprint.settings(cfg, blocks),
        files=fingerprint.file_hashes(files, cfg.run_dir),
    )


def final_cost(cfg: DictConfig) -> dict:
    """``planner.final_cost`` of ``pipeline.final``, with the training rows of the run's folds
    file when the data stage has written one."""
    n_folds = config.data(cfg).folds.n_folds
    path = Path(config.stage(cfg, "data").out_dir) / FOLDS
    fold_rows = all_rows = None
    if path.is_file():
        folds = read_folds(path)
        cv = folds[folds["split"] == CV]
        n_extra = int((folds["split"] == EXTRA_SPLIT).sum())
        n_folds = int(cv["fold"].max()) + 1
        fold_rows = [len(cv) - int((cv["fold"] == k).sum()) + n_extra for k in range(n_folds)]
        all_rows = len(cv) + n_extra
    return planner.final_cost(
        config.pipeline(cfg).final, n_folds, fold_rows=fold_rows, all_rows=all_rows
    )


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "plan")
    predict = config.stage(cfg, "predict")
    timer = StageTimer()
    device = planner.DEVICES.get(settings.device)
    if device is None:
        raise config.ConfigError(
            f"stages.plan.device: {settings.device!r} is not one of {sorted(planner.DEVICES)}"
        )
    arch_name = settings.architecture or str(cfg.model.name_or_path)
    arch = planner.Architecture.of(arch_name)
    if settings.max_lengths:
        lengths_at = sorted(set(settings.max_lengths), reverse=True)
    else:
        first = predict.max_length or config.prompt(cfg).max_length
        lengths_at = candidate_lengths(first, predict.fallback_max_length)
    lengths = row_lengths(cfg, settings, lengths_at[0])
    n = len(lengths[False])
    scale = settings.rows / n if settings.rows else 1.0
    # pipeline.final=folds: every fold's student predicts every row (n_folds forward passes);
    # full: one model, one more training run
    cost = final_cost(cfg)
    n_models = cost["inference_passes"]
    budget = budget_seconds(predict.time_budget_hours, predict.time_budget_safety)
    rows = planner.project(
        lengths,
        arch,
        max_lengths=lengths_at,
        flops_per_s=device.flops_per_s,
        n_devices=settings.n_devices,
        batch_size=predict.batch_size,
        max_tokens=predict.max_tokens_per_batch,
        budget_s=budget,
        fixed_seconds=settings.fixed_seconds,
        scale=scale * n_models,
    )
    chosen = planner.choose(rows)
    header = (
        f"{int(round(n * scale))} rows ({settings.lengths}"
        f"{f', {n} scaled x{scale:.1f}' if scale != 1 else ''}) of {arch_name} "
        f"({arch.linear_params / 1e9:.2f} B linear weights, {arch.num_layers} layers) on "
        f"{settings.n_devices} x {device.name} at {device.flops_per_s / 1e12:.2f} TFLOP/s each; "
        f"budget {budget / 3600:.2f} h (time_budget_hours x safety), fixed "
        f"{settings.fixed_seconds:.0f} s, batch {predict.batch_size}"
        # the folds' passes on the first line (they scale the table), else a line of its own
        + ("; " if n_models > 1 else "\n")
        + planner.describe_final(cost)
    )
    table = planner.render(rows, chosen, header)
    print(table)
    print(f"device rate source: {device.source}")
    timer.lap("plan")
    out_dir = Path(settings.out_dir)
    with atomic_dir(out_dir) as tmp:
        data = planner.to_json(
            rows,
            chosen,
            architecture=arch_name,
            linear_params=arch.linear_params,
            device={
                "name": device.name,
                "flops_per_s": device.flops_per_s,
                "source": device.source,
            },
            n_devices=settings.n_devices,
            lengths=settings.lengths,
            rows_given=n,
            budget_s=budget,
            batch_size=predict.batch_size,
            models=n_models,
            final=cost,
        )
        write_json(tmp / "plan.json", data)
        (tmp / "plan.txt").write_text(table + "\n")
        write_manifest(
            tmp,
            stage="plan",
            config={"stage": config.to_dict(settings), "predict": config.to_dict(predict)},
            outputs={"chosen": data["chosen"]},
            timer=timer,
            extra=fingerprint.stamp(plan_fingerprint(cfg, settings)),
        )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
