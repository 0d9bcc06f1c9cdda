"""The time planner: how long predicting a test set takes, before a GPU second is spent.

A row's cost is its forward FLOPs at its (capped) token length, from the architecture
(``Architecture``): every linear layer of the transformer blocks (2 FLOPs per weight per token)
plus attention scores and their weighted sum (4 · L² · heads · head_dim per layer: eager and
sdpa compute the full L × L square). Rows are batched exactly as the inference engine batches
them (``inference.make_batches``: longest first, at most ``batch_size`` rows and ``max_tokens``
padded positions), so padding is paid for: a batch costs its rows at the batch's longest length.

The projected time of a plan is ``fixed_seconds + FLOPs / (device FLOP/s × devices)``, with
the device's effective FLOP/s either measured on the spot (the predict stage's time guard times
its first, longest batches: ``measured_flops_per_s``) or taken from :data:`DEVICES`, a table of
effective rates with their sources. The planner lists every (max_length, TTA) plan, and picks
the first that fits ``budget × safety`` in the guard's order: the requested length with TTA, each
shorter length with TTA, then the same lengths without TTA.

Architectures come from a model folder's ``config.json`` or, for the recipe's models (whose
weights are not here), from :data:`ARCHITECTURES`, copied from their public ``config.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The public config.json values the FLOPs need (Hugging Face hub, the models' own files).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "google/gemma-2-9b-it": {
        "model_type": "gemma2",
        "hidden_size": 3584,
        "intermediate_size": 14336,
        "num_hidden_layers": 42,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 256,
        "vocab_size": 256000,
    },
    "meta-llama/Meta-Llama-3-70B-Instruct": {
        "model_type": "llama",
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
    },
    "Qwen/Qwen2-72B-Instruct": {
        "model_type": "qwen2",
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 152064,
    },
}


@dataclass(frozen=True)
class Device:
    """An effective forward rate (FLOP/s actually reached by the inference engine)."""

    name: str
    flops_per_s: float
    source: str


# Effective rates, each with how it was obtained. Gemma-2-9B classifier inference, eager
# attention (the only kernel that keeps Gemma-2's softcapping on a T4).
DEVICES: dict[str, Device] = {
    "h200": Device(
        "h200",
        298e12,
        "measured (../shared/gpu/README.md, 2026-11-29): the project's engine ran Gemma-2-9B "
        "bf16 eager at 17,101 tokens/s on a length mix with 17.4 GFLOP/token (this module's "
        "count); 8 x 2000 fixed-shape eager gave 308 TFLOP/s",
    ),
    "h100": Device(
        "h100",
        298e12,
        "assumed equal to the H200's measured rate: same dense bf16 peak (989 TFLOP/s, "
        "datasheet); not measured",
    ),
    "a100": Device(
        "a100",
        94e12,
        "derived, not measured: the H200's eager efficiency (298 of 989 TFLOP/s, 30%) applied "
        "to the A100's 312 TFLOP/s bf16 datasheet peak",
    ),
    "t4": Device(
        "t4",
        7.65e12,
        "derived from a public Kaggle report: a Gemma-2-9B notebook expected ~4.5 h for 25,000 "
        "rows with 8-bit weights and fp16 activations, no TTA, 1,024 tokens, the rows split "
        "over 2 T4s; with ../shared/gpu/README.md's length mix that is 7.65 TFLOP/s per T4 "
        "(11.8% of its 65 TFLOP/s fp16 peak); not measured here",
    ),
    "cpu": Device(
        "cpu",
        0.05e12,
        "a 2-core CPU, order of magnitude only (fp32); measure on the spot instead",
    ),
}


@dataclass(frozen=True)
class Architecture:
    """What a forward pass costs: linear weights of the blocks, attention width, depth."""

    model_type: str
    linear_params: int  # weights of the linear layers inside the transformer blocks
    num_layers: int
    attention_width: int  # heads x head_dim (the query side)

    def flops(self, length: int | np.ndarray) -> np.ndarray:
        """Forward FLOPs of one sequence of ``length`` tokens (head and embeddings ignored)."""
        n = np.asarray(length, dtype=np.float64)
        return 2.0 * self.linear_params * n + 4.0 * self.num_layers * self.attention_width * n * n

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        """From a Hugging Face ``config.json`` mapping (decoders: gemma2, llama, qwen2,
        mistral; encoders: bert)."""
        c = dict(config)
        h, inter = int(c["hidden_size"]), int(c["intermediate_size"])
        layers, heads = int(c["num_hidden_layers"]), int(c["num_attention_heads"])
        head_dim = int(c.get("head_dim") or h // heads)
        kv = int(c.get("num_key_value_heads") or heads)
        if c.get("model_type") == "bert":
            per_layer = 4 * h * h + 2 * h * inter  # q, k, v, o and the two MLP matrices
        else:
            q, kvw = heads * head_dim, kv * head_dim
            per_layer = h * q + 2 * h * kvw + q * h + 3 * h * inter  # gated MLP
        return cls(str(c.get("model_type")), per_layer * layers, layers, heads * head_dim)

    @classmethod
    def of(cls, model: str | Path) -> Architecture:
        """A model folder's ``config.json``, else the shipped facts of a hub id."""
        path = Path(model) / "config.json"
        if path.is_file():
            return cls.from_config(json.loads(path.read_text()))
        if str(model) in ARCHITECTURES:
            return cls.from_config(ARCHITECTURES[str(model)])
        raise KeyError(
            f"no config.json in {model} and no shipped architecture for it "
            f"(known: {sorted(ARCHITECTURES)})"
        )


