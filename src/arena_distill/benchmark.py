"""What the benchmarks measure: the project's engines against simple references, side by side.

Shared by ``scripts/bench.py`` (CPU or one GPU: tiny models and MiniLM on a real length mix,
``make bench``) and ``scripts/bench_gpu.py`` (full-size random-init shapes, ``make bench-gpu``).
A library module: no stage imports, no files written.

Inference (:func:`compare_inference`), three ways over the same token sequences:

* ``engine``: :func:`inference.predict_logits` (length-sorted, token-budget batches), timed
  around the whole call (batching, padding, forward, logits back to the host);
* ``naive``: fixed batches of ``batch_size`` rows in input order, padded to each batch's
  longest row (``collate.pad_right``), the same forward;
* ``limit``: the engine's batches made equal-length (each row of a batch at the batch's mean
  real length, so the same number of real tokens) with no padding, the tensors already on the
  device: the forward alone, what any batching can at best reach with those batch sizes.

Training (:func:`compare_training`): ``train.fit`` (the Trainer path every training stage
takes) against a bare torch loop on the same model (rebuilt from the same seed), the same
batches (the engine's length-grouped sampler, collated before timing), the same loss,
optimiser (AdamW with the engine's options), gradient clipping, accumulation and autocast.
Throughput is real (non-pad) tokens per second between the end of the warm-up steps and the
end of the last step (setup and the final checkpoint excluded).

With ``profile``, the engine's first run trains one step more and :func:`profile_callback`
records that step with ``torch.profiler`` (outside the timed steps): where the step's time goes
(:func:`summarise_profile`: the GPU's kernels on CUDA, the host's operators on the CPU).

Every comparison runs ``repeats`` times, the methods interleaved (a load spike hits all of
them), and reports the medians, and the ratios of the fastest passes (``best_*``: on a shared
machine load only adds time); the machine's load average goes into the result.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena_distill.collate import PreferenceCollator, pad_right
from arena_distill.inference import make_batches, predict_logits

# Dense peak FLOP/s per device kind (datasheets, without sparsity), for MFU: bf16/fp16 tensor
# cores; fp32 for the CPU is not listed (MFU is not reported there).
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "l40s": 362e12,
    "l4": 121e12,
    "a10": 125e12,
    "t4": 65e12,
}


def device_peak_flops(device: str | torch.device) -> tuple[str, float | None]:
    """``(device name, dense bf16/fp16 peak FLOP/s or None)`` of ``device``."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(dev)
    key = name.lower().replace("nvidia", "").replace("-", " ")
    for kind, peak in PEAK_FLOPS.items():
        if kind in key.split() or any(w.startswith(kind) for w in key.split()):
            return name, peak
    return name, None


def machine_info(device: str | torch.device) -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was."""
    import transformers

    name, peak = device_peak_flops(device)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.gmtime()),
        "device": str(device),
        "device_name": name,
        "peak_flops": peak,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def sync(device: str | torch.device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def limit_shapes(lengths: Sequence[int], batches: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """``(rows, length)`` of the equal-length, unpadded twin of each batch: the batch's rows at
    its mean real length (rounded, at least 1), so the real tokens are the batch's."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return [(len(b), max(1, int(round(lengths[b].mean())))) for b in batches if len(b)]


@torch.inference_mode()
def run_naive(model, sequences, *, pad_token_id: int, batch_size: int, device) -> dict:
    """Fixed batches of ``batch_size`` in input order, each padded to its longest row."""
    dev = torch.device(device)
    out, tokens, padded = [], 0, 0
    sync(dev)
    t0 = time.perf_counter()
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad_right(sequences[start : start + batch_size], pad_token_id)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        out.append(logits.float().cpu().numpy())
        tokens += int(mask.sum())
        padded += ids.numel()
    sync(dev)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": tokens, "padded": padded, "logits": np.concatenate(out)}


def run_engine(model, sequences, *, pad_token_id: int, batch_size: int, max_tokens, device) -> dict:
    """The predict engine (:func:`inference.predict_logits`), timed around the whole call."""
    sync(device)
    t0 = time.perf_counter()
    run = predict_logits(
        model,
        sequences,
        pad_token_id=pad_token_id,
        batch_size=batch_size,
        max_tokens=max_tokens,
        device=device,
        progress=False,
    )
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": run.tokens, "padded": run.padded, "logits": run.logits}


