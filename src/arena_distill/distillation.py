"""What the students (the ``distill`` stage's fold students, the ``full`` stage's student on
every row) learn from: the teachers' logit dumps joined to the training rows, the pseudo-labelled
rows, the loss. The two stages share this module (a stage never imports another stage).

A teacher's dump (``<logits_dir>/<teacher>/logits.parquet``, ``dump_logits``) holds, for fold
k, the logits of teacher fold k on fold k's training rows (``split=train``: in-sample, as the
1st place used them), per orientation, not mirrored. Fold student k pairs its training rows with
teacher fold k's logits (:func:`teacher_fields`). The student trained on every row
(``pipeline.final: full``) has no fold: a row's target is the mean over the teacher folds that
trained on it (the K − 1 folds a cv row is a training row of, all K for an extra row), the log
of their mean probability (:func:`all_rows_fields`; ``pseudo.fold_mean_logits``, the same mean
the pseudo-labels' ``mean`` targets use): the same kind of target every fold student sees
(in-sample teacher logits), averaged over the teachers that produced them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from arena_distill import fingerprint
from arena_distill.baselines import baseline_of, dump_overrides
from arena_distill.data.swap import mirror_probs
from arena_distill.encode import data_key, encodings, prompt_config
from arena_distill.features import row_features
from arena_distill.io import StageInputError, require_stage_output
from arena_distill.layout import LOGIT_COLS, RunData
from arena_distill.losses import IGNORE_LABEL, DistillLoss
from arena_distill.metrics import probs_from_logits
from arena_distill.models.factory import load_tokenizer
from arena_distill.pseudo import MEAN_FOLD, ROWS, PseudoRows, read_pseudo
from arena_distill.settings import DistillSettings
from arena_distill.train import make_examples

log = logging.getLogger(__name__)

Lookup = dict[tuple[int, str, bool], np.ndarray]
Fields = Callable[[str, bool], dict]
# what a teacher dump records that a student's config can vouch for (its ``model`` block is
# the student's, not the teacher's: the teacher's model is checked through its manifest id)
DUMP_BLOCKS = ("prompt", "stages.dump_logits", "stages.teacher", *fingerprint.DATA_SPLIT)
# a classical teacher's dump (baseline/<name>): the baselines' settings, not a model's
BASELINE_DUMP_BLOCKS = ("stages.baselines", "seed", *fingerprint.DATA_SPLIT)


def check_dumps(
    cfg: DictConfig, teachers: Sequence[str], logits_dir: Path, data_files: Sequence[Path]
) -> tuple[list, list]:
    """Every teacher's dump folder, checked: finished, fresh (``fingerprint.check_input``: its
    settings, data files and upstream) and built from the current ``data_files`` (what its
    manifest lists, for a dump written before fingerprints: ``fingerprint.check_files``);
    returns ``(folders, changes overwrite=true accepted)``."""
    dumps, accepted = [], []
    for teacher in teachers:
        dump = Path(logits_dir) / teacher
        require_stage_output(dump, stage="dump_logits", files=["logits.parquet"])
        blocks = BASELINE_DUMP_BLOCKS if baseline_of(teacher) else DUMP_BLOCKS
        accepted += fingerprint.check_input(dump, cfg, blocks)
        accepted += fingerprint.check_files(dump, cfg, data_files, stage="dump_logits")
        dumps.append(dump)
    return dumps, accepted


def load_teacher_logits(logits_dir: Path, teacher: str) -> Lookup:
    """``{(fold, id, swapped): logits}`` of one teacher's in-sample (``split=train``) dump (a
    folder :func:`check_dumps` checked)."""
    folder = require_stage_output(
        logits_dir / teacher, stage="dump_logits", files=["logits.parquet"]
    )
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


def _missing(teacher: str, rid: str, swapped: bool, where: str) -> StageInputError:
    return StageInputError(
        f"teacher {teacher!r} has no logits for training id {rid!r} {where} "
        f"({'swapped' if swapped else 'original'} orientation); rerun "
        f"`arena-distill dump_logits {' '.join(dump_overrides(teacher))}` on the current data"
    )


def teacher_fields(lookups: dict[str, Lookup], *, pseudo: bool = False) -> Callable[[int], Fields]:
    """Per fold, the ``fields(id, swapped)`` hook adding ``teacher_logits`` (n_teachers × 3),
    and ``pseudo`` = 0 when pseudo-labelled rows share the batches."""
    flag = {"pseudo": 0.0} if pseudo else {}

    def for_fold(fold: int) -> Fields:
        def fields(rid: str, swapped: bool) -> dict:
            logits = []
            for teacher, lookup in lookups.items():
                value = lookup.get((fold, rid, swapped))
                if value is None:
                    raise _missing(teacher, rid, swapped, f"of fold {fold}")
                logits.append(value.tolist())
            return {"teacher_logits": logits, **flag}

        return fields

    return for_fold


def all_rows_lookup(lookup: Lookup) -> dict[tuple[str, bool], np.ndarray]:
    """``{(id, swapped): logits}``: per row and orientation, the log of the mean probability
    over every fold of the dump that holds the row (the teacher folds trained on it), as
    ``pseudo.fold_mean_logits`` computes it."""
    if not lookup:
        return {}
    keys = list(lookup)
    probs = pd.DataFrame(probs_from_logits(np.stack([lookup[k] for k in keys])))
    probs["id"] = [k[1] for k in keys]
    probs["swapped"] = [k[2] for k in keys]
    mean = probs.groupby(["id", "swapped"], sort=False).mean()
    logits = np.log(np.clip(mean.to_numpy(dtype=np.float64), 1e-12, None)).astype(np.float32)
    return {(str(i), bool(s)): v for (i, s), v in zip(mean.index, logits, strict=True)}


def all_rows_fields(lookups: dict[str, Lookup], *, pseudo: bool = False) -> Fields:
    """The ``fields(id, swapped)`` hook of the student trained on every row: ``teacher_logits``
    (n_teachers × 3), each teacher's fold mean (:func:`all_rows_lookup`)."""
    flag = {"pseudo": 0.0} if pseudo else {}
    means = {t: all_rows_lookup(lookup) for t, lookup in lookups.items()}

    def fields(rid: str, swapped: bool) -> dict:
        logits = []
        for teacher, mean in means.items():
            value = mean.get((rid, swapped))
            if value is None:
                raise _missing(teacher, rid, swapped, "in any fold")
            logits.append(value.tolist())
        return {"teacher_logits": logits, **flag}

    return fields


