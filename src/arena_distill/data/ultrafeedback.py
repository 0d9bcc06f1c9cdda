"""Reader of UltraFeedback (AI-judged), raw or binarized, as arena pairs ("UT" pre-training).

Completions without a usable score or response are skipped and counted as
``completions_unusable``. The reader arguments are those of :mod:`arena_distill.data.readers`.
"""

from __future__ import annotations

import random
from itertools import combinations
from pathlib import Path

import pandas as pd

from arena_distill.data.normalize import is_missing
from arena_distill.data.rows import (
    _SEQUENCES,
    OnBadRow,
    _as_sequence,
    _conversation,
    _number,
    _require,
    _Rows,
    read_raw,
)
from arena_distill.data.schema import LABEL_A, LABEL_B, LABEL_TIE, DataError
from arena_distill.data.summary import DataSummary

UF_PAIRINGS = ("best_vs_worst", "random_pair", "all_pairs")
UF_SCORES = ("overall_score", "mean_rating")


def _mean_rating(annotations: object) -> float | None:
    """Mean of the numeric ``Rating`` values over the annotation aspects ("N/A" ignored)."""
    if not isinstance(annotations, dict):
        return None
    ratings = []
    for aspect in annotations.values():
        for item in aspect if isinstance(aspect, _SEQUENCES) else [aspect]:
            if isinstance(item, dict):
                rating = _number(item.get("Rating"))
                if rating is not None:
                    ratings.append(rating)
    return sum(ratings) / len(ratings) if ratings else None


def _pair_label(score_a: float, score_b: float, tie_margin: float) -> int:
    if abs(score_a - score_b) <= tie_margin:
        return LABEL_TIE
    return LABEL_A if score_a > score_b else LABEL_B


def _choose_pairs(
    scores: dict[int, float], pairing: str, rng: random.Random, cap: int | None
) -> list[tuple[int, int]]:
    """Completion index pairs ``(i, j)`` with ``i < j`` for one instruction."""
    idx = sorted(scores)
    if pairing == "best_vs_worst":
        order = sorted(idx, key=lambda k: (-scores[k], k))
        pairs = [(order[0], order[-1])]
    elif pairing == "random_pair":
        pairs = [tuple(rng.sample(idx, 2))]
    else:
        pairs = list(combinations(idx, 2))
        if cap is not None and len(pairs) > cap:
            pairs = rng.sample(pairs, cap)
    return sorted((min(p), max(p)) for p in pairs)