def batch_flops(
    lengths: Sequence[int], arch: Architecture, batch_size: int, max_tokens: int | None
) -> tuple[float, int, int]:
    """``(FLOPs, real tokens, padded positions)`` of the engine's batches over ``lengths``."""
    from arena_distill.inference import make_batches

    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return 0.0, 0, 0
    budget = max_tokens if max_tokens is not None else batch_size * int(lengths.max())
    flops, padded = 0.0, 0
    for batch in make_batches(lengths, batch_size, budget):
        longest = int(lengths[batch].max())
        flops += len(batch) * float(arch.flops(longest))
        padded += len(batch) * longest
    return flops, int(lengths.sum()), padded


@dataclass(frozen=True)
class PlanRow:
    max_length: int
    tta: bool
    rows: int
    tflops: float
    padding_share: float
    seconds: float
    fits: bool


def project(
    lengths: Mapping[bool, Sequence[int]],
    arch: Architecture,
    *,
    max_lengths: Sequence[int],
    flops_per_s: float,
    n_devices: int = 1,
    batch_size: int = 8,
    max_tokens: int | None = None,
    budget_s: float = math.inf,
    fixed_seconds: float = 0.0,
    scale: float = 1.0,
) -> list[PlanRow]:
    """Every (max_length, TTA) plan, in the guard's order of preference (each length with TTA,
    longest first, then each without). ``lengths[False]`` / ``lengths[True]``: token lengths of
    the original / swapped encodings at the longest budget; shorter budgets cap them.
    ``scale`` multiplies the rows (project a 256-row length mix onto 25,000 rows)."""
    rows = []
    for tta in (True, False):
        for ml in sorted(set(int(m) for m in max_lengths), reverse=True):
            flops = padded = real = 0.0
            for o in (False, True) if tta else (False,):
                capped = np.minimum(np.asarray(lengths[o], dtype=np.int64), ml)
                mt = max_tokens if max_tokens is not None else batch_size * ml
                f, r, p = batch_flops(capped, arch, batch_size, mt)
                flops, real, padded = flops + f * scale, real + r * scale, padded + p * scale
            seconds = fixed_seconds + flops / (flops_per_s * max(n_devices, 1))
            rows.append(
                PlanRow(
                    max_length=ml,
                    tta=tta,
                    rows=int(round(len(lengths[False]) * scale)),
                    tflops=flops / 1e12,
                    padding_share=1 - real / padded if padded else 0.0,
                    seconds=seconds,
                    fits=seconds <= budget_s,
                )
            )
    return rows


