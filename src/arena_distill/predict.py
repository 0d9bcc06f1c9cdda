"""Prediction: the rows of a table in, a validated submission and a prediction table out.

The core that the ``predict`` stage (``arena-distill predict``, test or holdout rows of a run)
and the Kaggle notebook (``kaggle.predict_csv``, the raw ``test.csv``) share: one
:class:`PredictRequest` (what to predict, with which model, where to write) and one
``settings.PredictSettings`` (how) go into :func:`predict_rows`. The forward passes run on the
inference engine (``arena_distill.inference``); this module adds:

* the time-budget guard (``guard_decision``): from a measured throughput (padded tokens/s) it
  estimates each plan and falls back, in order, to a shorter ``max_length`` and then to no TTA;
* swap-TTA: both orientations predicted, the swapped one mirrored back, probabilities averaged
  (a hybrid head gets each orientation's own row features, ``features.orientation_features``);
* ``postprocess``: the 4th place's fixed probabilities for empty and identical answers;
* the outputs: ``submission.csv`` (validated), ``predictions.parquet``, ``metrics.json``,
  ``manifest.json``, written atomically.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from arena_distill import faults
from arena_distill.data.dedup import normalise_for_hash
from arena_distill.data.swap import mirror_probs
from arena_distill.features import orientation_features, uses_features
from arena_distill.inference import (
    ORIGINAL,
    SWAPPED,
    InferenceResult,
    ModelSpec,
    load_model,
    make_batches,
    measure_throughput,
    padded_tokens,
    resolve_devices,
    run_inference,
)
from arena_distill.io import StageInputError, StageTimer, atomic_dir, write_json, write_manifest
from arena_distill.layout import (
    FINAL_COLS,
    PROB_COLS,
    SWAP_LOGIT_COLS,
    TTA_PROB_COLS,
    prediction_table,
    score_predictions,
)
from arena_distill.metrics import accuracy, inference_throughput, log_loss, probs_from_logits
from arena_distill.settings import EMPTY_A, IDENTICAL, PredictSettings
from arena_distill.submission import read_submission, write_submission
from arena_distill.text import PromptConfig
from arena_distill.tokens import encoding_map, tokenize_both_orientations

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The time-budget guard
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    max_length: int
    tta: bool


def candidate_lengths(max_length: int, fallback_max_length: int | None) -> list[int]:
    """The token budgets a plan may use, longest first: the requested one and the fallback
    when it is shorter (the guard's and the planner's candidates)."""
    out = [int(max_length)]
    if fallback_max_length and int(fallback_max_length) < out[0]:
        out.append(int(fallback_max_length))
    return out


def plan_work(
    lengths: Mapping[bool, Sequence[int]],
    plan: Plan,
    batch_size: int,
    max_tokens: int | None,
    arch=None,
) -> float:
    """What ``plan`` costs on the engine's batches: forward FLOPs when the architecture is
    known (``planner.Architecture``), else padded positions. Lengths above
    ``plan.max_length`` are capped there (re-encoding at a shorter budget gives at most that
    many tokens, the rest are unchanged)."""
    total = 0.0
    for o in (ORIGINAL, SWAPPED) if plan.tta else (ORIGINAL,):
        capped = np.minimum(np.asarray(lengths[o], dtype=np.int64), plan.max_length)
        if not len(capped):
            continue
        budget = max_tokens if max_tokens is not None else batch_size * plan.max_length
        if arch is None:
            total += padded_tokens(capped, make_batches(capped, batch_size, budget))
        else:
            from arena_distill.planner import batch_flops

            total += batch_flops(capped, arch, batch_size, budget)[0]
    return total


def plan_tokens(
    lengths: Mapping[bool, Sequence[int]], plan: Plan, batch_size: int, max_tokens: int | None
) -> int:
    """Padded positions ``plan`` computes (``plan_work`` without an architecture)."""
    return int(plan_work(lengths, plan, batch_size, max_tokens))


@dataclass
class GuardDecision:
    requested: Plan
    plan: Plan
    action: str  # none | shorter_max_length | tta_off | shorter_max_length+tta_off | over_budget
    budget_s: float
    estimated_s: float
    work_per_s: float  # the measured rate, in ``unit`` per second
    unit: str = "padded_tokens"  # padded_tokens | flops
    candidates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["requested"] = dataclasses.asdict(self.requested)
        d["plan"] = dataclasses.asdict(self.plan)
        return d


def guard_decision(
    *,
    requested: Plan,
    work: Mapping[Plan, float],
    work_per_s: float,
    budget_s: float,
    unit: str = "padded_tokens",
    elapsed_s: float = 0.0,
    n_devices: int = 1,
    fallback_max_length: int | None = None,
) -> GuardDecision:
    """The first plan of [requested, shorter max_length, then TTA off] that fits the budget.

    A plan's estimate is ``work[plan] / (work_per_s * n_devices)`` (devices work in parallel
    on shards of similar size) plus ``elapsed_s`` already spent; work is counted in ``unit``
    (padded tokens, or FLOPs when the architecture is known: long rows cost more per token).
    When none fits, the cheapest plan is taken and the action is ``over_budget``.
    """
    if work_per_s <= 0:
        raise ValueError(f"work_per_s must be > 0, got {work_per_s}")
    candidates = [requested]
    if fallback_max_length is not None and fallback_max_length < requested.max_length:
        candidates.append(Plan(int(fallback_max_length), requested.tta))
    if requested.tta:
        candidates.append(Plan(candidates[-1].max_length, False))
    rows = []
    for plan in candidates:
        est = elapsed_s + float(work[plan]) / (work_per_s * max(n_devices, 1))
        rows.append({**dataclasses.asdict(plan), unit: float(work[plan]), "seconds": est})
    chosen = next((i for i, r in enumerate(rows) if r["seconds"] <= budget_s), None)
    if chosen is None:
        plan, action = candidates[-1], "over_budget"
        est = rows[-1]["seconds"]
    else:
        plan, est = candidates[chosen], rows[chosen]["seconds"]
        changes = []
        if plan.max_length != requested.max_length:
            changes.append("shorter_max_length")
        if plan.tta != requested.tta:
            changes.append("tta_off")
        action = "+".join(changes) or "none"
    return GuardDecision(requested, plan, action, budget_s, est, work_per_s, unit, rows)


def budget_seconds(hours: float | None, safety: float = 1.0) -> float:
    return math.inf if hours is None else float(hours) * 3600.0 * float(safety)


# ---------------------------------------------------------------------------------------------
# Post-processing (4th place)
# ---------------------------------------------------------------------------------------------

RULES = ("identical", "empty_a", "empty_b")


def identical_answers(df: pd.DataFrame) -> np.ndarray:
    """Rows whose answers are the same after normalisation (NFKC, case, whitespace)."""
    return np.array(
        [
            normalise_for_hash(list(a)) == normalise_for_hash(list(b))
            for a, b in zip(df["response_a"], df["response_b"], strict=True)
        ],
        dtype=bool,
    )


def postprocess(
    probs: np.ndarray,
    *,
    empty_a: Sequence[bool],
    empty_b: Sequence[bool],
    identical: Sequence[bool],
    empty_answer: Sequence[float] = EMPTY_A,
    identical_answers: Sequence[float] = IDENTICAL,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Fixed probabilities for degenerate pairs: (new probs, rule per row or "", counts).

    Identical answers (both empty included) → ``identical_answers``; only A empty →
    ``empty_answer`` ([A, B, tie]: B wins); only B empty → its mirror. A rule's count is the
    rows it changed.
    """
    out = np.array(probs, dtype=np.float64, copy=True)
    ea = np.asarray(empty_a, dtype=bool)
    eb = np.asarray(empty_b, dtype=bool)
    same = np.asarray(identical, dtype=bool)
    rule = np.full(len(out), "", dtype=object)
    masks = {"identical": same, "empty_a": ea & ~eb & ~same, "empty_b": eb & ~ea & ~same}
    fixed = {
        "identical": np.asarray(identical_answers, dtype=np.float64),
        "empty_a": np.asarray(empty_answer, dtype=np.float64),
        "empty_b": mirror_probs(np.asarray([empty_answer], dtype=np.float64))[0],
    }
    counts = {}
    for name in RULES:
        m = masks[name]
        out[m] = fixed[name]
        rule[m] = name
        counts[name] = int(m.sum())
    return out, rule, counts


