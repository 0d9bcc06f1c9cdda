"""Training memory from architecture facts: the micro-batch and gradient checkpointing to use.

``gradient_checkpointing: auto`` (model setting) and ``per_device_batch_size: auto`` (training
settings) are decided here, once per training run (``train.fit``), from an estimate of the peak
memory of one training step and the memory the device has.

The estimate (:func:`estimate_training_memory`) is a count of what autograd keeps for the
backward pass, per token and per decoder layer (:func:`activation_bytes_per_token_layer`), plus
what does not depend on the batch: the weights as loaded, and for every trainable parameter its
gradient and AdamW's two moments. Per token and layer, with ``a`` the activation dtype's bytes,
``f`` = 4 (the norms compute in float32; peft keeps LoRA matrices in float32 under bf16/fp16):

* each RMSNorm keeps its float32 input: ``f·h`` (Gemma-2 has four norms per layer, Llama and
  Qwen2 two);
* a frozen linear layer keeps nothing (its input is only needed for its weight's gradient); a
  LoRA layer on an input of width ``d`` keeps its input cast to the adapter dtype (``f·d``), the
  dropout mask (``d`` bytes, when dropout > 0) and ``lora_A``'s output (``f·r``); a fully
  trained linear layer keeps its input (``a·d``, shared by the layers reading the same tensor);
* attention: q, k, v and the output (``a·(2·q_dim + 2·kv_dim)``) for the fused kernels (sdpa,
  flex_attention, FlashAttention-2, which also keep a float32 log-sum-exp per head); ``eager``
  also keeps the full score square: per token ``heads · L`` scores as float32 softmax output,
  the probabilities in ``a`` and, with softcapping, the tanh output in ``a``;
* the MLP keeps the gate output and both factors of the gated product: ``3·a·I``.

With gradient checkpointing only each layer's input is kept (``a·h`` per token and layer) and
one layer's activations exist at a time during its recomputation. On one H200, Gemma-2-9B, LoRA
r64, 1024 tokens, bf16, AdamW, the project's probe measured (``../shared/gpu/README.md``, GiB):
8 rows without checkpointing 133.4, 4 rows 76.5, 8 rows with checkpointing 25.8; this count
gives 133.1, 76.8 and 25.4 (tests/models/test_memory.py).

:func:`plan_micro_batch` picks, among the micro-batches that divide the rows of one optimiser
step (largest first), the largest that fits the device without checkpointing; only when none
does, checkpointing goes on with the largest micro-batch that fits with it. On CPU
checkpointing stays off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

GIB = 2**30
ADAPTER_BYTES = 4  # peft casts LoRA matrices to float32 (autocast_adapter_dtype)
NORM_BYTES = 4  # RMSNorm / LayerNorm compute in float32
# share of the free memory a plan may use: allocator fragmentation, CUDA workspaces, the
# transient gradient tensors of the layer being back-propagated
MEMORY_SAFETY = 0.92
# norms per decoder layer (Gemma-2: pre/post attention and pre/post feed-forward)
NORMS_PER_LAYER = {"gemma2": 4, "gemma3": 4}
FUSED_ATTENTION = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
LORA_INPUTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LayerShape:
    """What a decoder layer's activations depend on (a model's ``config.json`` facts)."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    softcapping: bool = False

    @classmethod
    def from_config(cls, config: Any) -> LayerShape:
        """From a transformers config object or a ``config.json`` mapping."""
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return cls(
            model_type=str(get("model_type")),
            hidden_size=hidden,
            intermediate_size=int(get("intermediate_size")),
            num_layers=int(get("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            softcapping=bool(get("attn_logit_softcapping")),
        )

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class Adapter:
    """The LoRA of a run (None rank: full fine-tuning)."""

    r: int | None
    targets: tuple[str, ...] = LORA_INPUTS
    dropout: float = 0.0

    @classmethod
    def of(cls, model: torch.nn.Module) -> Adapter:
        """The adapter of a (peft) model; full fine-tuning when it has none."""
        configs = getattr(model, "peft_config", None)
        if not configs:
            return cls(None)
        c = next(iter(configs.values()))
        targets = c.target_modules
        if isinstance(targets, str):  # all-linear / a regex: every projection
            targets = LORA_INPUTS
        return cls(int(c.r), tuple(sorted(targets)), float(c.lora_dropout or 0.0))


def activation_bytes_per_token_layer(
    shape: LayerShape,
    *,
    adapter: Adapter,
    attention: str,
    seq_len: int,
    dtype_bytes: int,
) -> int:
    """Bytes autograd keeps per token in one decoder layer during a training step (module doc)."""
    a, f, h, i = dtype_bytes, NORM_BYTES, shape.hidden_size, shape.intermediate_size
    total = NORMS_PER_LAYER.get(shape.model_type, 2) * f * h
    inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": shape.q_dim}
    inputs.update(gate_proj=h, up_proj=h, down_proj=i)
    if adapter.r is None:  # full fine-tuning: one saved input per distinct tensor read
        total += a * (h + shape.q_dim + h + i)
    else:
        mask = 1 if adapter.dropout > 0 else 0
        for name in adapter.targets:
            if name in inputs:
                total += (ADAPTER_BYTES + mask) * inputs[name] + ADAPTER_BYTES * adapter.r
    if attention in FUSED_ATTENTION:
        total += a * (2 * shape.q_dim + 2 * shape.kv_dim) + 4 * shape.num_heads
    else:  # eager: the L x L scores are materialised and kept
        total += a * 3 * shape.q_dim
        per_score = 4 + a + (a if shape.softcapping else 0)
        total += shape.num_heads * seq_len * per_score
    total += 3 * a * i
    return int(total)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training step, by part."""

    weights: int
    optimizer: int  # gradients and AdamW moments of the trainable parameters
    activations: int
    batch: int
    seq_len: int
    checkpointing: bool

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations

    def gib(self) -> float:
        return self.total / GIB


def estimate_training_memory(
    shape: LayerShape,
    *,
    batch: int,
    seq_len: int,
    checkpointing: bool,
    adapter: Adapter,
    attention: str,
    dtype_bytes: int,
    weight_bytes: int,
    trainable_bytes: int,
    packed: bool = False,
) -> MemoryEstimate:
    """Peak memory of a training step on ``batch`` rows of ``seq_len`` tokens.

    ``weight_bytes``: every parameter and buffer as loaded; ``trainable_bytes``: the trainable
    ones (their gradient and two AdamW moments are added). ``packed``: the rows are one
    concatenated sequence, so eager's score square spans ``batch × seq_len`` tokens."""
    tokens = batch * seq_len
    span = tokens if packed else seq_len
    per_layer = activation_bytes_per_token_layer(
        shape, adapter=adapter, attention=attention, seq_len=span, dtype_bytes=dtype_bytes
    )
    a = dtype_bytes
    head = (NORM_BYTES + a) * shape.hidden_size  # final norm, the head's input
    if checkpointing:
        kept = tokens * shape.num_layers * a * shape.hidden_size  # each layer's input
        activations = kept + tokens * per_layer + tokens * head  # one layer recomputed at a time
    else:
        activations = tokens * (shape.num_layers * per_layer + head)
    return MemoryEstimate(
        weights=int(weight_bytes),
        optimizer=3 * int(trainable_bytes),
        activations=int(activations),
        batch=batch,
        seq_len=seq_len,
        checkpointing=checkpointing,
    )


def free_memory(device: str | torch.device) -> int | None:
    """Bytes this process's model and training step may occupy on ``device``: CUDA's free
    memory plus everything torch's allocator already holds here (the loaded model is part of the
    estimate, so the memory it occupies counts as available to it); None on a CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free + torch.cuda.memory_reserved(dev))


def cpu_available_memory() -> int | None:
    """Available RAM (bytes), for the CPU's micro-batch; None where the OS does not say."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class MicroBatchPlan:
    """The decision: checkpointing on or off, the micro-batch, and why."""

    checkpointing: bool
    micro_batch: int
    seq_len: int
    device: str
    available_bytes: int | None
    estimate_gib: float | None
    reason: str
    candidates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def batch_candidates(rows_per_step: int, cap: int | None = None) -> list[int]:
    """Micro-batches that divide ``rows_per_step`` (so accumulation is exact), largest first."""
    top = rows_per_step if cap is None else min(cap, rows_per_step)
    return [b for b in range(max(top, 1), 0, -1) if rows_per_step % b == 0]


def model_memory_facts(model: torch.nn.Module) -> dict[str, Any]:
    """From a built model: its layer shape, adapter, dtype bytes, weight and trainable bytes, the
    attention kernel it runs."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    weight = sum(p.numel() * p.element_size() for p in model.parameters())
    weight += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, torch.float32)
    dtype_bytes = torch.empty((), dtype=dtype or torch.float32).element_size()
    return {
        "shape": LayerShape.from_config(config),
        "adapter": Adapter.of(model),
        "attention": str(getattr(config, "_attn_implementation", None) or "eager"),
        "dtype_bytes": dtype_bytes,
        "weight_bytes": weight,
        "trainable_bytes": trainable,
    }


def plan_micro_batch(
    facts: Mapping[str, Any],
    *,
    seq_len: int,
    rows_per_step: int,
    device: str | torch.device,
    checkpointing: bool | str = "auto",
    micro_batch: int | str = "auto",
    available_bytes: int | None = None,
    packed: bool = False,
    rows_per_example: int = 1,
) -> MicroBatchPlan:
    """Checkpointing and micro-batch for rows of up to ``seq_len`` tokens.

    ``checkpointing`` / ``micro_batch``: ``auto`` to decide, or the configured value (kept).
    ``rows_per_step`` and the micro-batches count examples of ``rows_per_example`` rows each
    (2 for a full-swap pair). ``auto`` checkpointing with a configured micro-batch: on only when that batch does not fit
    without it. Both ``auto``: the largest divisor of ``rows_per_step`` that fits without
    checkpointing, else checkpointing with the largest that fits with it (1 if none does).
    ``available_bytes`` defaults to the device's free memory (:func:`free_memory`; on a CPU the
    available RAM, and checkpointing stays off)."""
    dev = torch.device(device)
    cpu = dev.type != "cuda"
    if available_bytes is None and cpu:
        ram = cpu_available_memory()  # the loaded model is already out of it
        available_bytes = None if ram is None else ram + int(facts["weight_bytes"])
    elif available_bytes is None:
        available_bytes = free_memory(dev)
    budget = None if available_bytes is None else available_bytes * MEMORY_SAFETY
    est_kw = {k: facts[k] for k in ("adapter", "attention", "dtype_bytes")}
    est_kw.update(weight_bytes=facts["weight_bytes"], trainable_bytes=facts["trainable_bytes"])

    def estimate(b: int, gc: bool) -> MemoryEstimate:
        return estimate_training_memory(
            facts["shape"],
            batch=b * rows_per_example,
            seq_len=seq_len,
            checkpointing=gc,
            packed=packed,
            **est_kw,
        )

    batches = batch_candidates(rows_per_step) if micro_batch == "auto" else [int(micro_batch)]
    if checkpointing == "auto":
        modes = [False] if cpu else [False, True]
    else:
        modes = [bool(checkpointing)]
    tried: list[dict] = []
    for gc in modes:
        for b in batches:
            est = estimate(b, gc)
            fits = budget is None or est.total <= budget
            tried.append({"checkpointing": gc, "micro_batch": b, "gib": round(est.gib(), 2)})
            if fits:
                why = "fits" if budget is not None else "no memory figure for this device"
                if cpu and checkpointing == "auto":
                    why += "; checkpointing stays off on a CPU"
                return MicroBatchPlan(
                    gc, b, seq_len, str(dev), available_bytes, round(est.gib(), 2), why, tried
                )
    gc, b = modes[-1], batches[-1]
    return MicroBatchPlan(
        gc,
        b,
        seq_len,
        str(dev),
        available_bytes,
        round(estimate(b, gc).gib(), 2),
        "nothing fits the estimate: the smallest choice, which may run out of memory",
        tried,
    )


def describe(plan: MicroBatchPlan) -> str:
    avail = "unknown" if plan.available_bytes is None else f"{plan.available_bytes / GIB:.1f} GiB"
    return (
        f"memory plan on {plan.device}: gradient checkpointing "
        f"{'on' if plan.checkpointing else 'off'}, micro-batch {plan.micro_batch} x "
        f"{plan.seq_len} tokens, estimated peak {plan.estimate_gib} GiB of {avail} available "
        f"({plan.reason})"
    )
