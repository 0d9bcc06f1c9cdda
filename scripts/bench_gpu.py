"""`make bench-gpu`: the recipe's full-size shapes through the project's own engines, on one GPU.

    python scripts/bench_gpu.py                          # the default grid, < 6 min on one H100/H200
    python scripts/bench_gpu.py --dry-run                # tiny shapes on the CPU, the same code path
    python scripts/bench_gpu.py --points gemma2_9b/flex/gc/b8,llama3_70b/sdpa/gc/b4
    python scripts/bench_gpu.py --extra model.torch_compile=true     # one more override everywhere
    python scripts/bench_gpu.py --grid my_grid.json      # a JSON list of points (fields below)
    python scripts/bench_gpu.py --preset levers          # Gemma-2-9B training with each speed flag
    python scripts/bench_gpu.py --table bench/gpu.json [levers.json]   # the README's tables

No download: each model is a random-init classifier built by ``models.factory.build_model``
(``architecture=``) from the facts shipped in ``planner.ARCHITECTURES``: Gemma-2-9B whole,
Llama-3-70B and Qwen2-72B cut to ``layers`` decoder layers (their per-layer figures scaled to
the whole depth: ``projected_tokens_per_s``). Per grid point (model config, attention kernel,
gradient checkpointing, micro-batch, dtype, plus any Hydra overrides):

* training through ``train.fit`` (``stages.teacher`` settings, LoRA of the model config, no
  quantization unless the point is ``quantized``: then the random weights are written and
  loaded back in NF4, the teachers' QLoRA), ``micro_batch`` rows of ``train_length``
  tokens per step: tokens/s after the warm-up steps, MFU (model FLOPs: ``planner.Architecture``
  forward FLOPs × 2 with LoRA (no weight gradients), × 3 for a full fine-tune; recomputation of
  checkpointing not counted) against the device's dense bf16 peak, peak memory;
  with ``--profile``, one more step under ``torch.profiler`` (not timed): the GPU's busy share
  of the step and its kernel time by kind (matmul, attention, copy/cast, ...) and the top
  kernels (``benchmark.summarise_profile``);
* prediction through ``inference.predict_logits`` on a length mix (``--lengths`` JSON, else a
  fixed log-normal mix: median 500 tokens, capped at 2000), beside the naive loop and the
  unpadded limit (``benchmark.compare_inference``): tokens/s, MFU, padding, peak memory.

Every point runs in its own subprocess with a timeout, so an out-of-memory or a crash is
recorded for that point and the grid goes on; a point that would start after ``--budget-s``
is skipped (listed as such); a point's own ``timeout_s`` replaces ``--point-timeout-s``. Results: ``<out-dir>/gpu.json`` (``--out``), one log per point in
``<out-dir>/gpu_logs/`` (``<stem>_logs/`` beside any other ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]

# (model config, attention, checkpointing, micro-batch, train?, predict?, layers)
# In order of what the answers decide (a point past the time budget is skipped, not lost):
_GRID = [
    # the shipped settings (gemma2_9b.yaml, first_place): gradient_checkpointing and the
    # micro-batch auto (models/memory.py) over steps of 8 rows; the MFU goal is measured here
    ("gemma2_9b", "flex_attention", "auto", 8, True, False, None),
    ("gemma2_9b", "eager", True, 8, True, True, None),
    ("gemma2_9b", "flex_attention", True, 8, True, True, None),
    ("llama3_70b", "sdpa", True, 4, True, True, 4),
    ("gemma2_9b", "flex_attention", False, 4, True, False, None),
    ("qwen2_72b", "sdpa", True, 4, True, False, 4),
]
SHORT = {"flex_attention": "flex", "flash_attention_2": "fa2"}
# the widths of a dry run's models (also scripts/bench_flex_shapes.py's tiny Gemma-2)
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
}
TINY_GEMMA2 = {"query_pre_attn_scalar": 16, "sliding_window": 64}


def point(
    model: str,
    attn: str,
    gc,
    micro_batch: int,
    *,
    train: bool = True,
    predict: bool = True,
    layers: int | None = None,
    dtype: str = "bfloat16",
    overrides: list[str] | None = None,
    name: str | None = None,
    quantized: bool = False,
) -> dict:
    """A grid point. ``gc`` is passed as is (``model.gradient_checkpointing``: true, false or
    any value the model config accepts). ``quantized``: the model config's ``quantization``
    kept (NF4 for the teachers: random weights written and loaded back quantized, the QLoRA
    path), else none."""
    gc_name = {True: "gc", False: "nogc"}.get(gc, f"gc-{gc}")
    auto_name = f"{model}/{SHORT.get(attn, attn)}/{gc_name}/b{micro_batch}"
    return {
        "name": name or auto_name + ("/nf4" if quantized else ""),
        "quantized": quantized,
        "model": model,
        "layers": layers,
        "attn_implementation": attn,
        "gradient_checkpointing": gc,
        "micro_batch": micro_batch,
        "dtype": dtype,
        "train": train,
        "predict": predict,
        "overrides": list(overrides or []),
    }


def default_grid() -> list[dict]:
    grid = [point(m, a, g, b, train=t, predict=p, layers=n) for m, a, g, b, t, p, n in _GRID]
    shipped = grid[0]
    shipped["overrides"] = ["stages.teacher.per_device_batch_size=auto"]
    shipped["name"] = "gemma2_9b/flex/gc-auto/b-auto"
    # flex_attention prediction without length buckets: does the kernel go dynamic after a few
    # shapes (as inductor's CPU flex did for a tiny Gemma-2: 3 compiles over 16 random batch /
    # length shapes, then none) or recompile per shape (as the H200 probe saw with padding
    # masks)? Buckets cost padding
    # (11.2% vs 3.6% on the real mix), so this point decides whether gemma2_9b needs them.
    nobuckets = point(
        "gemma2_9b",
        "flex_attention",
        True,
        8,
        train=False,
        overrides=["model.length_buckets=null"],
        name="gemma2_9b/flex/b8/no-buckets",
    )
    grid.insert(3, nobuckets)  # after the bucketed flex prediction it is compared with
    # the teachers as the recipe trains them: QLoRA (NF4, double quant, bf16 compute), training
    # only (the recipe's teachers predict only their OOF rows)
    grid.append(point("llama3_70b", "sdpa", True, 4, predict=False, layers=4, quantized=True))
    return grid


# The levers toward the MFU goal, one at a time and together, on the Gemma-2-9B student's
# training at the largest micro-batch the H200 probe fitted without checkpointing (training only)
# (the compiling ones last: they cost the most time before their first step)
_LEVERS = [
    ("", []),
    ("liger", ["model.liger_kernel=true"]),
    ("lora-dropout0", ["model.lora.dropout=0"]),  # peft then skips the 7 dropout copies a layer
    (
        "all",
        ["model.lora.dropout=0", "model.liger_kernel=true", "model.torch_compile=true"],
    ),
    ("compile", ["model.torch_compile=true"]),
]


def levers_grid() -> list[dict]:
    base = point("gemma2_9b", "flex_attention", False, 4, predict=False)
    return [
        {**base, "name": base["name"] + (f"+{tag}" if tag else ""), "overrides": list(ov)}
        for tag, ov in _LEVERS
    ]


PRESETS = {"default": default_grid, "levers": levers_grid}


# ---------------------------------------------------------------------------------------------
# One point (the child process)
# ---------------------------------------------------------------------------------------------


def architecture(model_cfg, layers: int | None, dry_run: bool):
    """The Hugging Face config of ``model_cfg``'s checkpoint from the shipped facts, cut to
    ``layers``; tiny widths in a dry run. Returns (config, full depth)."""
    from transformers import AutoConfig

    from arena_distill.planner import ARCHITECTURES

    facts = dict(ARCHITECTURES[str(model_cfg.name_or_path)])
    full_layers = int(facts["num_hidden_layers"])
    model_type = facts.pop("model_type")
    if dry_run:
        facts.update(TINY, num_hidden_layers=min(2, layers or 2))
        if model_type == "gemma2":
            facts.update(TINY_GEMMA2)
    elif layers:
        facts["num_hidden_layers"] = int(layers)
    facts.update(pad_token_id=0, max_position_embeddings=8192 if not dry_run else 2048)
    return AutoConfig.for_model(model_type, **facts), full_layers


def length_mix(path: str | None, rows: int, cap: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if path:
        lengths = np.asarray(json.loads(Path(path).read_text()), dtype=np.int64)
        lengths = rng.choice(lengths, size=min(rows, len(lengths)), replace=False)
    else:  # a fixed stand-in for a real mix: median 500 tokens, a tail to the cap
        lengths = rng.lognormal(mean=np.log(500), sigma=0.8, size=rows).astype(np.int64)
    return np.clip(lengths, 16, cap)


def point_sizes(p: dict, opts: dict) -> tuple[int, int]:
    """(rows per optimiser step, optimiser steps) of a point's training (tiny in a dry run)."""
    if opts["dry_run"]:
        return min(int(p["micro_batch"]), 2), 3
    return int(p["micro_batch"]), int(opts["train_steps"])