def tta_probs(logits: np.ndarray, swapped_logits: np.ndarray | None) -> np.ndarray:
    """Mean of the original probabilities and the mirrored swapped ones (or the original)."""
    p = probs_from_logits(logits)
    if swapped_logits is None:
        return p
    return (p + probs_from_logits(mirror_probs(swapped_logits))) / 2


# ---------------------------------------------------------------------------------------------
# The core
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PredictRequest:
    """What to predict, with which model, and where the outputs go.

    ``rows``: a normalised table (the data stage's layout; ``label`` is scored when every row
    has one). ``model_cfg["name_or_path"]``: the model folder (the base when ``adapter_dir`` is
    a peft adapter on it). ``prompt``: the template the model was trained with. ``data_key``
    names the rows in the token cache (None: their content hash). ``sample_ids``: the sample
    submission's ids, which the submission must match. ``inputs`` and ``manifest_config`` go
    into the manifest, and so do the keys of ``manifest_extra`` (the stage's input fingerprint,
    ``fingerprint.stamp``). ``t_start`` (a ``time.perf_counter()`` value) is when the time budget
    started (None: now). ``passes``: how many predictions of this size still have to run within
    the same time budget, this one included (the Kaggle predictor of ``pipeline.final: folds``
    runs one per fold student: K, then K − 1, ...); the guard counts this one's work that many
    times, so the first fold already picks a plan all of them fit in."""

    rows: pd.DataFrame
    model_cfg: Mapping[str, Any]
    prompt: PromptConfig
    out_dir: str | Path
    cache_dir: str | Path
    adapter_dir: str | Path | None = None
    tokenizer_dir: str | Path | None = None
    data_key: str | None = None
    sample_ids: Sequence[str] | None = None
    prior: Sequence[float] | None = None  # for rows the model gives nothing for (None: uniform)
    split: str = "test"
    inputs: Sequence[Path] = ()
    manifest_config: Mapping[str, Any] | None = None
    manifest_extra: Mapping[str, Any] | None = None
    t_start: float | None = None
    passes: int = 1

    @property
    def ids(self) -> list[str]:
        return self.rows["id"].astype(str).tolist()

    @property
    def model_dir(self) -> Path:
        return Path(self.model_cfg["name_or_path"])

    @property
    def labelled(self) -> bool:
        rows = self.rows
        return "label" in rows.columns and len(rows) > 0 and bool(rows["label"].notna().all())


