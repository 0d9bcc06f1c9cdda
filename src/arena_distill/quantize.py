"""GPTQ 8-bit quantization of a merged sequence classifier, with its score head kept intact.

The 1st place merged its fold LoRAs into one Gemma-2-9B classifier and GPTQ-quantized it to
8 bits (group size 128, 128 calibration texts from the training data, length 2100). Here the
quantization goes through transformers' ``GPTQConfig`` (optimum + gptqmodel underneath,
``backend="torch"``: with the default backend the saved checkpoint does not reload):

* the calibration data are training rows rendered with the run's INFERENCE template and word
  pre-cut (``calibration_texts``) and tokenised exactly as prediction tokenises them
  (``calibration_dataset``: ``text.encode_table``, BOS/EOS included, token budget cut), so the
  activations GPTQ sees are those it will see in prediction; they are handed to GPTQ already
  tokenised (optimum would otherwise tokenise strings without any truncation);
* only the linear layers inside the transformer blocks are quantized (``block_name_to_quantize``,
  chosen from the model config's ``model_type``: BERT needs ``bert.encoder.layer``); the head
  (``score`` / ``classifier``) lies outside the blocks and stays a plain ``nn.Linear``; a hybrid
  head (``models.hybrid``), which ``from_pretrained`` loads as a plain linear one, is rebuilt
  from the source folder's tensors before the model is saved (:func:`restore_head`);
* a group size larger than a layer's ``in_features`` is accepted by gptqmodel, which then uses
  one group per output row (group = ``in_features``); this happens with the tiny test models
  (width 64/128 < 128), never with the real 3584/14336 widths. It is logged as a warning and
  counted in the metrics (``group_size_effective``), read back from the quantized layers.

``GPTQMODEL_CPU_WORKERS`` is set to the usable CPU count when unset, at import of this module
(before gptqmodel is imported): on a 2-core machine gptqmodel otherwise fails with ``Virtual
pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_distill.models.factory import (
    HEAD_NAMES,
    SOFTCAP_FAMILIES,
    default_attention,
    head_module,
    pin_saved_attention,
)
from arena_distill.models.hybrid import HybridHead, restore_hybrid_head
from arena_distill.quantize_methods import is_int8_linear
from arena_distill.settings import QuantSettings
from arena_distill.text import PromptConfig, _row_texts, encode_table, render_text

CPU_WORKERS_ENV = "GPTQMODEL_CPU_WORKERS"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ensure_cpu_workers() -> str:
    """Set ``GPTQMODEL_CPU_WORKERS`` to the usable CPU count unless set; return its value."""
    return os.environ.setdefault(CPU_WORKERS_ENV, str(usable_cpus()))


ensure_cpu_workers()

import torch  # noqa: E402
from torch import nn  # noqa: E402

log = logging.getLogger(__name__)

# model_type -> the ModuleList of transformer blocks GPTQ walks (optimum's own detection finds
# ``model.layers`` for the decoders but not BERT's encoder).
BLOCK_NAMES = {"bert": "bert.encoder.layer"}


class QuantizationError(RuntimeError):
    """GPTQ could not quantize a model (the architecture and the settings tried are named)."""


# ---------------------------------------------------------------------------------------------
# Calibration data
# ---------------------------------------------------------------------------------------------


def sample_calibration_rows(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``df`` drawn without replacement with ``seed`` (all rows if fewer)."""
    if n < 1:
        raise ValueError(f"n_calibration must be >= 1, got {n}")
    if df.empty:
        raise ValueError("no training rows to draw calibration texts from")
    rng = np.random.default_rng(seed)
    take = rng.choice(len(df), size=min(n, len(df)), replace=False)
    return df.iloc[np.sort(take)].reset_index(drop=True)


def calibration_texts(df: pd.DataFrame, prompt: PromptConfig, n: int, seed: int) -> list[str]:
    """The calibration rows as text: the inference template with the run's word pre-cut."""
    rows = sample_calibration_rows(df, n, seed)
    out = []
    for rid, p, a, b in zip(
        rows["id"], rows["prompt"], rows["response_a"], rows["response_b"], strict=True
    ):
        ps, as_, bs = _row_texts(rid, p, a, b, prompt)
        out.append(render_text(ps, as_, bs, prompt))
    return out


def calibration_dataset(
    df: pd.DataFrame, tokenizer: Any, prompt: PromptConfig, n: int, seed: int, max_length: int
) -> list[dict[str, list[int]]]:
    """The same rows as ``calibration_texts``, tokenised as prediction does, cut to
    ``max_length`` tokens: ``[{"input_ids": [ids], "attention_mask": [[1, ...]]}]``, the
    pre-tokenised form GPTQ takes as is."""
    rows = sample_calibration_rows(df, n, seed)
    cfg = dataclasses.replace(prompt, max_length=int(max_length))
    ids = encode_table(rows, tokenizer, cfg)
    # one (1, length) example each: optimum's collation expects a batch dimension
    return [{"input_ids": [x], "attention_mask": [[1] * len(x)]} for x in ids]