def point_overrides(p: dict, opts: dict) -> tuple[str, list[str]]:
    """The attention kernel and the Hydra overrides a point runs with (a dry run: eager for the
    GPU kernels, float32 unless quantized, tiny steps)."""
    dry = bool(opts["dry_run"])
    attn = p["attn_implementation"]
    if dry and attn in ("flex_attention", "flash_attention_2"):
        attn = "eager"  # GPU kernels; the dry run checks the code path, not the kernel
    micro, steps = point_sizes(p, opts)
    return attn, [
        f"model={p['model']}",
        *([] if p.get("quantized") else ["model.quantization=null"]),
        f"model.attn_implementation={attn}",
        f"model.gradient_checkpointing={str(p['gradient_checkpointing']).lower()}",
        f"model.dtype={'float32' if dry and not p.get('quantized') else p['dtype']}",
        f"stages.teacher.max_steps={steps}",
        f"stages.teacher.per_device_batch_size={micro}",
        f"stages.teacher.global_batch_size={micro}",
        "stages.teacher.warmup_steps=0",
        f"stages.teacher.logging_steps={steps + 1}",
        "stages.teacher.keep_best=false",
        "stages.teacher.swap=none",
        "stages.teacher.group_by_length=true",
        *p.get("overrides", []),
        *opts.get("extra", []),
    ]