def check_model_dir(model_dir: str | Path, adapter_dir: str | Path | None = None) -> None:
    """``StageInputError`` unless ``model_dir`` is a model folder (and ``adapter_dir`` an adapter)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise StageInputError(
            f"{model_dir} is not a model folder (no config.json); set stages.predict.model_dir "
            "(the quantize or merge stage's output, or any classifier folder)"
        )
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise StageInputError(f"{adapter_dir} is not a peft adapter (no adapter_config.json)")


class _Encoder:
    """The request's rows as token ids in both orientations, at any token budget (cached)."""

    def __init__(self, request: PredictRequest) -> None:
        from arena_distill.models.factory import load_tokenizer

        self.request = request
        tokenizer_dir = request.tokenizer_dir or request.model_dir
        self.tokenizer = load_tokenizer({**request.model_cfg, "name_or_path": str(tokenizer_dir)})

    def __call__(self, max_length: int) -> dict[bool, list[list[int]]]:
        r = self.request
        enc = encoding_map(
            tokenize_both_orientations(
                r.rows,
                self.tokenizer,
                dataclasses.replace(r.prompt, max_length=max_length),
                cache_dir=r.cache_dir,
                data_key=r.data_key,
            )
        )
        return {o: [enc[(i, o)] for i in r.ids] for o in (ORIGINAL, SWAPPED)}


