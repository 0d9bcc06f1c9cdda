"""Stage ``data``: raw files -> normalised tables, de-duplicated, with a holdout and folds.

Reads the files named by the ``data`` config group (train, test, extra sets, pretraining sets).
Writes ``stages.data.out_dir`` (default ``${run_dir}/data/``):

- ``train.parquet``   labelled competition rows (cv folds and the holdout; ``folds.csv`` says which)
- ``extra.parquet``   extra labelled rows, training-only, de-duplicated against train
- ``pretrain.parquet`` post-pretraining rows (UT), de-duplicated against train
- ``test.parquet``    rows to predict (labels only when the data set provides them, e.g. the demo)
- ``folds.csv``       ``id, split, fold``: written once, then reused on every rerun
- ``summary.json``    rows read / kept, every normalisation counted, every dropped row with its reason
- ``manifest.json``
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from arena_distill import fingerprint
from arena_distill import settings as config
from arena_distill.config import hydra_app
from arena_distill.data.dedup import dedup_against
from arena_distill.data.folds import build_folds, load_or_create_folds, write_folds
from arena_distill.data.readers import attach_labels, read_sample_submission
from arena_distill.data.schema import LABEL_NAMES, DataError
from arena_distill.data.sources import (
    check_disjoint_ids,
    load_spec,
    load_specs,
    spec_paths,
)
from arena_distill.data.summary import DataSummary
from arena_distill.data.tableio import save_table
from arena_distill.io import StageInputError, StageTimer, atomic_dir, write_manifest
from arena_distill.layout import EXTRA, FOLDS, PRETRAIN, SUMMARY, TEST, TRAIN

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    dcfg = config.data(cfg)
    out_dir = Path(config.stage(cfg, "data").out_dir)
    timer = StageTimer()
    summary = DataSummary()
    on_bad_row = dcfg.on_bad_row
    inputs: list[str] = spec_paths(dcfg.train)

    train = load_spec(dcfg.train, summary=summary, on_bad_row=on_bad_row)
    check_disjoint_ids({"train": train})  # a union of files must not repeat an id
    if train["label"].isna().any():
        bad = train.loc[train["label"].isna(), "id"].iloc[0]
        raise DataError(
            "training rows need labels", file=", ".join(spec_paths(dcfg.train)), row=bad
        )

    test = None
    if dcfg.test is not None:
        inputs += spec_paths(dcfg.test)
        test = load_spec(dcfg.test, summary=summary, on_bad_row=on_bad_row)
        if dcfg.sample_submission:
            inputs.append(dcfg.sample_submission)
            sub = read_sample_submission(dcfg.sample_submission)
            if set(sub["id"]) != set(test["id"]):
                missing = sorted(set(test["id"]) - set(sub["id"]))[:5]
                unexpected = sorted(set(sub["id"]) - set(test["id"]))[:5]
                raise DataError(
                    f"ids differ from the test file {dcfg.test.path}: test ids missing here "
                    f"{missing}, ids not in test {unexpected}",
                    file=dcfg.sample_submission,
                    column="id",
                )
        if dcfg.test_labels:
            inputs.append(dcfg.test_labels)
            test = attach_labels(test, dcfg.test_labels)
    timer.lap("read")

    extra = load_specs(dcfg.extra, summary=summary, on_bad_row=on_bad_row)
    pretrain = load_specs(dcfg.pretrain, summary=summary, on_bad_row=on_bad_row)
    inputs += [p for s in [*(dcfg.extra or []), *(dcfg.pretrain or [])] for p in spec_paths(s)]
    if dcfg.dedup:
        extra = dedup_against(extra, train, summary=summary)
        pretrain = dedup_against(pretrain, train, summary=summary)
    timer.lap("dedup")

    tables = {"train": train, "extra": extra}
    if test is not None:
        tables["test"] = test
    check_disjoint_ids(tables)

    fcfg = dcfg.folds
    existing = out_dir / FOLDS
    fold_args = dict(
        n_folds=fcfg.n_folds,
        seed=fcfg.seed,
        group_by_prompt=fcfg.group_by_prompt,
        holdout_frac=dcfg.holdout_frac,
        holdout_seed=dcfg.holdout_seed,
    )
    rebuild = fcfg.overwrite or fingerprint.overwrite(cfg)
    if existing.exists() and not rebuild:
        check_fold_seeds(cfg, out_dir)
        folds, _ = load_or_create_folds(existing, train, extra, **fold_args)
        log.info("reusing folds from %s", existing)
    else:
        folds = build_folds(train, extra, **fold_args)
    timer.lap("folds")

    with atomic_dir(out_dir) as tmp:
        save_table(train, tmp / TRAIN)
        save_table(extra, tmp / EXTRA)
        save_table(pretrain, tmp / PRETRAIN)
        if test is not None:
            save_table(test, tmp / TEST)
        write_folds(folds, tmp / FOLDS)
        summary.write(tmp / SUMMARY)
        outputs = {
            "rows": {name: len(df) for name, df in {**tables, "pretrain": pretrain}.items()},
            "folds": fold_table(folds, train).to_dict(orient="index"),
            "summary": summary.to_dict() | {"dropped": len(summary.dropped)},
        }
        write_manifest(
            tmp,
            stage="data",
            config={"data": OmegaConf.to_container(cfg.data, resolve=True)},
            inputs=inputs,
            outputs=outputs,
            timer=timer,
            extra=fingerprint.stamp(data_fingerprint(cfg, inputs)),
        )
    log.info("%s", summary.render())
    log.info("folds (rows per split/fold and label):\n%s", fold_table(folds, train).to_string())
    log.info("data written to %s", out_dir)
    return out_dir


# the fold settings a folds file cannot tell by itself (n_folds, grouping and the holdout's
# presence are checked against the file: data.folds.load_or_create_folds)
SEEDS = ("data.folds.seed", "data.holdout_seed")


def data_fingerprint(cfg: DictConfig, inputs: list[str]) -> dict:
    """The data stage's fingerprint: the ``data`` block and the raw files read."""
    return fingerprint.make(
        "data",
        settings=fingerprint.settings(cfg, ("data",)),
        files=fingerprint.file_hashes(inputs, cfg.run_dir),
    )


def check_fold_seeds(cfg: DictConfig, out_dir: Path) -> None:
    """A reused folds file must have been built with the configured seeds: StageInputError
    naming the seed otherwise (``data.folds.overwrite=true`` or ``overwrite=true`` rebuilds)."""
    old = fingerprint.recorded(out_dir)
    if old is None:
        return
    now = fingerprint.settings(cfg, SEEDS)
    changed = [
        f"{key}={old['settings'][key]}, now {now[key]}"
        for key in SEEDS
        if key in old["settings"] and old["settings"][key] != now[key]
    ]
    if changed:
        raise StageInputError(
            f"{out_dir / FOLDS} was built with {'; '.join(changed)}: rerun with "
            "data.folds.overwrite=true (or overwrite=true) to rebuild the folds (every output "
            "trained on the old folds is then stale), or keep the old seed"
        )


def fold_table(folds: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Rows per (split, fold) and label: the check that folds are stratified."""
    merged = folds.merge(train[["id", "label"]], on="id", how="inner")
    merged["label"] = merged["label"].map(dict(enumerate(LABEL_NAMES)))
    table = merged.groupby(["split", "fold"])["label"].value_counts().unstack(fill_value=0)
    table.index = [f"{s}/{f}" if s == "cv" else s for s, f in table.index]
    return table


def main() -> None:
    hydra_app(run)


if __name__ == "__main__":
    main()