def run_point(p: dict, opts: dict, save=None) -> dict:
    """Measure one grid point in this process; returns its result (errors recorded per part).
    ``save(result)`` after each part: a point killed by its timeout in prediction keeps its
    training figures."""
    save = save or (lambda _result: None)
    import numpy as np
    import torch

    from arena_distill import settings as config
    from arena_distill.benchmark import (
        compare_inference,
        compare_training,
        device_peak_flops,
        machine_info,
    )
    from arena_distill.config import compose
    from arena_distill.inference import is_out_of_memory
    from arena_distill.models.factory import build_model
    from arena_distill.planner import Architecture

    dry = bool(opts["dry_run"])
    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    attn, overrides = point_overrides(p, opts)
    micro, steps = point_sizes(p, opts)
    length = 64 if dry else int(opts["train_length"])
    warmup = 1 if dry else int(opts["train_warmup"])
    result: dict = {"point": p, "device": device, "overrides": overrides}
    cfg = compose(overrides)
    arch_cfg, full_layers = architecture(cfg.model, p.get("layers"), dry)
    arch = Architecture.from_config(arch_cfg.to_dict())
    scale = arch.num_layers / full_layers  # measured depth / whole model
    _, peak = device_peak_flops(device)
    result.update(
        layers=arch.num_layers,
        full_layers=full_layers,
        machine=machine_info(device),
        attn_implementation=attn,
        dtype=str(cfg.model.dtype),
    )
    cuda = device == "cuda"

    def peak_gb() -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None

    def graphs() -> int:
        """torch.compile graphs made so far in this process (flex_attention, torch_compile)."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def reset() -> None:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    if p.get("train", True):
        reset()
        t0, g0 = time.perf_counter(), graphs()
        try:
            settings = config.stage(cfg, "teacher")
            rng = np.random.default_rng(0)
            n = micro * steps
            examples = [
                {
                    "input_ids": rng.integers(1, arch_cfg.vocab_size, length).tolist(),
                    "labels": int(rng.integers(0, 3)),
                }
                for _ in range(n)
            ]

            def build():
                torch.manual_seed(0)
                model, _ = build_model(cfg.model, device=device, train=True, architecture=arch_cfg)
                return model, 0

            with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
                tr = compare_training(
                    build,
                    examples,
                    settings,
                    tmp,
                    device=device,
                    warmup_steps=warmup,
                    repeats=1,
                    run_bare=bool(opts["bare"]),
                    gradient_checkpointing=cfg.model.gradient_checkpointing,
                    profile=bool(opts.get("profile")),
                )
            tps = tr["tokens_per_s"]["engine"]
            lora = cfg.model.get("lora") is not None
            factor = 2.0 if lora else 3.0  # LoRA: no weight gradients
            flops_per_token = float(arch.flops(length)) / length
            tr.update(
                length=length,
                model_flops_factor=factor,
                flops_per_s=factor * flops_per_token * tps,
                mfu=round(factor * flops_per_token * tps / peak, 4) if peak else None,
                projected_tokens_per_s=round(tps * scale, 1),
                peak_gb=peak_gb(),
                wall_s=round(time.perf_counter() - t0, 1),
                compiled_graphs=graphs() - g0,
            )
            result["training"] = tr
        except Exception as exc:  # noqa: BLE001 (recorded; the next part still runs)
            result["training"] = {
                "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                "out_of_memory": is_out_of_memory(exc),
                "peak_gb": peak_gb(),
            }
            traceback.print_exc()
        save(result)
    if p.get("predict", True):
        reset()
        t0, g0 = time.perf_counter(), graphs()
        try:
            torch.manual_seed(0)
            model, _ = build_model(cfg.model, device=device, train=False, architecture=arch_cfg)
            predict = config.stage(cfg, "predict")
            cap = 128 if dry else int(predict.max_length or 2000)
            rows = 16 if dry else int(opts["predict_rows"])
            lengths = length_mix(opts.get("lengths"), rows, cap)
            rng = np.random.default_rng(1)
            sequences = [rng.integers(1, arch_cfg.vocab_size, int(k)).tolist() for k in lengths]
            inf = compare_inference(
                model,
                sequences,
                pad_token_id=0,
                batch_size=int(opts["predict_batch"] or predict.batch_size),
                max_tokens=opts["predict_max_tokens"] or predict.max_tokens_per_batch,
                device=device,
                repeats=1,
                flops=arch.flops,
            )
            inf["mfu"] = (
                {m: round(v / peak, 4) for m, v in inf["flops_per_s"].items()} if peak else None
            )
            inf["projected_tokens_per_s"] = {
                m: round(v * scale, 1) for m, v in inf["tokens_per_s"].items()
            }
            inf.update(
                peak_gb=peak_gb(),
                wall_s=round(time.perf_counter() - t0, 1),
                compiled_graphs=graphs() - g0,  # engine, naive and limit shapes together
            )
            result["inference"] = inf
            del model
        except Exception as exc:  # noqa: BLE001
            result["inference"] = {
                "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                "out_of_memory": is_out_of_memory(exc),
                "peak_gb": peak_gb(),
            }
            traceback.print_exc()
    return result


# ---------------------------------------------------------------------------------------------
# The grid (the parent process)
# ---------------------------------------------------------------------------------------------


def run_grid(points: list[dict], opts: dict, out: Path) -> dict:
    log_dir = out.parent / f"{out.stem}_logs"  # gpu.json: gpu_logs/
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    for i, p in enumerate(points):
        left = opts["budget_s"] - (time.perf_counter() - started)
        if left < opts["min_point_s"]:
            results.append({"point": p, "skipped": f"time budget ({opts['budget_s']} s) spent"})
            continue
        timeout = min(float(p.get("timeout_s") or opts["point_timeout_s"]), left)
        print(
            f"[bench-gpu] {i + 1}/{len(points)} {p['name']} (timeout {timeout:.0f} s)", flush=True
        )
        with tempfile.TemporaryDirectory(prefix="bench-gpu-point-") as tmp:
            res_file = Path(tmp) / "result.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                json.dumps({"point": p, "opts": opts}),
                "--result",
                str(res_file),
            ]
            log_file = log_dir / f"{i:02d}_{p['name'].replace('/', '_')}.log"
            t0 = time.perf_counter()
            with open(log_file, "w") as log:
                try:
                    done = subprocess.run(
                        cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO
                    )
                    rc: int | str = done.returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            res = json.loads(res_file.read_text()) if res_file.is_file() else {"point": p}
        res.update(returncode=rc, seconds=round(time.perf_counter() - t0, 1), log=str(log_file))
        if rc != 0:
            tail = log_file.read_text()[-2000:]
            res["error"] = f"child exited with {rc}: {tail}"
        results.append(res)
        print(summary_line(res), flush=True)
    return {"wall_s": round(time.perf_counter() - started, 1), "points": results}


def summary_line(res: dict) -> str:
    name = res["point"]["name"]
    if "skipped" in res:
        return f"  {name}: skipped ({res['skipped']})"
    parts = []
    for part in ("training", "inference"):
        r = res.get(part)
        if not r:
            continue
        if "error" in r:
            parts.append(f"{part}: {'OOM' if r.get('out_of_memory') else r['error'][:80]}")
            continue
        tps = r["tokens_per_s"]["engine"]
        mfu = r["mfu"]["engine"] if part == "inference" and r.get("mfu") else r.get("mfu")
        mfu_s = f", MFU {mfu:.1%}" if isinstance(mfu, float) else ""
        mem = f", {r['peak_gb']} GB" if r.get("peak_gb") is not None else ""
        plan = r.get("memory_plan")
        if plan:
            gc = "checkpointing" if plan["checkpointing"] else "no checkpointing"
            mem += f", micro-batch {plan['micro_batch']} {gc}"
        prof = r.get("profile") or {}
        if prof.get("busy_share") is not None:
            kind, top = next(iter(prof["by_kind"].items()), ("-", {"share_of_busy": 0}))
            mem += f", busy {prof['busy_share']:.0%} ({kind} {top['share_of_busy']:.0%})"
        parts.append(f"{part} {tps:,.0f} tok/s{mfu_s}{mem}")
    if res.get("error") and not parts:
        parts.append(res["error"].splitlines()[0][:120])
    return f"  {name}: " + "; ".join(parts) + f" ({res.get('seconds')} s)"


def _num(value, fmt: str = ",.0f") -> str:
    return "" if value is None else format(value, fmt)


def _failure(part: dict) -> str:
    """Why a training or inference part has no figures (a table cell)."""
    return "out of memory" if part.get("out_of_memory") else part["error"][:80]


def markdown_tables(docs: list[dict]) -> str:
    """The README's tables of one or more ``gpu.json`` documents: a training table and an
    inference table, a row per point (an error or a skip says so in the row)."""
    train = [
        "| point | micro-batch, checkpointing | tokens/s | whole model tokens/s | MFU | peak GB "
        "| GPU busy | largest kinds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    infer = [
        "| point | engine tokens/s | naive | limit | engine / naive | engine / limit | padding "
        "| MFU | compiled graphs | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for doc in docs:
        for res in doc["points"]:
            name = res["point"]["name"]
            if "skipped" in res:
                train.append(f"| {name} | skipped: {res['skipped']} |||||||")
                continue
            t = res.get("training")
            if not t and not res.get("inference"):  # killed or crashed before a part ended
                why = str(res.get("error", "no result")).splitlines()[0][:80]
                train.append(f"| {name} | {why} |||||||")
            if t and "error" in t:
                train.append(f"| {name} | {_failure(t)} |||||||")
            elif t:
                plan = t.get("memory_plan") or {}
                gc = plan.get("checkpointing", res["point"]["gradient_checkpointing"])
                setup = (
                    f"{t['micro_batch']}, {'on' if gc is True else 'off' if gc is False else gc}"
                )
                prof = t.get("profile") or {}
                kinds = ", ".join(
                    f"{k} {v['share_of_busy']:.0%}"
                    for k, v in list(prof.get("by_kind", {}).items())[:3]
                )
                train.append(
                    f"| {name} | {setup} | {_num(t['tokens_per_s']['engine'])} "
                    f"| {_num(t.get('projected_tokens_per_s'))} | {_num(t.get('mfu'), '.1%')} "
                    f"| {_num(t.get('peak_gb'), '.1f')} | {_num(prof.get('busy_share'), '.0%')} "
                    f"| {kinds} |"
                )
            i = res.get("inference")
            if i and "error" in i:
                infer.append(f"| {name} | {_failure(i)} |||||||||")
            elif i:
                tps, mfu = i["tokens_per_s"], i.get("mfu") or {}
                infer.append(
                    f"| {name} | {_num(tps['engine'])} | {_num(tps.get('naive'))} "
                    f"| {_num(tps.get('limit'))} | {_num(i.get('engine_vs_naive'), '.2f')} "
                    f"| {_num(i.get('engine_vs_limit'), '.2f')} "
                    f"| {_num(i['padding_share']['engine'], '.1%')} "
                    f"| {_num(mfu.get('engine'), '.1%')} | {i.get('compiled_graphs', '')} "
                    f"| {_num(i.get('peak_gb'), '.1f')} |"
                )
    out = ["\n".join(train)]
    if len(infer) > 2:
        out.append("\n".join(infer))
    return "\n\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--grid", type=Path, help="JSON list of points (default: --preset's)")
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="built-in grid: default (kernels, checkpointing, micro-batch, the teachers' "
        "shapes) or levers (Gemma-2-9B training with each speed flag)",
    )
    ap.add_argument("--points", help="only these point names, comma-separated")
    ap.add_argument("--extra", action="append", default=[], help="Hydra override for every point")
    ap.add_argument("--train-length", type=int, default=1024)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--train-warmup", type=int, default=2)
    ap.add_argument("--bare", action="store_true", help="also the bare torch loop (slower)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="one more training step under torch.profiler: where its time goes (not timed)",
    )
    ap.add_argument("--predict-rows", type=int, default=96)
    ap.add_argument("--predict-batch", type=int, help="default: stages.predict.batch_size")
    ap.add_argument("--predict-max-tokens", type=int, help="default: the predict stage's")
    ap.add_argument("--lengths", help="JSON list of token lengths for the predict mix")
    ap.add_argument("--budget-s", type=float, default=330.0, help="no point starts after this")
    ap.add_argument("--point-timeout-s", type=float, default=150.0)
    ap.add_argument("--min-point-s", type=float, default=40.0, help="least time a point needs")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "gpu.json")
    ap.add_argument(
        "--table",
        type=Path,
        nargs="+",
        help="print the README's markdown tables of these gpu.json files, measure nothing",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.table:
        print(markdown_tables([json.loads(f.read_text()) for f in args.table]), end="")
        return None
    if args.child:
        job = json.loads(args.child)

        def save(result: dict) -> None:
            tmp = args.result.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
            tmp.replace(args.result)  # a kill never leaves half a file

        save(run_point(job["point"], job["opts"], save))
        return None
    points = json.loads(args.grid.read_text()) if args.grid else PRESETS[args.preset]()
    if args.points:
        wanted = args.points.split(",")
        unknown = sorted(set(wanted) - {p["name"] for p in points})
        if unknown:
            raise SystemExit(f"unknown points {unknown}; known: {[p['name'] for p in points]}")
        points = [p for p in points if p["name"] in wanted]
    opts = {
        "dry_run": args.dry_run,
        "extra": args.extra,
        "train_length": args.train_length,
        "train_steps": args.train_steps,
        "train_warmup": args.train_warmup,
        "bare": args.bare,
        "profile": args.profile,
        "predict_rows": args.predict_rows,
        "predict_batch": args.predict_batch,
        "predict_max_tokens": args.predict_max_tokens,
        "lengths": str(Path(args.lengths).resolve()) if args.lengths else None,
        "budget_s": args.budget_s,
        "point_timeout_s": args.point_timeout_s,
        "min_point_s": args.min_point_s,
    }
    load_before = [round(x, 2) for x in os.getloadavg()]
    doc = run_grid(points, opts, args.out)
    doc = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "dry_run": args.dry_run,
            "loadavg_before": load_before,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "options": opts,
            "command": " ".join(["bench_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        },
        **doc,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"[bench-gpu] {len(points)} points in {doc['wall_s']} s -> {args.out}")
    return doc


if __name__ == "__main__":
    main()
