"""The one inference engine: every forward pass over token ids that is not a training step.

Prediction (``predict.predict_rows``, the Kaggle notebook), the out-of-fold predictions and
logit dumps of the training stages (``crossval``, ``stages.dump_logits``) and the GPTQ drift
check (``stages.quantize``) all run their models through :func:`predict_logits`; batches are
padded by ``collate.pad_right``, the same padding the training collator uses.

* ``make_batches``: length-sorted (longest first), dynamically sized batches: at most
  ``batch_size`` rows and at most ``max_tokens`` padded positions (rows × longest row) each; a
  single row longer than ``max_tokens`` forms a batch of its own; the cuts between batches
  minimise padding plus a cost per batch. ``predict_logits`` runs a
  model over them and returns the logits in input order; a hybrid head's per-row features
  (``features=``, ``models.hybrid``) travel with their rows through the sorting and splitting.
* ``shard_work``: which (row, orientation) each device predicts. With swap-TTA on an even
  number of devices the first half does the original orientation and the second half the
  swapped one (the 1st place on 2× T4: original on GPU0, swapped on GPU1); otherwise all work
  items are dealt out longest first, round robin, so devices get similar token counts.
* ``run_inference``: one model copy per device, each in its own process
  (``torch.multiprocessing`` spawn) when there are 2+ devices; in-process with one device (CPU).
* ``measure_throughput``: padded tokens/s on the first (longest) batches, for the time guard.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena_distill import faults
from arena_distill.collate import batch_buckets, bucket_length, pad_right, padding_mask_needed
from arena_distill.models.hybrid import head_features

log = logging.getLogger(__name__)

ORIGINAL, SWAPPED = False, True

# ---------------------------------------------------------------------------------------------
# Devices and batches
# ---------------------------------------------------------------------------------------------


def resolve_devices(spec: Any) -> list[str]:
    """``auto`` (or None) → every visible CUDA device, else ``["cpu"]``; a name or a list as is."""
    if spec is None or spec == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    if isinstance(spec, str):
        return [spec]
    devices = [str(d) for d in spec]
    if not devices:
        raise ValueError("devices must name at least one device")
    return devices


def make_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_tokens: int,
    buckets: Sequence[int] | None = None,
    batch_cost: float | None = None,
) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, longest rows first.

    Each batch has at most ``batch_size`` rows and ``len(batch) * width <= max_tokens``
    (padded positions; width: the longest row, rounded up to a bucket with ``buckets``), except
    a row longer than ``max_tokens`` alone. Every index appears in exactly one batch. Longest
    first: an out-of-memory shows at once, and the throughput measured on the first batches is
    a conservative one.

    The rows are sorted by length and cut into consecutive batches that minimise the padded
    positions plus ``batch_cost`` positions per batch (default: the mean row length, so a cut
    must save at least one average row of padding): an exact dynamic programme, O(rows ×
    batch_size). Where lengths are dense this gives the full batches of a greedy fill; in a
    sparse tail it cuts between rows far apart instead of padding short rows to a long one.
    """
    if batch_size < 1 or max_tokens < 1:
        raise ValueError(f"batch_size and max_tokens must be >= 1, got {batch_size}, {max_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    n = len(order)
    if n == 0:
        return []
    sorted_len = np.maximum(lengths[order], 1).astype(np.float64)
    # a batch's width: its first (longest) row, rounded up to a bucket
    widths = sorted_len
    if buckets:
        widths = np.array([bucket_length(int(x), buckets) for x in sorted_len], dtype=np.float64)
    cost = float(sorted_len.mean()) if batch_cost is None else float(batch_cost)
    # best[j]: least cost of rows [0, j); start[j]: where the last batch of that solution starts
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        i = np.arange(max(0, j - batch_size), j)  # candidate starts of the batch ending at j
        rows = j - i
        padded = rows * widths[i]  # the first row of a batch is its longest
        total = best[i] + padded + cost
        total[(padded > max_tokens) & (rows > 1)] = np.inf
        k = int(np.argmin(total))  # ties: the earliest start, i.e. the fuller batch
        best[j], start[j] = total[k], i[k]
    cuts = []
    j = n
    while j > 0:
        cuts.append((int(start[j]), j))
        j = int(start[j])
    return [order[a:b] for a, b in reversed(cuts)]


def padded_tokens(
    lengths: Sequence[int], batches: Sequence[np.ndarray], buckets: Sequence[int] | None = None
) -> int:
    """Positions computed for ``batches`` (rows × width, summed; width: the longest row,
    rounded up to a bucket with ``buckets``)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(
        sum(len(b) * bucket_length(int(lengths[b].max()), buckets) for b in batches if len(b))
    )


@dataclass
class BatchRun:
    """Logits (N, 3) in input order and what computing them cost."""

    logits: np.ndarray
    tokens: int = 0  # real tokens
    padded: int = 0  # computed positions
    seconds: float = 0.0
    batches: int = 0
    oom_splits: int = 0  # batches split in two after an out-of-memory error
    failed_rows: int = 0  # rows that ran out of memory alone: their logits stay NaN
    buckets: list[int] | None = None  # widths batches were padded to (None: longest row)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def padded_per_s(self) -> float:
        return self.padded / self.seconds if self.seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "predict",
    max_batches: int | None = None,
    position: int = 0,
    length_buckets: Sequence[int] | None = None,
    features: np.ndarray | None = None,
) -> BatchRun:
    """Logits of ``model`` on every sequence, in input order (float32, shape (N, 3)).

    Length-sorted dynamic batches (``make_batches``; ``max_tokens`` defaults to ``batch_size``
    × the longest sequence). ``max_batches`` stops early (throughput measurement); rows not
    reached are left NaN. Batch widths are rounded up to ``length_buckets`` (default: the
    model's, ``collate.batch_buckets``; set when its kernels compile once per shape); the
    padding is masked and every row is pooled at its own last token, so the logits are the same.
    ``features`` (N, n_features), one row per sequence in the same order: what a hybrid head
    (``models.hybrid``) sees beside each sequence, batched with it; ignored by other heads.
    """
    n = len(sequences)
    out = np.full((n, 3), np.nan, dtype=np.float32)
    if features is not None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) != n:
            raise ValueError(
                f"features must be one row per sequence: shape {features.shape} for {n} sequences"
            )
    if n == 0:
        return BatchRun(out)
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=n)
    buckets = length_buckets if length_buckets is not None else batch_buckets(model)
    if max_tokens is None:
        max_tokens = batch_size * bucket_length(int(lengths.max()), buckets)
    batches = make_batches(lengths, batch_size, max_tokens, buckets)
    if max_batches is not None:
        batches = batches[:max_batches]
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    run = BatchRun(out)
    run.buckets = list(buckets) if buckets else None
    from tqdm.auto import tqdm

    bar = tqdm(
        total=int(sum(len(b) for b in batches)),
        desc=desc,
        unit="row",
        disable=not progress,
        position=position,
        leave=position == 0,
    )
    use_mask = padding_mask_needed(model)
    _sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        _forward(model, sequences, batch, pad_token_id, device, run, lengths, use_mask, features)
        run.batches += 1
        bar.update(len(batch))
        faults.point("inference.batch")
    _sync(device)
    run.seconds = time.perf_counter() - t0
    bar.close()
    return run


def is_out_of_memory(exc: BaseException) -> bool:
    """An accelerator out-of-memory error (CUDA's own class, or a RuntimeError saying so)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _forward(
    model,
    sequences,
    batch: np.ndarray,
    pad_token_id: int,
    device,
    run,
    lengths,
    use_mask=True,
    features: np.ndarray | None = None,
) -> None:
    """One batch into ``run.logits``; on an out-of-memory error the batch is split in two and
    each half retried (recursively), so a batch that is too big for the device costs time, not
    the run. A single row that does not fit keeps NaN logits (``run.failed_rows``): the caller
    falls back for it (``predict.predict_rows`` gives it the class prior). ``use_mask=False``
    (a causal decoder, ``collate.padding_mask_needed``): no attention mask, same logits.
    ``features``: every sequence's (the batch's rows are taken), for a hybrid head."""
    try:
        ids, mask = pad_right([sequences[i] for i in batch], pad_token_id, buckets=run.buckets)
        attention_mask = mask.to(device) if use_mask else None
        rows = None if features is None else torch.from_numpy(features[batch]).to(device)
        with head_features(model, rows):
            logits = model(input_ids=ids.to(device), attention_mask=attention_mask).logits
        run.logits[batch] = logits.float().cpu().numpy()
        run.tokens += int(lengths[batch].sum())
        run.padded += ids.numel()
        return
    except Exception as exc:  # noqa: BLE001 (only out-of-memory is handled; the rest re-raised)
        if not is_out_of_memory(exc):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if len(batch) == 1:
        run.failed_rows += 1
        log.error("row %d (%d tokens) does not fit in memory alone", batch[0], lengths[batch[0]])
        return
    run.oom_splits += 1
    log.warning("out of memory on a batch of %d rows: split in two and retried", len(batch))
    half = len(batch) // 2
    # longest first: the first half holds the longest rows
    args = (pad_token_id, device, run, lengths, use_mask, features)
    _forward(model, sequences, batch[:half], *args)
    _forward(model, sequences, batch[half:], *args)


def measure_throughput(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    max_tokens: int | None,
    n_batches: int = 4,
    device: str | torch.device | None = None,
    flops=None,
    features: np.ndarray | None = None,
) -> dict[str, float]:
    """Padded tokens/s on the first (longest) ``n_batches`` batches of ``sequences``, and
    FLOP/s when ``flops(length)`` (a sequence's forward FLOPs, ``planner.Architecture.flops``)
    is given. ``features``: the sequences' features for a hybrid head (``predict_logits``).

    With 2+ batches the first one is a warm-up (CUDA kernels, allocator) and not timed.
    """
    kw = dict(pad_token_id=pad_token_id, batch_size=batch_size, max_tokens=max_tokens)
    kw.update(device=device, progress=False, features=features)
    warm = 1 if n_batches >= 2 else 0
    if warm:
        predict_logits(model, sequences, max_batches=1, **kw)
    # the warm-up batch is timed again: its rows are the longest, so this stays conservative
    timed = max(n_batches - warm, 1)
    run = predict_logits(model, sequences, max_batches=timed, **kw)
    out = {
        "padded_tokens_per_s": run.padded_per_s,
        "tokens_per_s": run.tokens_per_s,
        "batches": run.batches,
        "seconds": run.seconds,
    }
    if flops is not None and len(sequences):
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        buckets = batch_buckets(model)
        budget = max_tokens
        if budget is None:
            budget = batch_size * bucket_length(int(lengths.max()), buckets)
        batches = make_batches(lengths, batch_size, budget, buckets)[:timed]
        # work at the rows' own longest length: bucket padding is part of the measured rate,
        # as the guard counts work (predict.plan_work) without buckets
        work = sum(len(b) * float(flops(int(lengths[b].max()))) for b in batches)
        out["flops_per_s"] = work / run.seconds if run.seconds > 0 else 0.0
    return out


# ---------------------------------------------------------------------------------------------
# Sharding over devices
# ---------------------------------------------------------------------------------------------

WorkItem = tuple[int, bool]  # (row, swapped)


def shard_work(
    lengths: Mapping[bool, Sequence[int]], n_devices: int, tta: bool
) -> list[list[WorkItem]]:
    """The (row, swapped) items each of ``n_devices`` devices predicts; every item once.

    ``lengths[False]`` / ``lengths[True]`` are the token lengths of the original / swapped
    encodings. With ``tta`` on an even number of devices, devices ``0 .. n/2-1`` predict the
    original orientation and the others the swapped one (2 devices: the Kaggle pattern). Within
    a group (or over all items otherwise) items are dealt longest first, round robin.
    """
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    orientations = (ORIGINAL, SWAPPED) if tta else (ORIGINAL,)

    def deal(items: list[WorkItem], n: int) -> list[list[WorkItem]]:
        items = sorted(items, key=lambda it: (-int(lengths[it[1]][it[0]]), it[1], it[0]))
        shards: list[list[WorkItem]] = [[] for _ in range(n)]
        for k, it in enumerate(items):
            shards[k % n].append(it)
        return shards

    n_rows = len(lengths[ORIGINAL])
    if tta and n_devices % 2 == 0:
        half = n_devices // 2
        return [
            shard for o in orientations for shard in deal([(r, o) for r in range(n_rows)], half)
        ]
    return deal([(r, o) for o in orientations for r in range(n_rows)], n_devices)


# ---------------------------------------------------------------------------------------------
# Models and the multi-device executor
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """What a worker needs to load the model: a model config mapping (``name_or_path`` = the
    full model folder, or the base when ``adapter_dir`` is set), an optional peft adapter and
    the dtype (``auto``: float16 on CUDA, float32 on CPU)."""

    model_cfg: dict
    adapter_dir: str | None = None
    dtype: str = "auto"
    # "auto": ONE copy of a full model folder spread over every visible GPU (accelerate's
    # device_map), for a model too big for one device; the engine then runs in one process
    device_map: str | None = None


def resolve_dtype(dtype: str, device: str | torch.device) -> str:
    if dtype != "auto":
        return dtype
    return "float16" if torch.device(device).type == "cuda" else "float32"


def load_model(spec: ModelSpec, device: str | torch.device) -> tuple[torch.nn.Module, Any]:
    """The model in eval mode on ``device`` and its tokenizer (``factory.load_for_inference``).

    A full model folder carries its own quantization (GPTQ) in its ``config.json``, so the
    config's bitsandbytes section only applies to a base under an adapter (teacher folds).
    """
    from arena_distill.models.factory import load_for_inference, load_split

    cfg = dict(spec.model_cfg)
    cfg["dtype"] = resolve_dtype(spec.dtype, device)
    if spec.device_map is not None:
        if spec.adapter_dir is not None:
            raise ValueError("device_map needs a full model folder, not a base with an adapter")
        model, tokenizer = load_split(cfg, spec.device_map)
        return model.eval(), tokenizer
    if spec.adapter_dir is None:
        cfg["quantization"] = None
    model, tokenizer = load_for_inference(cfg, spec.adapter_dir, device=device)
    return model.eval(), tokenizer


@dataclass
class WorkerJob:
    rank: int
    device: str
    spec: ModelSpec
    sequences: list[np.ndarray]
    batch_size: int
    max_tokens: int | None
    progress: bool
    threads: int | None = None
    features: np.ndarray | None = None  # one row per sequence (a hybrid head's input)


def _run_job(job: WorkerJob, model: torch.nn.Module | None = None) -> BatchRun:
    if model is None:
        model, _ = load_model(job.spec, job.device)
    pad = model.config.pad_token_id if hasattr(model, "config") else None
    if pad is None:
        raise ValueError("the model config has no pad_token_id")
    return predict_logits(
        model,
        job.sequences,
        pad_token_id=int(pad),
        batch_size=job.batch_size,
        max_tokens=job.max_tokens,
        device=job.device,
        progress=job.progress,
        desc=f"predict[{job.device}]",
        position=job.rank,
        features=job.features,
    )


def _worker(rank: int, jobs: list[WorkerJob], result_dir: str) -> None:
    """Spawned process ``rank``: load its model copy, predict its shard, save the logits."""
    job = jobs[rank]
    if job.threads:
        torch.set_num_threads(job.threads)
    if job.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(job.device))
    run = _run_job(job)
    stats = [run.tokens, run.padded, run.seconds, run.batches, run.oom_splits, run.failed_rows]
    stats = np.array(stats, dtype=np.float64)
    np.savez(Path(result_dir) / f"shard_{rank}.npz", logits=run.logits, stats=stats)


@dataclass
class InferenceResult:
    logits: dict[bool, np.ndarray]  # orientation -> (N, 3), rows in input order
    devices: list[str]
    shards: list[dict]
    seconds: float

    @property
    def tokens(self) -> int:
        return int(sum(s["tokens"] for s in self.shards))

    @property
    def padded(self) -> int:
        return int(sum(s["padded"] for s in self.shards))


def _shard_features(
    features: Mapping[bool, np.ndarray] | None, shard: Sequence[WorkItem]
) -> np.ndarray | None:
    """The features of a shard's work items, in its order (None without features)."""
    if features is None:
        return None
    width = np.asarray(features[ORIGINAL]).shape[1]
    rows = [np.asarray(features[o][r], dtype=np.float32) for r, o in shard]
    return np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)