def _architecture(model_dir: Path):
    """The model folder's architecture for the FLOPs count, or None when unknown."""
    from arena_distill.planner import Architecture

    try:
        return Architecture.of(model_dir)
    except (KeyError, ValueError, TypeError):
        return None


def _run_guard(
    spec: ModelSpec,
    enc: dict[bool, list[list[int]]],
    settings: PredictSettings,
    requested: Plan,
    devices: list[str],
    t_start: float,
    passes: int = 1,
    features: Mapping[bool, np.ndarray] | None = None,
) -> tuple[GuardDecision, dict, torch.nn.Module | None]:
    """Measure throughput on the longest batches and decide the plan (in FLOPs when the
    model's architecture is known, else in padded tokens) for ``passes`` predictions of this
    size still to run; the model is returned for reuse when one device will predict (several
    devices load their own copies)."""
    model, _ = load_model(spec, devices[0])
    batch_size = int(settings.batch_size)
    cfg_max_tokens = int(settings.max_tokens_per_batch) if settings.max_tokens_per_batch else None
    arch = _architecture(Path(spec.model_cfg["name_or_path"]))
    measured = measure_throughput(
        model,
        enc[ORIGINAL],
        pad_token_id=int(model.config.pad_token_id),
        batch_size=batch_size,
        max_tokens=cfg_max_tokens or batch_size * requested.max_length,
        n_batches=int(settings.guard_batches),
        device=devices[0],
        flops=None if arch is None else arch.flops,
        features=None if features is None else features[ORIGINAL],
    )
    lengths = {o: [len(s) for s in enc[o]] for o in enc}
    fallback = settings.fallback_max_length
    lens = candidate_lengths(requested.max_length, fallback)
    plans = [Plan(m, t) for m in lens for t in (True, False)]
    work = {p: passes * plan_work(lengths, p, batch_size, cfg_max_tokens, arch) for p in plans}
    unit, rate = ("flops", measured["flops_per_s"]) if arch else ("padded_tokens", None)
    decision = guard_decision(
        requested=requested,
        work=work,
        work_per_s=max(rate if rate is not None else measured["padded_tokens_per_s"], 1e-9),
        unit=unit,
        budget_s=budget_seconds(settings.time_budget_hours, settings.time_budget_safety),
        elapsed_s=time.perf_counter() - t_start,
        n_devices=len(devices),
        fallback_max_length=int(fallback) if fallback else None,
    )
    log_fn = log.info if decision.action == "none" else log.warning
    log_fn(
        "time-budget guard: %s -> plan %s (estimated %.0f s of %.0f s at %.3g %s/s)",
        decision.action,
        decision.plan,
        decision.estimated_s,
        decision.budget_s,
        decision.work_per_s,
        unit,
    )
    if len(devices) > 1:  # every worker loads its own copy
        del model
        model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return decision, {**decision.to_dict(), "measured": measured, "passes": passes}, model


def _scores(table: pd.DataFrame, pp_probs: np.ndarray, final: np.ndarray) -> dict:
    labels = table["label"].to_numpy(dtype=np.int64)
    out = score_predictions(table)
    if set(TTA_PROB_COLS) <= set(table.columns):
        out["accuracy_tta"] = accuracy(table[list(TTA_PROB_COLS)].to_numpy(), labels)
    out["log_loss_postprocessed"] = log_loss(pp_probs, labels)
    out["accuracy_postprocessed"] = accuracy(pp_probs, labels)
    out["log_loss_submitted"] = log_loss(final, labels)
    return out