# ---------------------------------------------------------------------------------------------
# Model inspection
# ---------------------------------------------------------------------------------------------


def model_positions(config: Any) -> int | None:
    """The longest sequence the model's position embeddings allow (None if unbounded)."""
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if n else None


def block_name(config: Any) -> str | None:
    """``block_name_to_quantize`` for ``config.model_type`` (None: optimum's detection)."""
    return BLOCK_NAMES.get(getattr(config, "model_type", ""))


def head_state(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    name, head = head_module(model)
    return name, {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}


def head_intact(model: nn.Module, expected: Mapping[str, torch.Tensor]) -> tuple[bool, str]:
    """Whether ``model``'s head is a plain ``nn.Linear`` (or an unquantized hybrid head)
    holding exactly ``expected``."""
    name, head = head_module(model)
    if type(head) not in (nn.Linear, HybridHead):
        return False, f"{name} is {type(head).__name__}, not nn.Linear or HybridHead"
    got = head.state_dict()
    if set(got) != set(expected):
        return False, f"{name} tensors {sorted(got)} != {sorted(expected)}"
    for k, v in expected.items():
        g = got[k].detach().cpu()
        if g.dtype != v.dtype or g.shape != v.shape or not torch.equal(g, v):
            return False, f"{name}.{k} differs from the source (dtype {g.dtype} vs {v.dtype})"
    return True, f"{name} is {type(head).__name__} with the source's weights"


def is_quantized_linear(module: nn.Module) -> bool:
    """A GPTQ layer (``qweight``) or a bitsandbytes LLM.int8 ``Linear8bitLt``."""
    return isinstance(getattr(module, "qweight", None), torch.Tensor) or is_int8_linear(module)


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if is_quantized_linear(m)}


def group_report(model: nn.Module, group_size: int) -> dict[str, Any]:
    """Effective group sizes read back from the quantized layers (``scales`` rows).

    A layer with ``in_features <= group_size`` ends up with one group per row."""
    effective: dict[int, int] = {}
    single = []
    for name, m in quantized_layers(model).items():
        if not hasattr(m, "scales"):  # not a GPTQ layer
            continue
        n_groups = int(m.scales.shape[0])
        in_features = int(m.in_features)
        g = math.ceil(in_features / n_groups)
        effective[g] = effective.get(g, 0) + 1
        if g != group_size:
            single.append(name)
    return {
        "group_size_effective": {str(k): v for k, v in sorted(effective.items())},
        "layers_not_at_group_size": len(single),
    }


def linear_in_features(model: nn.Module, prefix: str | None) -> dict[str, int]:
    """``in_features`` of the ``nn.Linear`` layers GPTQ will quantize (heads excluded)."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or name.split(".")[0] in HEAD_NAMES:
            continue
        if prefix and not name.startswith(prefix + "."):
            continue
        out[name] = int(m.in_features)
    return out


# ---------------------------------------------------------------------------------------------
# Loading, quantizing, saving
# ---------------------------------------------------------------------------------------------


def _load_kwargs(config: Any, dtype: str, device: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    model_type = getattr(config, "model_type", "")
    if model_type in SOFTCAP_FAMILIES:  # never sdpa: it drops the softcapping (STACK.md)
        kwargs["attn_implementation"] = default_attention(model_type, device or default_device())
    return kwargs


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_classifier(
    path: str | Path, dtype: str = "auto", device: str | None = None, **kwargs: Any
) -> nn.Module:
    """A (quantized or full) classifier folder in eval mode on ``device`` (default: cuda if
    available); Gemma-2 with eager attention."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), **{**_load_kwargs(config, dtype, device), **kwargs}
    )
    restore_head(model, path)
    return model.to(device or default_device()).eval()


def restore_head(model: nn.Module, source: str | Path) -> bool:
    """The hybrid head ``source`` records, rebuilt with its tensors on ``model`` (just loaded
    from ``source``, with or without quantization: the head is never quantized); whether it
    was one (``models.hybrid.restore_hybrid_head``)."""
    return restore_hybrid_head(model, source, head_module(model)[0])


