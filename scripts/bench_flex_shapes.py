"""Does flex_attention compile once per batch shape, or go dynamic? (length buckets' question)

    python scripts/bench_flex_shapes.py                       # CPU (inductor C++), 16 shapes
    python scripts/bench_flex_shapes.py --device cuda --shapes 24 --mask

A tiny random-init Gemma-2 classifier (softcapping and a sliding window on, as the real one)
with ``attn_implementation=flex_attention`` predicts (eval, no grad) batches of random
(rows, length) shapes, the shapes the length-sorted predict engine makes without
``model.length_buckets``. Per call: seconds and whether torch.compile made new graphs. If the
graphs stop growing after a few shapes, flex goes dynamic and buckets only cost padding
(``configs/model/gemma2_9b.yaml``: 11.2% with its 16 buckets against 3.6% without, on the real
length mix); if every shape compiles, buckets are needed. ``--mask`` passes a padding mask (the
engine drops it for causal decoders; the H200 probe passed one and saw a recompile per shape).
Writes ``--out`` (default ``bench/flex_shapes.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summary(device: str, shapes: int, mask: bool, calls: list[dict]) -> dict:
    import torch

    compiling = [i for i, c in enumerate(calls) if c["new_graphs"]]
    return {
        "device": device,
        "torch": torch.__version__,
        "mask": mask,
        "calls": calls,
        "shapes": shapes,
        "calls_that_compiled": len(compiling),
        "last_compiling_call": compiling[-1] if compiling else None,
        "dynamic": bool(compiling) and compiling[-1] < shapes // 2,
    }


def run(device: str, shapes: int, mask: bool, seed: int = 0, save=None) -> dict:
    """The calls, measured; ``save(doc)`` after each (a timeout keeps what was measured)."""
    import torch
    from torch._dynamo.utils import counters
    from transformers import AutoModelForSequenceClassification, Gemma2Config

    from arena_distill.models.factory import allow_recompiles

    allow_recompiles(64)  # as many compiles as it wants: the point is to count them
    torch.manual_seed(seed)
    rng = random.Random(seed)
    from bench_gpu import TINY, TINY_GEMMA2  # the dry run's widths (scripts/ is on the path)

    cfg = Gemma2Config(
        **TINY, **TINY_GEMMA2, num_hidden_layers=2, pad_token_id=0, max_position_embeddings=4096
    )
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(
            cfg, attn_implementation="flex_attention"
        ).eval()
    calls = []
    for _ in range(shapes):
        rows, length = rng.choice([8, 8, 6, 4, 3, 1]), rng.randint(16, 2000)
        ids = torch.randint(1, cfg.vocab_size, (rows, length), device=device)
        kw = {}
        if mask:
            m = torch.ones_like(ids)
            m[rows // 2 :, length // 2 :] = 0
            kw["attention_mask"] = m
        before = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, **kw).logits.float().cpu()
        calls.append(
            {
                "rows": rows,
                "length": length,
                "seconds": round(time.perf_counter() - t0, 3),
                "new_graphs": int(counters["stats"]["unique_graphs"] - before),
            }
        )
        print(calls[-1], flush=True)
        if save is not None:
            save(summary(device, shapes, mask, calls))
    return summary(device, shapes, mask, calls)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", type=int, default=16)
    ap.add_argument("--mask", action="store_true", help="pass a padding mask")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "flex_shapes.json")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(doc: dict) -> None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(args.out)

    doc = run(args.device, args.shapes, args.mask, save=save)
    print(
        f"[flex-shapes] {doc['calls_that_compiled']} of {args.shapes} calls compiled, the last "
        f"at call {doc['last_compiling_call']}: {'dynamic' if doc['dynamic'] else 'per shape'}"
        f" -> {args.out}"
    )
    return doc


if __name__ == "__main__":
    main()
