"""Stage ``merge``: the K fold LoRAs of a per-fold stage averaged into one full model.

Reads ``stages.merge.source`` (default the distilled students, ``stages.distill.out_dir``; any
finished per-fold output works, e.g. a teacher's folder): its ``manifest.json`` (which stage
wrote it) and ``fold_<k>/adapter/`` for every fold of the run's folds file — or, for the ``full``
stage's output (``pipeline.final: full``), its one ``adapter/``, merged alone (weight 1: the
adapter folded into the base exactly, with either method); and the base model
of the ``model`` config (the model those adapters were trained on). Refuses a missing or
unfinished source, folds trained on another model, and stale folds (an input recorded in a
fold's manifest, e.g. the data or the pretrain adapter, changed since).

Writes ``stages.merge.out_dir`` (default ``${run_dir}/merged/``) atomically:

- ``config.json``, ``model.safetensors``, tokenizer files: the base with the merged LoRA folded
  into its weights and the averaged head; loads with
  ``AutoModelForSequenceClassification.from_pretrained`` (3 labels, ``pad_token_id`` set)
- ``adapter/``: the averaged adapter (``ab_mean`` only), loadable with
  ``models.factory.load_for_inference(model_cfg, <out_dir>/adapter)``
- ``merge.json``: method, folds, weights, LoRA config and per-module norms (‖ΔW‖, ‖W‖, their
  ratio, ``ab_vs_exact``: distance of ab_mean's ΔW from the exact mean of the folds' ΔW,
  ``fold_spread``: how far the folds' ΔW are from their mean), head spread
- ``manifest.json``
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from arena_distill import faults, fingerprint, layout
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.folds import read_folds
from arena_distill.io import (
    MANIFEST,
    StageInputError,
    StageTimer,
    atomic_dir,
    read_json,
    require_stage_output,
    write_json,
    write_manifest,
)
from arena_distill.layout import FOLDS
from arena_distill.merge import (
    merge_adapters,
    merge_into_base,
    merge_summary,
    read_adapter,
    save_adapter,
)

log = logging.getLogger(__name__)


# what the source's folds record that the merge's config vouches for (its model)
SOURCE_BLOCKS = ("model", *fingerprint.DATA_SPLIT)


# stages whose output is one adapter (``adapter/``), not folds: merged alone (weight 1)
SINGLE_ADAPTER_STAGES = ("full",)


def _check_part(folder: Path, stage: str, cfg: DictConfig, data_files: list[Path]) -> None:
    """One adapter's folder: written by ``stage``, trained on ``cfg.model``, fresh."""
    manifest = read_json(folder / MANIFEST)
    if manifest.get("stage") != stage:
        raise StageInputError(
            f"{folder}/{MANIFEST} is from stage {manifest.get('stage')!r}, not {stage!r}"
        )
    trained_on = (manifest.get("config") or {}).get("model", {}).get("name")
    if trained_on is not None and trained_on != cfg.model.name:
        raise StageInputError(
            f"{folder} was trained on model {trained_on!r} but model={cfg.model.name!r}; "
            f"merge with model={trained_on}"
        )
    # the run's data files as they are now, against the hashes the part's manifest recorded for
    # the same paths (its own recorded paths may be relative to another working directory, or
    # to a run folder since copied: fingerprint.check_input covers those by run-relative path);
    # accepted under overwrite=true, the source's combined manifest's check names them
    fingerprint.check_files(folder, cfg, data_files, stage=stage)


def source_folds(cfg: DictConfig) -> tuple[Path, str, list[Path]]:
    """The checked source folder, the stage that wrote it and its adapter folders: every fold
    of a per-fold stage, or the one adapter of a single-adapter stage (``full``: the student
    trained on every row; its merge is the adapter folded into the base, exactly). Stale ones
    are refused (``fingerprint.check_input``), unless ``overwrite=true``."""
    source = Path(config.stage(cfg, "merge").source)
    if not (source / MANIFEST).is_file():
        raise StageInputError(
            f"merge source {source} is not a finished stage output (no {MANIFEST}); run the "
            "per-fold stage first (`arena-distill distill`, or set stages.merge.source)"
        )
    stage = read_json(source / MANIFEST).get("stage")
    data_dir = Path(config.stage(cfg, "data").out_dir)
    data_files = sorted(p for p in data_dir.iterdir() if p.is_file()) if data_dir.is_dir() else []
    if stage in SINGLE_ADAPTER_STAGES:
        require_stage_output(source, stage=stage, files=["adapter"])
        _check_part(source, stage, cfg, data_files)
        return source, stage, [source / "adapter"]
    data_dir = require_stage_output(config.stage(cfg, "data").out_dir, stage="data", files=[FOLDS])
    n_folds = layout.n_folds(read_folds(data_dir / FOLDS))
    adapters = [f"fold_{k}/adapter" for k in range(n_folds)]
    require_stage_output(
        source, stage=stage, files=[*adapters, *(f"fold_{k}/{MANIFEST}" for k in range(n_folds))]
    )
    for k in range(n_folds):
        _check_part(source / f"fold_{k}", stage, cfg, data_files)
    return source, stage, [source / a for a in adapters]


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "merge")
    out_dir = Path(settings.out_dir)
    timer = StageTimer()
    source, stage, fold_adapters = source_folds(cfg)
    data_dir = Path(config.stage(cfg, "data").out_dir)
    accepted = fingerprint.check_data(cfg, data_dir)
    # the folds' combined manifest: their settings and files, every fold's id upstream
    accepted += fingerprint.check_input(source, cfg, SOURCE_BLOCKS)
    stamp = fingerprint.stamp(
        fingerprint.make(
            "merge",
            settings=fingerprint.settings(cfg, ("model", "stages.merge")),
            files=fingerprint.file_hashes([data_dir / FOLDS], cfg.run_dir),
            upstream=fingerprint.upstream_ids([source], cfg.run_dir),
        ),
        accepted,
    )
    adapters = [read_adapter(p) for p in fold_adapters]
    merged = merge_adapters(adapters, settings.method, settings.weights)
    timer.lap("average")
    with atomic_dir(out_dir) as tmp:
        stats = merge_into_base(cfg.model, merged, tmp)
        timer.lap("fold_into_base")
        faults.point("merge.write")
        if merged.lora is not None:
            save_adapter(merged, tmp / "adapter")
        summary = {
            "source": str(source),
            "source_stage": stage,
            "folds": list(range(len(adapters))),
            "model": cfg.model.name,
            **merge_summary(merged, stats, adapters),
        }
        write_json(tmp / "merge.json", summary)
        timer.lap("summary")
        write_manifest(
            tmp,
            stage="merge",
            config={
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "stage": config.to_dict(settings),
            },
            inputs=[source / MANIFEST, *fold_adapters],
            outputs={
                "method": merged.method,
                "folds": len(adapters),
                "weights": merged.weights,
                "modules": len(stats),
                "delta_rel_norm_mean": summary.get("delta_rel_norm_mean"),
                "ab_vs_exact_mean": summary.get("ab_vs_exact_mean"),
            },
            timer=timer,
            extra=stamp,
        )
    log.info(
        "merged %d %s adapter(s) of %s (%s, weights %s) into %s",
        len(adapters),
        stage,
        cfg.model.name,
        merged.method,
        [round(w, 4) for w in merged.weights],
        out_dir,
    )
    return out_dir


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