def with_fallback(
    table: pd.DataFrame, tta: bool, prior: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities to submit, with a fallback where the model gave none: a row whose
    swap-TTA mean is not finite keeps the orientation that is (``one_orientation``), a row
    with no finite prediction (out of memory alone, fp16 overflow) gets ``prior`` (uniform
    when None). Returns the probabilities and the fallback used per row ("" for none)."""
    plain = table[list(PROB_COLS)].to_numpy(dtype=np.float64)
    probs = table[list(TTA_PROB_COLS)].to_numpy(dtype=np.float64) if tta else plain.copy()
    fallback = np.full(len(table), "", dtype=object)
    ok = np.isfinite(probs).all(axis=1)
    if tta:
        # the swapped orientation's probabilities, mirrored back (NaN where it has none)
        swapped = probs_from_logits(table[list(SWAP_LOGIT_COLS)].to_numpy(dtype=np.float64))
        for one in (plain, swapped):
            use = ~ok & np.isfinite(one).all(axis=1)
            probs[use], fallback[use] = one[use], "one_orientation"
            ok |= use
    base = np.full(3, 1 / 3) if prior is None else np.asarray(prior, dtype=np.float64)
    probs[~ok], fallback[~ok] = base / base.sum(), "prior"
    if (~ok).any() or (fallback != "").any():
        log.warning("fallback predictions: %s", dict(Counter(fallback[fallback != ""])))
    return probs, fallback


def _prediction_table(
    request: PredictRequest, result: InferenceResult, plan: Plan, settings: PredictSettings
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict[str, int]]:
    """The prediction table with ``final_p_*`` (what is submitted) and ``postprocess_rule``;
    also the post-processed probabilities, the submitted ones and the post-processing counts."""
    rows = request.rows
    extra = {"label": rows["label"].astype("int64").to_numpy()} if request.labelled else {}
    logits = result.logits
    table = prediction_table(request.ids, logits[ORIGINAL], logits.get(SWAPPED), **extra)
    probs, fallback = with_fallback(table, plan.tta, request.prior)
    table["fallback"] = fallback
    pp = settings.postprocess
    pp_probs, rule, pp_counts = postprocess(
        probs,
        empty_a=rows["empty_a"].to_numpy(dtype=bool),
        empty_b=rows["empty_b"].to_numpy(dtype=bool),
        identical=identical_answers(rows),
        empty_answer=list(pp.empty_answer),
        identical_answers=list(pp.identical_answers),
    )
    final = pp_probs if pp.enabled else probs
    table[list(FINAL_COLS)] = final
    table["postprocess_rule"] = rule if pp.enabled else ""
    return table, pp_probs, final, pp_counts


def predict_rows(request: PredictRequest, settings: PredictSettings) -> Path:
    """Predict ``request.rows`` and write ``request.out_dir`` atomically: ``submission.csv``
    (validated against the row ids and the sample ids), ``predictions.parquet``,
    ``metrics.json`` and ``manifest.json``."""
    t_start = time.perf_counter() if request.t_start is None else request.t_start
    timer = StageTimer()
    ids = request.ids
    if len(set(ids)) != len(ids):
        raise StageInputError(f"duplicate ids in the {request.split} rows")
    check_model_dir(request.model_dir, request.adapter_dir)
    adapter = None if request.adapter_dir is None else str(request.adapter_dir)
    spec = ModelSpec(dict(request.model_cfg), adapter, str(settings.dtype), settings.device_map)
    encode = _Encoder(request)
    max_length = int(settings.max_length or request.prompt.max_length)
    enc = encode(max_length)
    # a hybrid head's input: every row's features in each orientation, from the row as shown
    features = orientation_features(request.rows) if uses_features(request.model_cfg) else None
    timer.lap("tokenize")
    devices = resolve_devices(settings.devices)
    if settings.device_map is not None:  # one copy over every device, driven from this process
        devices = devices[:1]
    requested = Plan(max_length, bool(settings.tta))
    log.info("%d %s rows, devices %s, plan %s", len(ids), request.split, devices, requested)

    decision, decision_info, model = None, None, None
    if settings.time_budget_hours is not None and ids:
        decision, decision_info, model = _run_guard(
            spec,
            enc,
            settings,
            requested,
            devices,
            t_start,
            max(1, int(request.passes)),
            features,
        )
        timer.lap("guard")
    plan = decision.plan if decision is not None else requested
    if plan.max_length != max_length:
        enc = encode(plan.max_length)
        timer.lap("tokenize_fallback")
    batch_size = int(settings.batch_size)
    result = run_inference(
        spec,
        enc,
        devices=devices,
        tta=plan.tta,
        batch_size=batch_size,
        max_tokens=int(settings.max_tokens_per_batch or batch_size * plan.max_length),
        progress=bool(settings.progress),
        model=model,
        features=features,
    )
    timer.lap("inference")
    # every sequence predicted: both orientations of a row under swap-TTA
    throughput = inference_throughput(
        sum(int(s["items"]) for s in result.shards), result.tokens, result.seconds
    )
    table, pp_probs, final, pp_counts = _prediction_table(request, result, plan, settings)

    out_dir = Path(request.out_dir)
    with atomic_dir(out_dir) as tmp:
        sub = write_submission(
            tmp / "submission.csv",
            ids,
            final,
            expected_ids=ids,
            sample_ids=request.sample_ids,
            clip_eps=float(settings.clip_eps),
        )
        table.to_parquet(tmp / "predictions.parquet", index=False)
        faults.point("predict.write")
        seconds = time.perf_counter() - t_start
        metrics = {
            "split": str(request.split),
            "rows": len(ids),
            "seconds": round(seconds, 3),
            "inference_seconds": round(result.seconds, 3),
            "rows_per_s": len(ids) / result.seconds if result.seconds > 0 else None,
            "tokens": result.tokens,
            "padded_tokens": result.padded,
            "padding_share": 1 - result.tokens / result.padded if result.padded else 0.0,
            "tokens_per_s": result.tokens / result.seconds if result.seconds > 0 else None,
            "throughput": throughput,
            "devices": devices,
            "shards": result.shards,
            "tta": plan.tta,
            "max_length": plan.max_length,
            "requested": {"tta": requested.tta, "max_length": requested.max_length},
            "guard": decision_info,
            "postprocess": {"enabled": settings.postprocess.enabled, "rows_changed": pp_counts},
            "fallback": {
                "rows": dict(Counter(table["fallback"][table["fallback"] != ""])),
                "oom_splits": sum(sh["oom_splits"] for sh in result.shards),
                "oom_rows": sum(sh["failed_rows"] for sh in result.shards),
            },
            "model_dir": str(request.model_dir),
            "adapter_dir": adapter,
        }
        if request.labelled:
            submitted = read_submission(tmp / "submission.csv")
            metrics["scores"] = _scores(table, pp_probs, submitted.iloc[:, 1:].to_numpy())
            log.info("scores: %s", metrics["scores"])
        write_json(tmp / "metrics.json", metrics)
        small_inputs = [*request.inputs, request.model_dir / "config.json"]
        if adapter is not None:
            small_inputs.append(Path(adapter) / "adapter_config.json")
        config = request.manifest_config or {
            "model": dict(request.model_cfg),
            "prompt": request.prompt.to_dict(),
            "stage": settings.to_dict(),
        }
        write_manifest(
            tmp,
            stage="predict",
            config=dict(config),
            inputs=small_inputs,
            outputs={
                "rows": len(sub),
                "tta": plan.tta,
                "max_length": plan.max_length,
                "throughput": throughput,
            },
            timer=timer,
            extra=request.manifest_extra,
        )
    log.info(
        "%d predictions written to %s (%.1f rows/s)", len(ids), out_dir, metrics["rows_per_s"] or 0
    )
    return out_dir