def read_ultrafeedback(
    path: str | Path,
    *,
    summary: DataSummary,
    source: str = "ultrafeedback",
    on_bad_row: OnBadRow = "error",
    pairing: str = "best_vs_worst",
    score: str = "overall_score",
    tie_margin: float = 0.0,
    seed: int = 2025,
    max_pairs_per_prompt: int | None = None,
) -> pd.DataFrame:
    """UltraFeedback (AI-judged) as arena pairs, for the "UT" pre-training data.

    Raw form (openbmb/UltraFeedback: ``instruction``, ``completions`` = list of
    ``{model, response, overall_score, annotations}``):

    * ``score="overall_score"`` uses the completion's ``overall_score``;
      ``score="mean_rating"`` the mean of the numeric ``Rating`` of its annotation aspects
      (helpfulness, honesty, instruction_following, truthfulness; "N/A" ignored).
      A completion without a usable score or response is skipped (``completions_unusable``).
    * ``pairing="best_vs_worst"``: one pair per instruction, the highest- against the
      lowest-scored completion (ties in score broken by completion order);
      ``"random_pair"``: one pair of two distinct completions drawn at random;
      ``"all_pairs"``: every unordered pair, at most ``max_pairs_per_prompt`` of them (a
      seeded random sample) when that is set.
    * An instruction with fewer than 2 usable completions is dropped and recorded in
      ``summary.dropped`` (reason ``"fewer than 2 usable completions"``), whatever
      ``on_bad_row`` says: it is expected, not bad data.
    * Ids are ``f"ut-{row_index}-{i}-{j}"`` with completion indices ``i < j``.

    Binarized form (HuggingFaceH4/ultrafeedback_binarized: ``chosen``, ``rejected``
    message lists, ``score_chosen``, ``score_rejected``), detected by its columns: one pair
    per row, id ``f"ut-{row_index}"``; ``pairing``, ``score`` and ``max_pairs_per_prompt``
    do not apply.

    Both forms: which completion goes to A is a coin flip from a generator seeded with
    ``(seed, row_index)``, so the output is deterministic and a row's draw does not depend
    on the rows before it. Label: ``|score_A - score_B| <= tie_margin`` is a tie (2),
    otherwise the higher score wins.
    """
    if pairing not in UF_PAIRINGS:
        raise ValueError(f"pairing must be one of {UF_PAIRINGS}, got {pairing!r}")
    if score not in UF_SCORES:
        raise ValueError(f"score must be one of {UF_SCORES}, got {score!r}")
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt must be >= 1, got {max_pairs_per_prompt}")
    path = Path(path)
    df = read_raw(path)
    rows = _Rows(path, source=source, summary=summary, on_bad_row=on_bad_row, n_read=len(df))

    def rng_for(r: int) -> random.Random:
        return random.Random(f"{seed}:{r}")

    def build_raw(r: int, instruction: object, completions: object) -> list[dict]:
        rid = f"ut-{r}"
        prompt = [rows.text(instruction, rid, "instruction")]
        usable: dict[int, tuple[str, str | None, float]] = {}
        for k, comp in enumerate(
            _as_sequence(completions, "completions", rows, rid, "completions")
        ):
            if not isinstance(comp, dict):
                raise DataError(
                    "completion is not an object", file=path, row=rid, column="completions"
                )
            value = (
                comp.get("overall_score")
                if score == "overall_score"
                else _mean_rating(comp.get("annotations"))
            )
            number, response = _number(value), comp.get("response")
            if number is None or is_missing(response):
                rows.count("completions_unusable")
                continue
            text = rows.text(response, rid, "completions")
            usable[k] = (text, rows.model(comp.get("model"), rid, "completions"), number)
        if len(usable) < 2:
            rows.drop(rid, "fewer than 2 usable completions")
            return []
        rng = rng_for(r)
        pairs = _choose_pairs(
            {k: v[2] for k, v in usable.items()}, pairing, rng, max_pairs_per_prompt
        )
        records = []
        for i, j in pairs:
            a, b = (j, i) if rng.random() < 0.5 else (i, j)
            (text_a, model_a, score_a), (text_b, model_b, score_b) = usable[a], usable[b]
            records.append(
                {
                    "id": f"ut-{r}-{i}-{j}",
                    "prompt": prompt,
                    "response_a": [text_a],
                    "response_b": [text_b],
                    "model_a": model_a,
                    "model_b": model_b,
                    "label": _pair_label(score_a, score_b, tie_margin),
                }
            )
        return records

    def build_binarized(
        r: int, chosen: object, rejected: object, s_chosen: object, s_rejected: object
    ) -> list[dict]:
        rid = f"ut-{r}"
        user_c, resp_c = _conversation(chosen, rows, rid, "chosen")
        user_r, resp_r = _conversation(rejected, rows, rid, "rejected")
        if user_c != user_r:
            raise DataError(
                "user turns of chosen and rejected differ", file=path, row=rid, column="rejected"
            )
        scores = (_number(s_chosen), _number(s_rejected))
        if None in scores:
            raise DataError(
                f"scores must be numbers, got {s_chosen!r}, {s_rejected!r}",
                file=path,
                row=rid,
                column="score_chosen/score_rejected",
            )
        sides = [(resp_c, scores[0]), (resp_r, scores[1])]
        if rng_for(r).random() < 0.5:
            sides.reverse()
        (resp_a, score_a), (resp_b, score_b) = sides
        label = _pair_label(score_a, score_b, tie_margin)  # type: ignore[arg-type]
        return [
            {
                "id": rid,
                "prompt": user_c,
                "response_a": resp_a,
                "response_b": resp_b,
                "model_a": None,
                "model_b": None,
                "label": label,
            }
        ]

    if "instruction" in df.columns or "completions" in df.columns:
        _require(df, ("instruction", "completions"), path)
        build, columns = build_raw, ("instruction", "completions")
    elif "chosen" in df.columns or "rejected" in df.columns:
        columns = ("chosen", "rejected", "score_chosen", "score_rejected")
        _require(df, columns, path)
        build = build_binarized
    else:
        raise DataError(
            "neither raw UltraFeedback (instruction, completions) nor binarized "
            f"(chosen, rejected, score_chosen, score_rejected) columns; found {list(df.columns)}",
            file=path,
        )
    for r, cells in enumerate(zip(*(df[c].tolist() for c in columns), strict=True)):
        rows.add(f"ut-{r}", build, r, *cells)
    return rows.finish()