def gptq_config(
    settings: QuantSettings,
    dataset: list[dict[str, list[int]]],
    tokenizer: Any,
    *,
    block: str | None,
    seqlen: int,
    group_size: int,
) -> Any:
    from transformers import GPTQConfig

    return GPTQConfig(
        bits=int(settings.bits),
        group_size=int(group_size),
        dataset=dataset,
        tokenizer=tokenizer,
        backend=settings.backend,
        model_seqlen=int(seqlen),
        block_name_to_quantize=block,
        damp_percent=float(settings.damp_percent),
        desc_act=bool(settings.desc_act),
        sym=bool(settings.sym),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
    )


def quantize_model(
    source: str | Path,
    tokenizer: Any,
    dataset: list[dict[str, list[int]]],
    settings: QuantSettings,
    *,
    seqlen: int,
) -> nn.Module:
    """GPTQ-quantize the classifier in ``source`` on ``dataset``; the head is left as it is.

    Any failure of GPTQ is re-raised as ``QuantizationError`` naming the architecture and the
    settings tried.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    ensure_cpu_workers()
    config = AutoConfig.from_pretrained(str(source))
    block = block_name(config)
    arch = ",".join(getattr(config, "architectures", None) or [type(config).__name__])
    tried = (
        f"GPTQ bits={settings.bits} group_size={settings.group_size} backend={settings.backend} "
        f"block_name_to_quantize={block or '(auto)'} model_seqlen={seqlen}, "
        f"{len(dataset)} calibration rows"
    )
    try:
        qcfg = gptq_config(
            settings, dataset, tokenizer, block=block, seqlen=seqlen, group_size=settings.group_size
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source), quantization_config=qcfg, **_load_kwargs(config, settings.dtype)
        )
    except Exception as e:  # gptqmodel / optimum raise many kinds
        raise QuantizationError(
            f"cannot quantize {arch} (model_type {config.model_type!r}) from {source}: {tried}: "
            f"{type(e).__name__}: {e}"
        ) from e
    if not quantized_layers(model):
        raise QuantizationError(f"{arch} from {source}: {tried} left no quantized layer")
    restore_head(model, source)
    return model.eval()


def save_quantized(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> None:
    """``save_pretrained`` without the calibration data in config.json, with the tokenizer.

    config.json keeps what a reload needs: ``block_name_to_quantize`` where the model type needs
    one (BERT) and, for Gemma-2, ``attn_implementation: eager`` (as ``models.tiny`` does)."""
    out_dir = Path(out_dir)
    qc = getattr(model.config, "quantization_config", None)
    if isinstance(qc, dict):
        qc.update(dataset=None, tokenizer=None)
    elif qc is not None:
        qc.dataset = None
        qc.tokenizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    path = out_dir / "config.json"
    data = json.loads(path.read_text())
    block = block_name(model.config)
    if block is not None:
        # The saved quantization_config comes back with block_name_to_quantize=None; reloading
        # BERT then fails ("Block pattern could not be match"): write it back.
        data["quantization_config"]["block_name_to_quantize"] = block
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    pin_saved_attention(out_dir)


# ---------------------------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------------------------


def drift_logits(
    model: nn.Module,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Logits of every id list in input order, through the inference engine (float64);
    ``features``: the rows' features for a hybrid head."""
    from arena_distill.inference import predict_logits

    run = predict_logits(
        model, ids, pad_token_id=pad_id, batch_size=batch_size, progress=False, features=features
    )
    return run.logits.astype(np.float64)


def drift_metrics(
    source: np.ndarray, quantized: np.ndarray, labels: np.ndarray | None
) -> dict[str, float | int | None]:
    """How far the quantized logits are from the source's on the same rows."""
    from arena_distill.metrics import log_loss_from_logits, probs_from_logits

    diff = np.abs(quantized - source)
    out: dict[str, float | int | None] = {
        "rows": int(len(source)),
        "finite": bool(np.isfinite(quantized).all()),
        "max_abs_logit_diff": float(diff.max()) if len(diff) else 0.0,
        "mean_abs_logit_diff": float(diff.mean()) if len(diff) else 0.0,
        "relative_error": float(
            np.linalg.norm(quantized - source) / max(np.linalg.norm(source), 1e-12)
        ),
        "max_abs_prob_diff": float(
            np.abs(probs_from_logits(quantized) - probs_from_logits(source)).max()
        )
        if len(diff)
        else 0.0,
        "argmax_agreement": float(np.mean(quantized.argmax(1) == source.argmax(1)))
        if len(diff)
        else 1.0,
        "log_loss_source": None,
        "log_loss_quantized": None,
        "log_loss_delta": None,
    }
    if labels is not None and len(labels):
        ls = log_loss_from_logits(source, labels)
        lq = log_loss_from_logits(quantized, labels)
        out.update(log_loss_source=ls, log_loss_quantized=lq, log_loss_delta=lq - ls)
    return out
