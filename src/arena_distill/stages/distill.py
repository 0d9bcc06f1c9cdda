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

With ``stages.distill.pseudo_dir`` (the pseudo_label stage's output; ``make pipeline
UNLABELLED=...`` sets it) every fold also trains on the kept pseudo-labelled rows, in the same
swap augmentation, with the teacher terms only, weighted by ``pseudo_weight``
(``losses.DistillLoss``): fold k pairs them with teacher fold k's logits (``pseudo_targets:
fold``; teacher fold k never saw fold k's validation rows, so the OOF stays clean) or with the
mean over the teacher's folds (``mean``). They are never validated on: the OOF predictions are
the labelled validation rows only.

The teachers' dumps, the pseudo rows and the loss come from ``arena_distill.distillation``, which
the ``full`` stage (the student trained on every row) shares.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.crossval import run_folds
from arena_distill.distillation import (
    check_dumps,
    distill_loss,
    load_teacher_logits,
    pseudo_examples,
    pseudo_rows,
    teacher_fields,
)
from arena_distill.layout import load_run_data

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "distill")
    teachers = config.pipeline(cfg).teachers
    run_data = load_run_data(cfg)
    logits_dir = Path(settings.logits_dir)
    dumps, accepted = check_dumps(cfg, teachers, logits_dir, run_data.files)
    lookups = {t: load_teacher_logits(logits_dir, t) for t in teachers}
    loss = distill_loss(settings, len(teachers))
    pseudo, pseudo_accepted = pseudo_rows(cfg, settings, run_data)
    accepted += pseudo_accepted
    if pseudo is not None:
        dumps.append(pseudo.folder)
    w = settings.weights
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
        fields_for_fold=teacher_fields(lookups, pseudo=pseudo is not None),
        upstream=dumps,
        accepted=accepted,
        extra_train=(
            pseudo_examples(cfg, pseudo, list(teachers), settings, set(run_data.labelled["id"]))
            if pseudo is not None
            else None
        ),
        extra_inputs=pseudo.files if pseudo is not None else (),
    )


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
