"""Measure the optional speed knobs on this machine (CPU or GPU). Writes JSON.

    PYTHONPATH=src .venv/bin/python scripts/bench_speedups.py --out bench/speedups.json

* ``buckets``: the inference engine's padding share on a real length mix
  (``--lengths``, default ``../shared/gpu/lengths.json``: token lengths of 256 rows at the 2000
  cap) without length buckets and with ``configs/model/gemma2_9b.yaml``'s ``length_buckets``
  (what flex_attention pays for compiling once per bucket); no model needed.
* ``packing``: a LoRA training step (forward + backward, ``models.factory.build_model``) on
  random-init tiny decoders, the length mix scaled by ``--scale``: padded batches (in input order
  and length-sorted) vs padding-free packed rows (``collate.pack_rows`` +
  ``models.packing.packed_logits``); real (non-pad) tokens/s, best of ``--repeats``.
* ``torch_compile``: inference tokens/s of the same model eager vs ``torch_compile: force``
  (fixed-shape batches), and the first call's seconds (the compile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from arena_distill.collate import bucket_length, pack_rows, pad_right  # noqa: E402
from arena_distill.config import config_dir  # noqa: E402
from arena_distill.inference import make_batches, padded_tokens  # noqa: E402
from arena_distill.models import build_tiny_models  # noqa: E402
from arena_distill.models.factory import build_model, load_for_inference  # noqa: E402
from arena_distill.models.packing import packed_logits  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LENGTHS = REPO.parent / "shared" / "gpu" / "lengths.json"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_buckets(lengths: list[int], batch_size: int) -> dict:
    buckets = list(OmegaConf.load(config_dir() / "model" / "gemma2_9b.yaml").length_buckets)
    out = {"rows": len(lengths), "tokens": int(sum(lengths)), "buckets": buckets}
    for name, b in (("none", None), ("gemma2_9b", buckets)):
        budget = batch_size * bucket_length(max(lengths), b)
        batches = make_batches(lengths, batch_size, budget, b)
        padded = padded_tokens(lengths, batches, b)
        widths = {bucket_length(max(lengths[i] for i in x), b) for x in batches}
        out[name] = {
            "padding_share": round(1 - sum(lengths) / padded, 4),
            "batches": len(batches),
            "distinct_widths": len(widths),  # shapes a per-shape kernel compiles
        }
    return out


def model_cfg(folder: Path, family: str, **overrides):
    cfg = OmegaConf.load(config_dir() / "model" / f"tiny_{family}.yaml")
    cfg.name_or_path = str(folder)
    cfg.lora.dropout = 0.0
    return OmegaConf.merge(cfg, overrides)


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def bench_packing(tiny: dict, lengths: list[int], args, device: str) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for family in args.families:
        model, tok = build_model(model_cfg(tiny[family], family), train=True, device=device)
        pad = tok.pad_token_id
        seqs = [rng.integers(3, 200, size=n).tolist() for n in lengths]
        seqs = [[t if t != pad else pad + 1 for t in s] for s in seqs]
        real = sum(lengths)
        b = args.batch_size
        orders = {
            "input_order": list(range(len(seqs))),
            "length_sorted": sorted(range(len(seqs)), key=lambda i: -lengths[i]),
        }
        res = {}
        for name, order in orders.items():
            chunks = [order[i : i + b] for i in range(0, len(order), b)]
            padded_batches = [pad_right([seqs[i] for i in c], pad) for c in chunks]

            def padded_step(batches=padded_batches, model=model):
                for ids, mask in batches:
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    logits.float().sum().backward()
                model.zero_grad(set_to_none=True)

            s = timed(padded_step, args.repeats, device)
            positions = sum(ids.numel() for ids, _ in padded_batches)
            res[f"padded_{name}"] = {
                "tokens_per_s": round(real / s, 1),
                "padding_share": round(1 - real / positions, 4),
            }
        chunks = [orders["input_order"][i : i + b] for i in range(0, len(seqs), b)]
        packs = [pack_rows([seqs[i] for i in c], pad) for c in chunks]

        def packed_step(packs=packs, model=model):
            for p in packs:
                logits = packed_logits(
                    model,
                    p["input_ids"].to(device),
                    p["position_ids"].to(device),
                    p["last_index"].to(device),
                )
                logits.float().sum().backward()
            model.zero_grad(set_to_none=True)

        s = timed(packed_step, args.repeats, device)
        res["packed"] = {"tokens_per_s": round(real / s, 1), "padding_share": 0.0}
        res["packed_vs_padded_input_order"] = round(
            res["packed"]["tokens_per_s"] / res["padded_input_order"]["tokens_per_s"], 3
        )
        res["packed_vs_padded_length_sorted"] = round(
            res["packed"]["tokens_per_s"] / res["padded_length_sorted"]["tokens_per_s"], 3
        )
        res["attention"] = model.config._attn_implementation
        out[family] = res
    return out


def bench_compile(tiny: dict, args, device: str) -> dict:
    out = {}
    rng = np.random.default_rng(1)
    width = args.compile_length
    ids = torch.from_numpy(rng.integers(3, 200, size=(args.batch_size, width))).to(device)
    mask = torch.ones_like(ids)
    for family in args.families:
        res = {}
        for name, flag in (("eager", False), ("torch_compile", "force")):
            model, _ = load_for_inference(
                model_cfg(tiny[family], family, torch_compile=flag), device=device
            )

            def fwd(model=model):
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask)

            sync(device)
            t = time.perf_counter()
            fwd()
            sync(device)
            first = time.perf_counter() - t
            s = timed(fwd, args.repeats, device)
            res[name] = {
                "tokens_per_s": round(ids.numel() / s, 1),
                "first_call_s": round(first, 2),
            }
        res["speedup"] = round(
            res["torch_compile"]["tokens_per_s"] / res["eager"]["tokens_per_s"], 3
        )
        out[family] = res
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default=str(DEFAULT_LENGTHS))
    p.add_argument("--rows", type=int, default=64, help="rows of the mix used for training")
    p.add_argument("--scale", type=float, default=0.125, help="training lengths x this (CPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--families", default="llama,gemma2")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--compile-length", type=int, default=128)
    p.add_argument("--skip", default="", help="comma-separated parts to skip")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/speedups.json")
    args = p.parse_args()
    args.families = [f for f in args.families.split(",") if f]
    skip = set(args.skip.split(","))
    lengths = [int(n) for n in json.loads(Path(args.lengths).read_text())]
    report = {
        "machine": {
            "device": args.device,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }
    if "buckets" not in skip:
        report["buckets"] = bench_buckets(lengths, args.batch_size)
    train_lengths = [max(4, int(n * args.scale)) for n in lengths[: args.rows]]
    with tempfile.TemporaryDirectory() as tmp:
        texts = [f"row {i}: the answer depends on {i % 13} things" for i in range(200)]
        h = args.hidden_size
        tiny = build_tiny_models(
            texts, Path(tmp), vocab_size=200, hidden_size=h, intermediate_size=4 * h
        )
        if "packing" not in skip:
            report["packing"] = {
                "rows": len(train_lengths),
                "tokens": sum(train_lengths),
                **bench_packing(tiny, train_lengths, args, args.device),
            }
        if "torch_compile" not in skip:
            report["torch_compile"] = bench_compile(tiny, args, args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
