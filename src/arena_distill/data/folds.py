"""Cross-validation folds and the labelled holdout, written once and reused by every stage.

The folds file (CSV: ``id, split, fold``) is the single source of truth for which rows a
model may train on: teacher out-of-fold predictions, distillation targets and the final
evaluation must all agree on it, or the out-of-fold logits leak. ``split`` is

* ``cv``: a competition train row, ``fold`` in ``0..K-1`` (validated in fold ``fold``);
* ``extra``: extra data, always training-only, ``fold = -1``;
* ``holdout``: a labelled holdout carved off before folding, never trained on, ``fold = -1``.

The default split is exactly the 1st-place one: ``StratifiedKFold(5, shuffle=True,
random_state=2025)`` on the label. ``group_by_prompt`` keeps every (normalised) prompt inside
one fold, for data sets that repeat a prompt across model pairs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from .dedup import normalise_for_hash
from .schema import DataError

FOLD_COLUMNS = ("id", "split", "fold")
SPLITS = ("cv", "extra", "holdout")
_SHOW = 5  # how many offending ids an error message lists


def _first(ids: Iterable[object]) -> str:
    items = sorted(map(str, ids))
    more = f" ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{items[:_SHOW]}{more}"


def _labels(df: pd.DataFrame, purpose: str) -> np.ndarray:
    """Integer labels, or DataError: stratification needs a label on every row."""
    if "label" not in df.columns:
        raise DataError(f"{purpose} needs labels, but the table has no 'label' column")
    missing = df["label"].isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{purpose} needs labels, but {int(missing.sum())} rows have none "
            f"(first ids {_first(df.loc[missing, 'id'])})",
            column="label",
        )
    return df["label"].to_numpy(dtype=np.int64)


def _prompt_groups(df: pd.DataFrame) -> np.ndarray:
    """One group per normalised prompt (a SHA-1 hex string; cheaper to hold than the text)."""
    return np.array(
        [hashlib.sha1(normalise_for_hash(p).encode("utf-8")).hexdigest() for p in df["prompt"]]
    )


def split_holdout(
    df: pd.DataFrame, frac: float, seed: int, group_by_prompt: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` into (rest, holdout) with about ``frac`` of the rows in the holdout.

    Stratified on the label so the holdout has the same A/B/tie mix. With ``group_by_prompt``
    all rows sharing a normalised prompt land on the same side (exactly), using one split of
    ``StratifiedGroupKFold`` (stratification is then approximate, and so is ``frac``).
    ``frac == 0`` returns ``(df, empty)``. Both parts keep the row order and get a fresh index.
    """
    if not 0 <= frac < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {frac!r}")
    if frac == 0:
        return df.reset_index(drop=True), df.iloc[:0].reset_index(drop=True)
    y = _labels(df, "the holdout split")
    positions = np.arange(len(df))
    try:
        if group_by_prompt:
            groups = _prompt_groups(df)
            # One fold of round(1/frac) is the holdout; for frac > 1/2 the complement of one
            # fold of round(1/(1-frac)) is, so large fractions stay reachable.
            small = frac <= 0.5
            n_splits = max(2, round(1 / frac) if small else round(1 / (1 - frac)))
            if len(np.unique(groups)) < n_splits:
                raise DataError(
                    f"cannot carve a grouped holdout of {frac} from {len(np.unique(groups))} "
                    f"distinct prompts (need at least {n_splits})"
                )
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            rest_idx, test_idx = next(splitter.split(positions, y, groups))
            hold = test_idx if small else rest_idx
        else:
            _, hold = train_test_split(positions, test_size=frac, random_state=seed, stratify=y)
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(
            f"cannot carve a stratified holdout of {frac} from {len(df)} rows: {err}"
        ) from err
    mask = np.zeros(len(df), dtype=bool)
    mask[hold] = True
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def assign_folds(
    df: pd.DataFrame, n_folds: int = 5, seed: int = 2025, group_by_prompt: bool = False
) -> pd.Series:
    """Fold (``0..n_folds-1``) of every row, aligned to ``df.index``.

    A row's fold is the split in which it is a validation row. Default: ``StratifiedKFold(
    n_folds, shuffle=True, random_state=seed)`` on the label, as in the 1st place. With
    ``group_by_prompt``: ``StratifiedGroupKFold`` with the normalised prompt as group, so no
    prompt is split across folds. Deterministic for the same input (rows in the same order).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    y = _labels(df, "fold assignment")
    if len(df) < n_folds:
        raise DataError(f"cannot make {n_folds} folds from only {len(df)} labelled rows")
    positions = np.arange(len(df))
    if group_by_prompt:
        groups = _prompt_groups(df)
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise DataError(
                f"cannot make {n_folds} prompt-grouped folds from only {n_groups} distinct prompts"
            )
        splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            positions, y, groups
        )
    else:
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
            positions, y
        )
    fold = np.full(len(df), -1, dtype=np.int64)
    try:
        for k, (_, valid) in enumerate(splits):
            fold[valid] = k
    except ValueError as err:
        raise DataError(f"cannot make {n_folds} folds from {len(df)} rows: {err}") from err
    return pd.Series(fold, index=df.index, name="fold")


def build_folds(
    train: pd.DataFrame,
    extra: pd.DataFrame | None = None,
    *,
    n_folds: int,
    seed: int,
    group_by_prompt: bool,
    holdout_frac: float,
    holdout_seed: int | None = None,
) -> pd.DataFrame:
    """The folds table (``id, split, fold``): train rows (holdout carved off first, the rest
    folded) in their order, then extra rows. ``holdout_seed`` defaults to ``seed``."""
    train_ids = train["id"].astype(str)
    extra_ids = (extra["id"] if extra is not None else pd.Series([], dtype=object)).astype(str)
    all_ids = pd.concat([train_ids, extra_ids], ignore_index=True)
    dup = all_ids[all_ids.duplicated()]
    if len(dup):
        raise DataError(f"ids must be unique across train and extra; repeated: {_first(dup)}")
    rest, hold = split_holdout(
        train, holdout_frac, seed if holdout_seed is None else holdout_seed, group_by_prompt
    )
    rest_folds = assign_folds(rest, n_folds, seed, group_by_prompt)
    fold_of = dict(zip(rest["id"].astype(str), rest_folds, strict=True))
    split = ["cv" if i in fold_of else "holdout" for i in train_ids] + ["extra"] * len(extra_ids)
    fold = [fold_of.get(i, -1) for i in train_ids] + [-1] * len(extra_ids)
    return pd.DataFrame(
        {
            "id": all_ids,
            "split": pd.Series(split, dtype=str),
            "fold": np.asarray(fold, dtype=np.int64),
        }
    )


def _validate(folds: pd.DataFrame, file: str | Path | None) -> None:
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise DataError(
            f"folds table lacks columns {missing} (needs {list(FOLD_COLUMNS)})", file=file
        )
    ids = folds["id"]
    if ids.isna().any() or (ids.astype(str) == "").any():
        raise DataError("folds table has empty ids", file=file, column="id")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"duplicate ids {_first(dup.unique())}", file=file, column="id")
    bad = ~folds["split"].isin(SPLITS)
    if bad.any():
        raise DataError(
            f"split must be one of {list(SPLITS)}; got {sorted(set(folds.loc[bad, 'split']))[:5]}",
            file=file,
            row=folds.loc[bad, "id"].iloc[0],
            column="split",
        )
    fold, cv = folds["fold"], folds["split"] == "cv"
    bad = (cv & (fold < 0)) | (~cv & (fold != -1))
    if bad.any():
        raise DataError(
            "fold must be >= 0 for cv rows and -1 for extra/holdout rows",
            file=file,
            row=folds.loc[bad, "id"].iloc[0],
            column="fold",
        )


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    """Validate and write ``folds`` atomically (temp file + ``os.replace``), so a crash never
    leaves a half-written file that a later stage would silently reuse."""
    path = Path(path)
    _validate(folds, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            folds.loc[:, list(FOLD_COLUMNS)].to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read and validate a folds file; ids are strings, folds int64. DataError names the file."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read folds file: {err}", file=path) from err
    if list(raw.columns) != list(FOLD_COLUMNS):
        raise DataError(f"columns {list(raw.columns)}, expected {list(FOLD_COLUMNS)}", file=path)
    fold = pd.to_numeric(raw["fold"], errors="coerce")
    bad = fold.isna() | (fold != fold.round())
    if bad.any():
        raise DataError(
            f"fold must be an integer, got {raw.loc[bad, 'fold'].iloc[0]!r}",
            file=path,
            row=raw.loc[bad, "id"].iloc[0],
            column="fold",
        )
    folds = pd.DataFrame(
        {
            "id": raw["id"].astype(str),
            "split": raw["split"].astype(str),
            "fold": fold.astype(np.int64),
        }
    )
    _validate(folds, path)
    return folds


def _check_matches(
    folds: pd.DataFrame,
    train: pd.DataFrame,
    extra: pd.DataFrame | None,
    *,
    n_folds: int,
    group_by_prompt: bool,
    holdout_frac: float,
    file: Path,
) -> None:
    """DataError unless the stored folds fit this data and configuration."""
    hint = "; delete the file or run with overwrite=true to rebuild it"
    problems = []
    is_extra = folds["split"] == "extra"
    expected = {
        "train": (set(train["id"].astype(str)), set(folds.loc[~is_extra, "id"])),
        "extra": (
            set() if extra is None else set(extra["id"].astype(str)),
            set(folds.loc[is_extra, "id"]),
        ),
    }
    for what, (want, have) in expected.items():
        if want - have:
            problems.append(f"{len(want - have)} {what} ids missing: {_first(want - have)}")
        if have - want:
            problems.append(f"{len(have - want)} unexpected {what} ids: {_first(have - want)}")
    if problems:
        raise DataError(
            "folds file does not cover the data: " + "; ".join(problems) + hint, file=file
        )
    cv_folds = sorted(set(folds.loc[folds["split"] == "cv", "fold"]))
    if cv_folds != list(range(n_folds)):
        raise DataError(
            f"folds file has cv folds {cv_folds}, but n_folds={n_folds}{hint}", file=file
        )
    n_hold = int((folds["split"] == "holdout").sum())
    if (n_hold > 0) != (holdout_frac > 0):
        raise DataError(
            f"folds file has {n_hold} holdout rows, but holdout_frac={holdout_frac}{hint}",
            file=file,
        )
    if group_by_prompt:
        side = folds.set_index("id")
        side = side["fold"].where(side["split"] != "holdout", -2)  # -2: the holdout side
        sides = pd.DataFrame(
            {"group": _prompt_groups(train), "side": train["id"].astype(str).map(side).to_numpy()}
        )
        split = sides.groupby("group")["side"].nunique()
        if (split > 1).any():
            raise DataError(
                f"folds file puts {int((split > 1).sum())} prompts on more than one fold/holdout, "
                f"but group_by_prompt=true{hint}",
                file=file,
            )


def load_or_create_folds(
    path: str | Path,
    train: pd.DataFrame,
    extra: pd.DataFrame | None = None,
    *,
    n_folds: int,
    seed: int,
    group_by_prompt: bool,
    holdout_frac: float,
    holdout_seed: int | None = None,
    overwrite: bool = False,
) -> tuple[pd.DataFrame, bool]:
    """Reuse the folds file at ``path`` if present (after checking that it covers exactly the
    ids of ``train`` and ``extra`` and fits the configuration), else build and write it.
    Returns ``(folds, created)``. ``overwrite`` rebuilds unconditionally."""
    path = Path(path)
    if path.exists() and not overwrite:
        folds = read_folds(path)
        _check_matches(
            folds,
            train,
            extra,
            n_folds=n_folds,
            group_by_prompt=group_by_prompt,
            holdout_frac=holdout_frac,
            file=path,
        )
        return folds, False
    folds = build_folds(
        train,
        extra,
        n_folds=n_folds,
        seed=seed,
        group_by_prompt=group_by_prompt,
        holdout_frac=holdout_frac,
        holdout_seed=holdout_seed,
    )
    write_folds(folds, path)
    return folds, True


def split_by_fold(
    df: pd.DataFrame, folds: pd.DataFrame, k: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of fold ``k``.

    Training rows are cv rows outside fold ``k`` plus all extra rows; validation rows are cv
    rows in fold ``k``; holdout rows are in neither. Rows are matched by id, so a table with
    A/B-swapped copies (same id) keeps both orientations on the same side. Row order is kept,
    the index is fresh.
    """
    cv_folds = sorted(set(folds.loc[folds["split"] == "cv", "fold"]))
    if k not in cv_folds:
        raise ValueError(f"fold {k} does not exist; the folds table has cv folds {cv_folds}")
    ids = df["id"].astype(str)
    split = ids.map(dict(zip(folds["id"].astype(str), folds["split"], strict=True)))
    fold = ids.map(dict(zip(folds["id"].astype(str), folds["fold"], strict=True)))
    unknown = split.isna().to_numpy()
    if unknown.any():
        raise DataError(
            f"{int(unknown.sum())} rows are not in the folds table (first ids {_first(ids[unknown])})"
        )
    is_cv = (split == "cv").to_numpy()
    valid = is_cv & (fold == k).to_numpy()
    train = (is_cv & ~valid) | (split == "extra").to_numpy()
    return df[train].reset_index(drop=True), df[valid].reset_index(drop=True)


def full_training_rows(df: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """The rows a model trained on everything learns from (``pipeline.final: full``): every cv
    row and every extra row, the union of all folds' training rows; never a holdout row (nor a
    row the folds table does not know: an error). Row order is kept, the index is fresh."""
    ids = df["id"].astype(str)
    split = ids.map(dict(zip(folds["id"].astype(str), folds["split"], strict=True)))
    unknown = split.isna().to_numpy()
    if unknown.any():
        raise DataError(
            f"{int(unknown.sum())} rows are not in the folds table (first ids {_first(ids[unknown])})"
        )
    keep = split.isin(["cv", "extra"]).to_numpy()
    return df[keep].reset_index(drop=True)