def run_inference(
    spec: ModelSpec,
    sequences: Mapping[bool, Sequence[Sequence[int]]],
    *,
    devices: Sequence[str],
    tta: bool,
    batch_size: int,
    max_tokens: int | None,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    features: Mapping[bool, np.ndarray] | None = None,
) -> InferenceResult:
    """Logits of every row in the needed orientations, sharded over ``devices``.

    One device: in this process (``model`` reused when given). Several: one spawned process
    per device, each loading its own copy of the model. ``sequences[False]`` / ``[True]`` are
    the original / swapped token ids per row; ``features[False]`` / ``[True]`` (a hybrid
    head's) the rows' features in the same orientation (``features.orientation_features``):
    each work item carries the features of the row as it is shown to the model.
    """
    devices = list(devices)
    n_rows = len(sequences[ORIGINAL])
    lengths = {o: [len(s) for s in seqs] for o, seqs in sequences.items()}
    shards = shard_work(lengths, len(devices), tta)
    threads = None
    if len(devices) > 1 and all(d == "cpu" for d in devices):
        threads = max(1, (os.cpu_count() or 1) // len(devices))
    jobs = [
        WorkerJob(
            rank=k,
            device=devices[k],
            spec=spec,
            sequences=[np.asarray(sequences[o][r], dtype=np.int32) for r, o in shard],
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            threads=threads,
            features=_shard_features(features, shard),
        )
        for k, shard in enumerate(shards)
    ]
    t0 = time.perf_counter()
    runs: list[BatchRun] = []
    if len(devices) == 1:
        runs.append(_run_job(jobs[0], model))
    else:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory(prefix="arena-predict-") as tmp:
            log.info("spawning %d inference processes on %s", len(devices), devices)
            mp.spawn(_worker, args=(jobs, tmp), nprocs=len(devices), join=True)
            for k in range(len(devices)):
                with np.load(Path(tmp) / f"shard_{k}.npz") as z:
                    tokens, padded, seconds, batches, splits, failed = z["stats"].tolist()
                    runs.append(
                        BatchRun(
                            z["logits"],
                            int(tokens),
                            int(padded),
                            seconds,
                            int(batches),
                            int(splits),
                            int(failed),
                        )
                    )
    seconds = time.perf_counter() - t0
    logits = {o: np.full((n_rows, 3), np.nan, dtype=np.float32) for o in sequences}
    covered = {o: np.zeros(n_rows, dtype=bool) for o in sequences}
    shard_stats = []
    for k, (shard, run) in enumerate(zip(shards, runs, strict=True)):
        for (r, o), row in zip(shard, run.logits, strict=True):
            logits[o][r] = row
            covered[o][r] = True
        shard_stats.append(
            {
                "device": devices[k],
                "items": len(shard),
                "orientations": sorted({"swapped" if o else "original" for _, o in shard}),
                "tokens": run.tokens,
                "padded": run.padded,
                "seconds": round(run.seconds, 4),
                "batches": run.batches,
                "tokens_per_s": round(run.tokens_per_s, 1),
                "oom_splits": run.oom_splits,
                "failed_rows": run.failed_rows,
            }
        )
    needed = (ORIGINAL, SWAPPED) if tta else (ORIGINAL,)
    for o in needed:
        if not covered[o].all():
            raise RuntimeError(f"{int((~covered[o]).sum())} rows got no prediction (swapped={o})")
        if not np.isfinite(logits[o]).all():
            bad = int((~np.isfinite(logits[o])).any(axis=1).sum())
            log.warning("%d rows have non-finite logits (swapped=%s): fp16 overflow?", bad, o)
    return InferenceResult({o: logits[o] for o in needed}, devices, shard_stats, seconds)