def choose(rows: Sequence[PlanRow]) -> PlanRow | None:
    """The first plan that fits (None: none does)."""
    return next((r for r in rows if r.fits), None)


def render(rows: Sequence[PlanRow], chosen: PlanRow | None, header: str = "") -> str:
    """The plan as a text table, the chosen row marked."""
    lines = [header] if header else []
    lines.append("max_length  tta    rows   TFLOPs  padding  projected  fits")
    for r in rows:
        mark = "  <- chosen" if chosen is not None and r == chosen else ""
        lines.append(
            f"{r.max_length:>10}  {'on ' if r.tta else 'off'}  {r.rows:>6}  {r.tflops:>7.0f}  "
            f"{r.padding_share:>6.1%}  {_hours(r.seconds):>9}  {'yes' if r.fits else 'no ':>4}{mark}"
        )
    if chosen is None:
        lines.append("no plan fits the budget: the cheapest one will run (the guard says so)")
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m"


def to_json(rows: Sequence[PlanRow], chosen: PlanRow | None, **info) -> dict:
    return {
        **info,
        "plans": [asdict(r) for r in rows],
        "chosen": None if chosen is None else asdict(chosen),
    }


# ---------------------------------------------------------------------------------------------
# The final model's cost (pipeline.final)
# ---------------------------------------------------------------------------------------------


def final_cost(
    final: str,
    n_folds: int,
    *,
    fold_rows: Sequence[int] | None = None,
    all_rows: int | None = None,
) -> dict[str, Any]:
    """What the final model of ``pipeline.final`` costs: forward passes per predicted row and
    student training runs (the K fold students train whatever the final: the OOF evidence, the
    stacker and the report need them).

    * ``merge``: 1 pass per row; K runs (the fold students, merged and quantized).
    * ``folds``: K passes per row (every fold student predicts every row); K runs.
    * ``full``: 1 pass per row; K + 1 runs: one more student over every cv and extra row, then
      merged alone and quantized. ``fold_rows`` (each fold student's training rows) and
      ``all_rows`` (the full student's) give ``extra_training_share``: the full run's rows over
      the fold runs' together (same settings, epochs and swap augmentation, so rows measure the
      work up to the length mix); without them, the share with no extra rows, 1 / (K − 1)."""
    k = int(n_folds)
    passes = k if final == "folds" else 1
    runs = k + 1 if final == "full" else k
    out: dict[str, Any] = {
        "final": final,
        "inference_passes": passes,
        "student_runs": runs,
        "fold_run_rows": None if fold_rows is None else [int(r) for r in fold_rows],
        "full_run_rows": None if all_rows is None else int(all_rows),
    }
    if final == "full":
        if fold_rows is not None and all_rows is not None and sum(fold_rows) > 0:
            out["extra_training_share"] = all_rows / sum(fold_rows)
            out["share_from"] = "the run's folds file"
        else:
            out["extra_training_share"] = 1 / (k - 1) if k > 1 else None
            out["share_from"] = "no folds file: 1 / (K - 1), as without extra rows"
    return out


def describe_final(cost: Mapping[str, Any]) -> str:
    """One line on what the final model costs beyond the merge's single model."""
    final, k = cost["final"], cost["student_runs"]
    if final == "folds":
        return (
            f"final model: the {k} fold students averaged (pipeline.final=folds), "
            f"{cost['inference_passes']} forward passes per row"
        )
    if final == "full":
        share = cost.get("extra_training_share")
        rows = cost.get("full_run_rows")
        per_fold = cost.get("fold_run_rows")
        what = (
            f" over {rows} rows (a fold student's: {min(per_fold)}-{max(per_fold)})"
            if rows is not None and per_fold
            else ""
        )
        return (
            "final model: one student trained on every cv and extra row (pipeline.final=full), "
            f"1 forward pass per row; training: {k} student runs, one more than the "
            f"{k - 1} fold students{what}"
            + (f", +{share:.0%} of the fold students' training rows" if share else "")
            + "; then its merge and quantization"
        )
    return f"final model: the {k} fold students merged and quantized, 1 forward pass per row"
