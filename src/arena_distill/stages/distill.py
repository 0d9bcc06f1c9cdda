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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.baselines import baseline_of, dump_overrides
from arena_distill.config import hydra_app
from arena_distill.crossval import run_folds
from arena_distill.data.swap import mirror_probs
from arena_distill.encode import data_key, encodings, prompt_config
from arena_distill.features import row_features
from arena_distill.io import StageInputError, require_fresh, require_stage_output
from arena_distill.layout import LOGIT_COLS, load_run_data
from arena_distill.losses import IGNORE_LABEL, DistillLoss
from arena_distill.models.factory import load_tokenizer
from arena_distill.pseudo import MEAN_FOLD, ROWS, PseudoRows, read_pseudo
from arena_distill.train import make_examples

log = logging.getLogger(__name__)

Lookup = dict[tuple[int, str, bool], np.ndarray]
# what a teacher dump records that a student's config can vouch for (its ``model`` block is
# the student's, not the teacher's: the teacher's model is checked through its manifest id)
DUMP_BLOCKS = ("prompt", "stages.dump_logits", "stages.teacher", *fingerprint.DATA_SPLIT)
# a classical teacher's dump (baseline/<name>): the baselines' settings, not a model's
BASELINE_DUMP_BLOCKS = ("stages.baselines", "seed", *fingerprint.DATA_SPLIT)


def load_teacher_logits(logits_dir: Path, teacher: str, data_files: list[Path]) -> Lookup:
    """``{(fold, id, swapped): logits}`` of one teacher's in-sample (``split=train``) dump,
    refused when built from other ``data_files`` than these (none given: not checked)."""
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


def teacher_fields(
    lookups: dict[str, Lookup], *, pseudo: bool = False
) -> Callable[[int], Callable[[str, bool], dict]]:
    """Per fold, the ``fields(id, swapped)`` hook adding ``teacher_logits`` (n_teachers × 3),
    and ``pseudo`` = 0 when pseudo-labelled rows share the batches."""
    flag = {"pseudo": 0.0} if pseudo else {}

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
            return {"teacher_logits": logits, **flag}

        return fields

    return for_fold


def pseudo_examples(
    cfg: DictConfig, pseudo: PseudoRows, teachers: list[str], settings, labelled_ids: set[str]
) -> Callable[[int], list[dict]]:
    """Per fold, the pseudo-labelled training examples: no label (``IGNORE_LABEL``),
    ``pseudo`` = 1, each teacher's logits on the same orientation (fold k's or the mean)."""
    ids = pseudo.rows["id"].astype(str).tolist()
    clash = sorted(labelled_ids.intersection(ids))[:5]
    if clash:
        raise StageInputError(
            f"pseudo-labelled ids {clash} are also labelled ids; rerun pseudo_label"
        )
    tokenizer = load_tokenizer(cfg.model)
    prompt = prompt_config(cfg, settings.max_length)
    enc = encodings(pseudo.rows, tokenizer, prompt, cfg, data_key(pseudo.folder / ROWS))
    features = row_features(cfg.model, pseudo.rows)  # a hybrid student's head input

    def for_fold(fold: int) -> list[dict]:
        source = fold if settings.pseudo_targets == "fold" else MEAN_FOLD

        def fields(rid: str, swapped: bool) -> dict:
            return {
                "teacher_logits": pseudo.teacher_logits(teachers, source, rid, swapped),
                "pseudo": 1.0,
            }

        return make_examples(
            ids,
            [IGNORE_LABEL] * len(ids),
            enc,
            swap=settings.swap,
            fields=fields,
            features=features,
        )

    return for_fold


def run(cfg: DictConfig) -> Path:
    settings = config.stage(cfg, "distill")
    teachers = config.pipeline(cfg).teachers
    run_data = load_run_data(cfg)
    logits_dir = Path(settings.logits_dir)
    dumps = [logits_dir / t for t in teachers]
    accepted: list[str] = []
    for teacher, dump in zip(teachers, dumps, strict=True):
        require_stage_output(dump, stage="dump_logits", files=["logits.parquet"])
        blocks = BASELINE_DUMP_BLOCKS if baseline_of(teacher) else DUMP_BLOCKS
        accepted += fingerprint.check_input(dump, cfg, blocks)
    data_files = [] if accepted else run_data.files  # overwrite=true took them as they are
    lookups = {t: load_teacher_logits(logits_dir, t, data_files) for t in teachers}
    w = settings.weights
    loss = DistillLoss(
        len(teachers),
        temperature=settings.temperature,
        ce=w.ce,
        kl=w.kl,
        cos=w.cos,
        normalise=settings.normalise_weights,
        pseudo_weight=settings.pseudo_weight,
    )
    pseudo = None
    if settings.pseudo_dir and settings.pseudo_weight > 0 and w.kl + w.cos > 0:
        folder = require_stage_output(settings.pseudo_dir, stage="pseudo_label", files=[ROWS])
        require_fresh(folder, run_data.files, stage="pseudo_label")
        accepted += fingerprint.check_input(folder, cfg, ("data.unlabelled", "pipeline.teachers"))
        dumps.append(folder)
        pseudo = read_pseudo(folder)
        log.info(
            "with %d pseudo-labelled rows from %s (teacher terms only, weight %s, %s targets)",
            len(pseudo.rows),
            folder,
            settings.pseudo_weight,
            settings.pseudo_targets,
        )
    elif settings.pseudo_dir:
        log.info("pseudo rows not used: pseudo_weight or the teacher weights are 0 (no loss)")
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
