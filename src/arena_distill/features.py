"""Per-row features beside the token ids: the length features of the answers.

Two users:

- the classical baselines and the stacker (``baselines``, ``stacking``) take
  :func:`length_features` as they are and fit their own ``StandardScaler``;
- the hybrid classification head (``model.head: hybrid``, ``models.hybrid.HybridHead``) sees
  :func:`head_features`: the same 8 values divided by the fixed constants of
  :data:`FEATURE_SCALE`. The normalisation is a constant, never fitted on data, so every fold
  model of a run (and every run) sees the same scale: fold heads stay averageable by the merge,
  and a row's features are a pure function of the row, recomputed wherever it is predicted
  (the predict stage, the Kaggle notebook from the raw ``test.csv``).

Features travel beside the token ids, keyed as the encodings are (``(id, swapped)``,
``tokens.encoding_map``): :func:`feature_map` computes both orientations, the swapped ones from
the A/B-swapped row itself (``data.swap.swap_table``), so the swapped input is always paired
with the swapped row's features and a model's swap-TTA mirrors exactly.

No torch here: the Kaggle side and the scripts read a folder's head marker
(:func:`folder_head`) without loading a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_distill.data.swap import swap_table

# The feature set a hybrid head is trained on; recorded in a saved folder's config.json and
# checked when it is loaded (a folder of another set is refused, not fed the wrong columns).
FEATURE_SET = "length_v1"
FEATURE_NAMES = (
    "log_words_a_minus_b",
    "log_chars_a_minus_b",
    "log_newlines_a_minus_b",
    "empty_a_minus_b",
    "abs_log_words_a_minus_b",
    "log_words_a_plus_b",
    "identical_answers",
    "log_turns",
)
N_FEATURES = len(FEATURE_NAMES)
# Fixed per-feature divisors: they bring each column to roughly unit size on chat answers
# (log-count differences rarely exceed 2-4, the log word-count sum of two answers is ~4-16,
# flags and log turns are already O(1)). Constants, not statistics of any data set.
FEATURE_SCALE = np.array([2.0, 2.0, 2.0, 1.0, 2.0, 10.0, 1.0, 1.0], dtype=np.float32)

# config.json key of a saved model folder (shared with quantize_methods.MARKER):
# {"head": {"type": "hybrid", "features": FEATURE_SET, "n_features": N_FEATURES}, ...}
MARKER = "arena_distill"
HYBRID = "hybrid"

FeatureMap = dict[tuple[str, bool], tuple[float, ...]]


def _text(turns: Sequence[str]) -> str:
    return "\n".join(t or "" for t in turns)


def length_features(df: pd.DataFrame) -> np.ndarray:
    """Per row: log word counts of A and B, their difference and ratio, characters, newlines,
    empty flags (antisymmetric parts change sign under the swap), total length and turns."""
    a = [_text(t) for t in df["response_a"]]
    b = [_text(t) for t in df["response_b"]]
    wa = np.log1p([len(x.split()) for x in a])
    wb = np.log1p([len(x.split()) for x in b])
    ca = np.log1p([len(x) for x in a])
    cb = np.log1p([len(x) for x in b])
    na = np.log1p([x.count("\n") for x in a])
    nb = np.log1p([x.count("\n") for x in b])
    ea = df["empty_a"].to_numpy(dtype=float)
    eb = df["empty_b"].to_numpy(dtype=float)
    same = np.array([x.strip() == y.strip() for x, y in zip(a, b, strict=True)], dtype=float)
    return np.column_stack(
        [
            wa - wb,
            ca - cb,
            na - nb,
            ea - eb,
            np.abs(wa - wb),
            wa + wb,
            same,
            np.log1p(df["n_turns"].to_numpy(dtype=float)),
        ]
    )


def head_features(df: pd.DataFrame) -> np.ndarray:
    """What a hybrid head sees for each row of ``df`` in its orientation: (n, 8) float32,
    :func:`length_features` divided by :data:`FEATURE_SCALE`."""
    return (length_features(df) / FEATURE_SCALE).astype(np.float32)


def orientation_features(df: pd.DataFrame) -> dict[bool, np.ndarray]:
    """``{False: head_features(df), True: head_features(swap_table(df))}``, rows in ``df``'s
    order: the features of every row as given and A/B-swapped."""
    return {False: head_features(df), True: head_features(swap_table(df))}


def feature_map(df: pd.DataFrame) -> FeatureMap:
    """``{(id, swapped): features}`` of every row of ``df`` in both orientations (the key of
    ``tokens.encoding_map``); values are tuples of float32 values, exact through a float32
    tensor."""
    ids = df["id"].astype(str).tolist()
    out: FeatureMap = {}
    for swapped, values in orientation_features(df).items():
        for rid, row in zip(ids, values.tolist(), strict=True):
            out[(rid, swapped)] = tuple(row)
    return out


def folder_head(folder: str | Path) -> dict[str, Any] | None:
    """The head a saved model folder's ``config.json`` records (``{"type": "hybrid", ...}``),
    or None: a plain linear head, or not a local folder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    mark = json.loads(path.read_text()).get(MARKER)
    head = mark.get("head") if isinstance(mark, Mapping) else None
    return dict(head) if isinstance(head, Mapping) else None


def check_folder_head(head: Mapping[str, Any], where: str) -> None:
    """Refuse a recorded head this code cannot feed: another type or feature set."""
    if head.get("type") != HYBRID:
        raise ValueError(f"{where}: unknown head {dict(head)}; this arena_distill knows {HYBRID}")
    if head.get("features") != FEATURE_SET or int(head.get("n_features", -1)) != N_FEATURES:
        raise ValueError(
            f"{where}: the hybrid head was trained on features {head.get('features')!r} "
            f"({head.get('n_features')}), this arena_distill computes {FEATURE_SET!r} "
            f"({N_FEATURES}): install the version the model was trained with"
        )


def head_marker() -> dict[str, Any]:
    """The ``config.json`` record of a hybrid head (under :data:`MARKER` ``.head``)."""
    return {"type": HYBRID, "features": FEATURE_SET, "n_features": N_FEATURES}


def uses_features(model_cfg: Mapping[str, Any]) -> bool:
    """Whether the model of ``model_cfg`` has a hybrid head: ``head: hybrid`` in the config, or
    a saved folder at ``name_or_path`` that records one (a merged / quantized model, whatever
    the config says)."""
    if model_cfg.get("head", "linear") == HYBRID:
        return True
    name = model_cfg.get("name_or_path")
    return name is not None and folder_head(str(name)) is not None


def row_features(model_cfg: Mapping[str, Any], df: pd.DataFrame) -> FeatureMap | None:
    """:func:`feature_map` of ``df`` when the model uses features, else None."""
    return feature_map(df) if uses_features(model_cfg) else None
