"""Stage ``distill``: the student per fold, trained on hard labels and the teachers' logits.

Reads ``${run_dir}/data/``, the post-pretrain adapter of the student (``init_from_pretrain``)
and, for every teacher of ``pipeline.teachers``, its logit dump
(``stages.distill.logits_dir/<teacher>/logits.parquet``). Writes ``stages.distill.out_dir``
(default ``${run_dir}/students/<model>/``) in the teacher stage's layout (``crossval``).

For fold k the student's training rows are fold k's training rows, each joined by id with each
teacher's fold-k logits on the same orientation: a swapped training row uses the teacher's
logits on the swapped input, or the original logits mirrored (A and B exchanged) when only the
original orientation was dumped. A training id without a teacher logit is an error. A teacher named ``baseline/<name>`` is a
classical baseline whose dump (``<logits_dir>/baseline/<name>/``, ``dump_logits`` with
``stages.dump_logits.baseline``) has the same layout: fold k's training rows scored by the
baseline fitted on them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from arena_distill import settings as config
from arena_distill.baselines import dump_overrides
from arena_distill.config import hydra_app
from arena_distill.crossval import run_folds
from arena_distill.data.swap import mirror_probs
from arena_distill.io import StageInputError, require_fresh, require_stage_output
from arena_distill.layout import LOGIT_COLS, load_run_data
from arena_distill.losses import DistillLoss

log = logging.getLogger(__name__)

Lookup = dict[tuple[int, str, bool], np.ndarray]


def load_teacher_logits(logits_dir: Path, teacher: str, data_files: list[Path]) -> Lookup:
    """``{(fold, id, swapped): logits}`` of one teacher's in-sample (``split=train``) dump."""
    folder = require_stage_output(
        logits_dir / teacher, stage="dump_logits", files=["logits.parquet"]
    )
    require_fresh(folder, data_files, stage="dump_logits")
    table = pd.read_parquet(folder / "logits.parquet")
    table = table[table["split"] == "train"]
    values = table[list(LOGIT_COLS)].to_numpy(dtype=np.float32)
    lookup: Lookup = {
        (int(f), str(i), bool(s)): v
        for f, i, s, v in zip(table["fold"], table["id"], table["swapped"], values, strict=True)
    }
    if not table["swapped"].any():
        # only the original orientation was dumped: a swapped row's logits are the mirror
        mirrored = mirror_probs(values)
        for f, i, v in zip(table["fold"], table["id"], mirrored, strict=True):
            lookup[(int(f), str(i), True)] = v
        log.info("teacher %s: swapped logits mirrored from the original orientation", teacher)
    return lookup


def teacher_fields(lookups: dict[str, Lookup]) -> Callable[[int], Callable[[str, bool], dict]]:
    """Per fold, the ``fields(id, swapped)`` hook adding ``teacher_logits`` (n_teachers × 3)."""

    def for_fold(fold: int) -> Callable[[str, bool], dict]:
        def fields(rid: str, swapped: bool) -> dict:
            logits = []
            for teacher, lookup in lookups.items():
                value = lookup.get((fold, rid, swapped))
                if value is None:
                    raise StageInputError(
                        f"teacher {teacher!r} has no logits for training id {rid!r} of fold "
                        f"{fold} ({'swapped' if swapped else 'original'} orientation); rerun "
                        f"`arena-distill dump_logits {' '.join(dump_overrides(teacher))}` on the current data"
                    )
                logits.append(value.tolist())
            return {"teacher_logits": logits}

        return fields

    return for_fold


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "distill")
    teachers = config.pipeline(cfg).teachers
    run_data = load_run_data(cfg)
    logits_dir = Path(settings.logits_dir)
    lookups = {t: load_teacher_logits(logits_dir, t, run_data.files) for t in teachers}
    w = settings.weights
    loss = DistillLoss(
        len(teachers),
        temperature=settings.temperature,
        ce=w.ce,
        kl=w.kl,
        cos=w.cos,
        normalise=settings.normalise_weights,
    )
    log.info(
        "distilling %s from %s (T=%s, weights ce=%s kl=%s cos=%s, normaliser %s)",
        cfg.model.name,
        teachers,
        settings.temperature,
        w.ce,
        w.kl,
        w.cos,
        loss.norm,
    )
    return run_folds(
        cfg,
        run_data,
        stage="distill",
        settings=settings,
        loss_fn=loss,
        fields_for_fold=teacher_fields(lookups),
    )


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