@torch.inference_mode()
def run_limit(model, shapes: Sequence[tuple[int, int]], *, vocab_size: int, device) -> dict:
    """Forward passes of unpadded ``(rows, length)`` batches prepared on the device beforehand."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for n, length in shapes:
        ids = torch.randint(1, max(2, vocab_size), (n, length), generator=gen).to(dev)
        inputs.append((ids, torch.ones_like(ids)))
    sync(dev)
    t0 = time.perf_counter()
    for ids, mask in inputs:
        model(input_ids=ids, attention_mask=mask).logits.float().cpu()
    sync(dev)
    seconds = time.perf_counter() - t0
    tokens = sum(n * length for n, length in shapes)
    return {"seconds": seconds, "tokens": tokens, "padded": tokens}


def compare_inference(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    max_tokens: int | None,
    device: str | torch.device,
    repeats: int = 3,
    warmup_rows: int | None = None,
    flops: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Engine vs naive loop vs the unpadded limit on ``sequences`` (see the module doc).

    One untimed warm-up pass of each method on the first ``warmup_rows`` rows (default: two
    batches), then ``repeats`` interleaved timed passes; medians. ``flops(lengths)`` (per-row
    forward FLOPs, ``planner.Architecture.flops``) adds FLOP/s of the real tokens."""
    sequences = [list(map(int, s)) for s in sequences]
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    budget = max_tokens if max_tokens is not None else batch_size * int(lengths.max())
    batches = make_batches(lengths, batch_size, budget)
    shapes = limit_shapes(lengths, batches)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    kw = dict(pad_token_id=pad_token_id, device=device)
    methods = {
        "engine": lambda seqs: run_engine(
            model, seqs, batch_size=batch_size, max_tokens=max_tokens, **kw
        ),
        "naive": lambda seqs: run_naive(model, seqs, batch_size=batch_size, **kw),
        "limit": lambda seqs: run_limit(
            model, shapes if seqs is sequences else shapes[:2], vocab_size=vocab, device=device
        ),
    }
    was_training = model.training
    model.eval()
    warm = sequences[: warmup_rows or 2 * batch_size]
    for fn in methods.values():
        fn(warm)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(max(1, repeats)):
        for name, fn in methods.items():
            runs[name].append(fn(sequences))
    model.train(was_training)
    engine, naive = runs["engine"][-1], runs["naive"][-1]
    tps = {m: median([r["tokens"] / r["seconds"] for r in rs]) for m, rs in runs.items()}
    # the fastest pass of each: on a shared machine, load only ever adds time
    best = {m: max(r["tokens"] / r["seconds"] for r in rs) for m, rs in runs.items()}
    result: dict[str, Any] = {
        "rows": len(sequences),
        "tokens": int(lengths.sum()),
        "mean_length": round(float(lengths.mean()), 1),
        "max_length": int(lengths.max()),
        "batch_size": batch_size,
        "max_tokens": budget,
        "engine_batches": len(batches),
        "repeats": max(1, repeats),
        "tokens_per_s": {m: round(v, 1) for m, v in tps.items()},
        "seconds": {m: [round(r["seconds"], 4) for r in rs] for m, rs in runs.items()},
        "engine_vs_naive": round(ratio(tps["engine"], tps["naive"]), 4),
        "engine_vs_limit": round(ratio(tps["engine"], tps["limit"]), 4),
        # the most an engine that computes the same forwards can gain over the naive loop on
        # these rows: below 2 when the naive loop pads little (long rows cut to max_length)
        "limit_vs_naive": round(ratio(tps["limit"], tps["naive"]), 4),
        "best_tokens_per_s": {m: round(v, 1) for m, v in best.items()},
        "best_engine_vs_naive": round(ratio(best["engine"], best["naive"]), 4),
        "best_engine_vs_limit": round(ratio(best["engine"], best["limit"]), 4),
        "padding_share": {
            "engine": round(1 - engine["tokens"] / engine["padded"], 4),
            "naive": round(1 - naive["tokens"] / naive["padded"], 4),
            "limit": 0.0,
        },
        # the engine computes what the naive loop computes (up to batch-shape float noise)
        "engine_naive_max_abs_diff": float(np.nanmax(np.abs(engine["logits"] - naive["logits"]))),
    }
    if flops is not None:
        real = float(np.sum(flops(lengths)))
        result["flops_per_s"] = {
            m: median([real / r["seconds"] for r in rs]) for m, rs in runs.items() if m != "limit"
        }
        limit_flops = float(sum(n * float(flops(np.array(length))) for n, length in shapes))
        result["flops_per_s"]["limit"] = median([limit_flops / r["seconds"] for r in runs["limit"]])
    return result


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def step_timer_callback(device: str | torch.device, *, skip_saves: bool = True):
    """A ``TrainerCallback`` that records ``perf_counter()`` at the end of every optimiser step
    (after a device sync) and, with ``skip_saves``, cancels checkpoints (the benchmark times
    steps, not checkpoint writing)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            self.times = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter())
            if skip_saves:
                control.should_save = False
            return control

    return StepTimer()


# Kinds of work in a profiled step, by kernel name on CUDA or operator name on the CPU; the
# first pattern that matches wins (a heuristic: the raw names are in the summary's ``top``).
PROFILE_KINDS: tuple[tuple[str, re.Pattern], ...] = (
    ("autograd (host)", re.compile(r"Backward\d*$|^autograd::")),  # the engine's own CPU time
    (
        "matmul",
        re.compile(r"gemm|cutlass|xmma|nvjet|cublas|aten::(mm|addmm|bmm|matmul|linear)\b", re.I),
    ),
    ("attention", re.compile(r"flash|fmha|attention|flex|triton_tem|softmax|_scaled_dot", re.I)),
    ("optimizer", re.compile(r"multi_tensor|adam|foreach", re.I)),
    ("dropout", re.compile(r"dropout|bernoulli", re.I)),
    ("norm", re.compile(r"norm|rsqrt", re.I)),  # also a compiled RMSNorm (triton_..._rsqrt_0)
    ("copy/cast", re.compile(r"memcpy|memset|copy|cast|aten::(to|_to_copy|clone)\b", re.I)),
)


def profile_kind(name: str) -> str:
    for kind, pattern in PROFILE_KINDS:
        if pattern.search(name):
            return kind
    return "elementwise/other"


def summarise_profile(events, step_s: float, device: str | torch.device, top: int = 25) -> dict:
    """Where a profiled step's time went. ``events``: ``profiler.key_averages()``. On CUDA the
    GPU's own work (kernels, copies, memsets: the events whose device is CUDA, by their device
    time), so ``busy_share`` = kernel time / step wall time and the rest is the GPU waiting on
    the host (launches, Python, syncs); on the CPU the operators' self CPU time. ``by_kind``:
    seconds per :data:`PROFILE_KINDS` kind; ``top``: the ``top`` largest names."""
    from torch.autograd import DeviceType

    cuda = torch.device(device).type == "cuda"
    rows = []
    for evt in events:
        if cuda:
            if evt.device_type != DeviceType.CUDA:
                continue
            us = evt.self_device_time_total
        else:
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append((evt.key, us / 1e6, int(evt.count)))
    busy = sum(r[1] for r in rows)
    by_kind: dict[str, float] = {}
    for name, sec, _ in rows:
        kind = profile_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + sec
    rows.sort(key=lambda r: -r[1])
    return {
        "what": "GPU kernels (device time)" if cuda else "CPU operators (self time)",
        "step_s": round(step_s, 4),
        "busy_s": round(busy, 4),
        "busy_share": round(busy / step_s, 4) if step_s > 0 else None,
        "by_kind": {
            k: {"s": round(v, 4), "share_of_busy": round(v / busy, 4) if busy else None}
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"name": n[:160], "s": round(sec, 5), "calls": c, "kind": profile_kind(n)}
            for n, sec, c in rows[:top]
        ],
    }


def profile_callback(device: str | torch.device, step: int, top: int = 25):
    """A ``TrainerCallback`` that runs ``torch.profiler`` over optimiser step ``step`` (1-based:
    from that step's begin to its end, device-synced) and keeps :func:`summarise_profile` of it
    in ``.summary`` (``{"error": ...}`` when the profiler fails: a benchmark goes on)."""
    from transformers import TrainerCallback

    cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.summary: dict | None = None
            self._prof = None
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 != step or self._prof is not None:
                return
            try:
                sync(device)
                self._prof = torch.profiler.profile(activities=activities)
                self._prof.__enter__()
                self._t0 = time.perf_counter()
            except Exception as exc:  # noqa: BLE001 (recorded; the timing goes on)
                self._prof, self.summary = None, {"error": f"{type(exc).__name__}: {exc}"}

        def on_step_end(self, args, state, control, **kwargs):
            if self._prof is None or self.summary is not None:
                return
            try:
                sync(device)
                step_s = time.perf_counter() - self._t0
                self._prof.__exit__(None, None, None)
                self.summary = summarise_profile(self._prof.key_averages(), step_s, device, top)
            except Exception as exc:  # noqa: BLE001
                self.summary = {"error": f"{type(exc).__name__}: {exc}"}
            self._prof = None

    return StepProfiler()


def engine_batches(examples: Sequence[dict], args, *, steps: int) -> list[list[list[int]]]:
    """The example indices of each micro-batch of each of the first ``steps`` optimiser steps,
    as the engine's Trainer draws them (``train.EpochSeededLengthGroupedSampler`` when grouping
    by length, else a seeded random permutation is not reproduced: grouping is required)."""
    from arena_distill.train import EpochSeededLengthGroupedSampler

    if args.train_sampling_strategy != "group_by_length":
        raise ValueError("the bare-loop comparison needs group_by_length (a reproducible order)")
    micro = args.per_device_train_batch_size
    accum = args.gradient_accumulation_steps
    seed = args.data_seed if args.data_seed is not None else args.seed
    sampler = EpochSeededLengthGroupedSampler(
        micro * accum, [len(e["input_ids"]) for e in examples], seed
    )
    out: list[list[list[int]]] = []
    epoch = 0
    while len(out) < steps:
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        micros = [order[i : i + micro] for i in range(0, len(order), micro)]
        for i in range(0, len(micros), accum):
            out.append(micros[i : i + accum])
            if len(out) == steps:
                break
        epoch += 1
    return out


def bare_loop(
    model: torch.nn.Module,
    batches: Sequence[Sequence[dict[str, torch.Tensor]]],
    args,
    *,
    device: str | torch.device,
    loss_fn=None,
) -> list[float]:
    """A plain torch training loop over pre-collated ``batches`` (one list of micro-batches per
    optimiser step) with the engine's maths: loss / accumulation, backward, gradient clipping
    at ``args.max_grad_norm``, AdamW (``args`` lr, betas, eps, weight decay; fused when the
    engine's optimiser is), zero_grad. Returns ``perf_counter()`` at the start and after every
    step (device-synced)."""
    from arena_distill.losses import cross_entropy

    loss_fn = loss_fn or cross_entropy
    dev = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = "fused" in str(getattr(args.optim, "value", args.optim))  # CPU has one too
    optimizer = torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        fused=fused or None,
    )
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(args.bf16))
    model.train()
    sync(dev)
    times = [time.perf_counter()]
    for step in batches:
        for micro in step:
            with autocast:
                logits = model(
                    input_ids=micro["input_ids"], attention_mask=micro["attention_mask"]
                ).logits
            loss = loss_fn(logits, micro) / len(step)
            loss.backward()
        if args.max_grad_norm and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        sync(dev)
        times.append(time.perf_counter())
    return times


def steady_rate(times: Sequence[float], step_tokens: Sequence[int], warmup: int) -> float:
    """Tokens per second from the end of step ``warmup`` to the end of the last step
    (``times[0]`` is the start, ``times[k]`` the end of step k)."""
    warmup = min(warmup, len(step_tokens) - 1)
    tokens = sum(step_tokens[warmup:])
    return ratio(tokens, times[len(step_tokens)] - times[warmup])


def compare_training(
    build: Callable[[], tuple[torch.nn.Module, int]],
    examples: Sequence[dict],
    settings,
    work_dir: str | Path,
    *,
    device: str | torch.device,
    warmup_steps: int = 2,
    repeats: int = 2,
    run_bare: bool = True,
    gradient_checkpointing: bool | str = False,
    profile: bool = False,
) -> dict[str, Any]:
    """``train.fit`` vs :func:`bare_loop`, ``settings.max_steps`` optimiser steps each.

    ``build()`` returns a fresh model (the same init every call: seed inside) and the pad id.
    The engine runs without evaluation; its checkpoints are cancelled (timing callback).
    ``gradient_checkpointing``: the model setting. ``auto`` there or in
    ``settings.per_device_batch_size`` is decided once, as ``fit`` decides it
    (``train.plan_memory`` on the first model built: ``memory_plan`` in the result), and the
    same choice is applied to every model of the comparison, the bare loop's too.
    ``profile``: the first engine run trains one step more, profiled and not timed
    (``profile`` in the result: :func:`summarise_profile`)."""
    import dataclasses
    from types import SimpleNamespace

    from arena_distill.train import fit, plan_memory, training_arguments

    steps = int(settings.max_steps)
    if steps <= warmup_steps:
        raise ValueError(f"max_steps ({steps}) must exceed warmup_steps ({warmup_steps})")
    work_dir = Path(work_dir)
    auto = gradient_checkpointing == "auto" or settings.per_device_batch_size == "auto"
    first = build()
    memory_plan = None

    def apply_plan(model):
        """The memory plan's checkpointing switched on in ``model`` (the same decision on the
        same model and rows every time); returns the settings with the chosen micro-batch."""
        return plan_memory(model, examples, settings, gradient_checkpointing)

    resolved = settings
    if auto:
        resolved, memory_plan = apply_plan(first[0])
    engine_gc = False if auto else gradient_checkpointing  # applied above, or by build()
    args = training_arguments(resolved, work_dir, has_eval=False)
    plan = engine_batches(examples, args, steps=steps + int(profile))
    engine_runs: list[dict] = []
    bare_runs: list[dict] = []
    profiled: dict | None = None
    for rep in range(max(1, repeats)):
        model, pad = first if rep == 0 else build()
        first = None
        if auto and rep > 0:
            apply_plan(model)
        collator = PreferenceCollator(pad_token_id=pad)
        step_batches = [[collator([examples[i] for i in micro]) for micro in st] for st in plan]
        all_tokens = [int(sum(int(m["attention_mask"].sum()) for m in st)) for st in step_batches]
        step_batches, step_tokens = step_batches[:steps], all_tokens[:steps]
        padded = sum(int(m["attention_mask"].numel()) for st in step_batches for m in st)
        timer = step_timer_callback(device)
        callbacks = [timer]
        run_settings, trained = resolved, step_tokens
        if profile and rep == 0:  # one more step, profiled, after the timed ones
            profiler = profile_callback(device, steps + 1)
            callbacks.append(profiler)
            run_settings, trained = dataclasses.replace(resolved, max_steps=steps + 1), all_tokens
        result = fit(
            model,
            SimpleNamespace(pad_token_id=pad),
            list(examples),
            None,
            run_settings,
            work_dir / f"engine_{rep}",
            callbacks=callbacks,
            gradient_checkpointing=engine_gc,
        )
        if profile and rep == 0:
            profiled = profiler.summary or {"error": "the profiled step did not run"}
        engine_runs.append(
            {
                "tokens_per_s": steady_rate(timer.times[: steps + 1], step_tokens, warmup_steps),
                "steps": result.trainer.state.global_step,
                # the engine trained on exactly these batches (its own token count agrees)
                "same_batches": result.trained_tokens == sum(trained),
                "padding_share": result.padding_share,
            }
        )
        del model, result
        if not run_bare:
            continue
        model, pad = build()
        if auto:
            apply_plan(model)  # the engine's checkpointing choice
        dev = torch.device(device)
        on_device = [[{k: v.to(dev) for k, v in m.items()} for m in st] for st in step_batches]
        times = bare_loop(model, on_device, args, device=dev)
        bare_runs.append(
            {"tokens_per_s": steady_rate(times, step_tokens, warmup_steps), "steps": len(plan)}
        )
        del model, on_device
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    engine_tps = median([r["tokens_per_s"] for r in engine_runs])
    out: dict[str, Any] = {
        "steps": steps,
        "warmup_steps": warmup_steps,
        "micro_batch": args.per_device_train_batch_size,
        "accumulation": args.gradient_accumulation_steps,
        "examples": len(examples),
        "tokens_per_step": round(sum(step_tokens) / len(step_tokens), 1),
        "padding_share": round(1 - sum(step_tokens) / padded, 4),
        "same_batches": all(r["same_batches"] for r in engine_runs),
        "repeats": len(engine_runs),
        "tokens_per_s": {"engine": round(engine_tps, 1)},
        "runs": {"engine": [round(r["tokens_per_s"], 1) for r in engine_runs]},
    }
    if memory_plan is not None:
        out["memory_plan"] = memory_plan.to_dict()
    if profile:
        out["profile"] = profiled
    if bare_runs:
        bare_tps = median([r["tokens_per_s"] for r in bare_runs])
        out["tokens_per_s"]["bare"] = round(bare_tps, 1)
        out["runs"]["bare"] = [round(r["tokens_per_s"], 1) for r in bare_runs]
        out["engine_vs_bare"] = round(ratio(engine_tps, bare_tps), 4)
        best = [max(r["tokens_per_s"] for r in rs) for rs in (engine_runs, bare_runs)]
        out["best_engine_vs_bare"] = round(ratio(*best), 4)
    return out