def distill_loss(settings: DistillSettings, n_teachers: int) -> DistillLoss:
    """The loss of ``stages.distill``'s weights, temperature and pseudo weight."""
    w = settings.weights
    return DistillLoss(
        n_teachers,
        temperature=settings.temperature,
        ce=w.ce,
        kl=w.kl,
        cos=w.cos,
        normalise=settings.normalise_weights,
        pseudo_weight=settings.pseudo_weight,
    )


def pseudo_rows(
    cfg: DictConfig, settings: DistillSettings, run_data: RunData
) -> tuple[PseudoRows | None, list[str]]:
    """The pseudo_label stage's kept rows when the student trains on them
    (``stages.distill.pseudo_dir`` set, with a teacher term and a weight), checked; returns
    ``(rows or None, changes overwrite=true accepted)``."""
    w = settings.weights
    if not settings.pseudo_dir:
        return None, []
    if not (settings.pseudo_weight > 0 and w.kl + w.cos > 0):
        log.info("pseudo rows not used: pseudo_weight or the teacher weights are 0 (no loss)")
        return None, []
    folder = require_stage_output(settings.pseudo_dir, stage="pseudo_label", files=[ROWS])
    accepted = fingerprint.check_files(folder, cfg, run_data.files, stage="pseudo_label")
    accepted += fingerprint.check_input(folder, cfg, ("data.unlabelled", "pipeline.teachers"))
    pseudo = read_pseudo(folder)
    log.info(
        "with %d pseudo-labelled rows from %s (teacher terms only, weight %s, %s targets)",
        len(pseudo.rows),
        folder,
        settings.pseudo_weight,
        settings.pseudo_targets,
    )
    return pseudo, accepted


def pseudo_examples(
    cfg: DictConfig, pseudo: PseudoRows, teachers: list[str], settings, labelled_ids: set[str]
) -> Callable[[int], list[dict]]:
    """Per fold, the pseudo-labelled training examples: no label (``IGNORE_LABEL``),
    ``pseudo`` = 1, each teacher's logits on the same orientation (fold k's or the mean;
    ``MEAN_FOLD`` asked: always the mean, the student trained on every row)."""
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
        by_fold = settings.pseudo_targets == "fold" and fold != MEAN_FOLD
        source = fold if by_fold else MEAN_FOLD

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
