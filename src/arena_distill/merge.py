"""Average K fold LoRA adapters and fold the result into the base weights.

The 1st place trained one LoRA per fold from the same init (same seed, same post-pretrain
adapter), then took the element-wise mean of every tensor of the K adapters (``lora_A`` and
``lora_B`` separately, and the ``score`` head), merged the LoRA into the weights and quantized.
peft's ``add_weighted_adapter`` refuses sequence-classification adapters (the head is a
``modules_to_save``), so the merge works here directly on the saved adapter tensors:

- ``ab_mean`` (1st place): ``A = sum_k w_k A_k``, ``B = sum_k w_k B_k``, ``dW = B @ A * scale``.
  Not the average of the folds' updates (``sum_k w_k B_k A_k``), but again a rank-r adapter,
  which is also written as a peft adapter folder.
- ``delta_mean``: the exact average ``dW = sum_k w_k B_k @ A_k * scale``, kept as the rank-K·r
  factor pair ``B = [w_1 B_1 | ... | w_K B_K]``, ``A = [A_1; ...; A_K]``.

In both the head is ``sum_k w_k H_k``; ``scale = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
Anything that cannot be merged exactly this way (DoRA, LoRA biases, rank/alpha patterns,
embedding or convolution LoRA, fan-in-fan-out layers, ...) is refused rather than merged wrong:
peft itself has open bugs there.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

METHODS = ("ab_mean", "delta_mean")
# heads a merged full folder carries: linear in their parameters (the mean of the fold heads is
# the mean of their outputs) and rebuilt on load (the hybrid head from its config.json record)
MERGEABLE_HEADS = ("linear", "hybrid")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix in a saved adapter
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


class MergeError(ValueError):
    """Adapters that cannot be merged (exactly): incompatible, or a LoRA variant not supported."""


def _targets(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return sorted(value)
    return value


@dataclass(frozen=True)
class LoraAdapter:
    """One saved peft LoRA adapter: its config and tensors (keys as in the file)."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]

    @property
    def r(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config["lora_alpha"])

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def scale(self) -> float:
        return lora_scale(self.r, self.alpha, self.use_rslora)

    def modules(self) -> list[str]:
        """Names (base-model module paths) of the modules carrying a LoRA, sorted."""
        return sorted(
            _strip(k[: -len(LORA_SUFFIXES[0])])
            for k in self.tensors
            if k.endswith(LORA_SUFFIXES[0])
        )

    def head_keys(self) -> list[str]:
        """File keys of the fully trained (``modules_to_save``) tensors, e.g. the score head."""
        return sorted(k for k in self.tensors if "lora_" not in k)


def lora_scale(r: int, alpha: float, use_rslora: bool = False) -> float:
    """peft's LoRA scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def _strip(key: str) -> str:
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def read_adapter(path: str | Path) -> LoraAdapter:
    """Read a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``),
    refusing what :func:`merge_adapters` could not merge exactly."""
    path = Path(path)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / name).is_file():
            raise MergeError(f"{path} is not a peft adapter folder: no {name}")
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    adapter = LoraAdapter(path, config, load_file(path / ADAPTER_WEIGHTS))
    check_mergeable(adapter)
    return adapter


def check_mergeable(adapter: LoraAdapter) -> None:
    """Refuse adapters whose merge by tensor averaging would not be exact or not be what it seems."""
    cfg, where = adapter.config, adapter.path
    if cfg.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{where}: peft_type {cfg.get('peft_type')!r}; only LORA is merged")
    refused = {
        "use_dora": "DoRA (the magnitude vector makes the update non-linear in A, B)",
        "lora_bias": "lora_bias (peft merges it wrongly; see STACK.md)",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D layers)",
        "use_qalora": "QA-LoRA",
        "use_bdlora": "BD-LoRA",
        "layer_replication": "layer_replication",
        "trainable_token_indices": "trainable_token_indices",
        "target_parameters": "target_parameters (LoRA on nn.Parameter)",
        "rank_pattern": "rank_pattern (per-module ranks)",
        "alpha_pattern": "alpha_pattern (per-module alphas)",
    }
    for key, what in refused.items():
        if cfg.get(key):
            raise MergeError(f"{where}: {key}={cfg[key]!r}: {what} is not supported by the merge")
    if cfg.get("bias", "none") != "none":
        raise MergeError(
            f"{where}: bias={cfg['bias']!r} trains base-layer biases; not supported by the merge"
        )
    if int(cfg.get("r", 0)) <= 0:
        raise MergeError(f"{where}: r={cfg.get('r')!r}")
    for key, t in adapter.tensors.items():
        if "lora_" in key and not key.endswith(LORA_SUFFIXES):
            raise MergeError(
                f"{where}: tensor {key}: only lora_A/lora_B weights of Linear layers are merged "
                "(embedding/conv LoRA, DoRA magnitudes and LoRA biases are not)"
            )
        if not t.is_floating_point():
            raise MergeError(f"{where}: tensor {key} has dtype {t.dtype}")
    modules = adapter.modules()
    for m in modules:
        a = adapter.tensors.get(f"{PREFIX}{m}.lora_A.weight")
        b = adapter.tensors.get(f"{PREFIX}{m}.lora_B.weight")
        if a is None or b is None:
            raise MergeError(f"{where}: module {m} lacks its lora_A or lora_B weight")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != adapter.r or b.shape[1] != adapter.r:
            raise MergeError(
                f"{where}: module {m}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} "
                f"do not fit rank r={adapter.r}"
            )
    n_b = sum(k.endswith(LORA_SUFFIXES[1]) for k in adapter.tensors)
    if not modules or n_b != len(modules):
        raise MergeError(f"{where}: {len(modules)} lora_A and {n_b} lora_B tensors")


COMPARED_CONFIG = (
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "modules_to_save",
    "task_type",
)


def check_compatible(adapters: Sequence[LoraAdapter]) -> None:
    """All adapters must have the same rank, alpha, rsLoRA, targets, keys, shapes and dtypes."""
    if not adapters:
        raise MergeError("no adapters to merge")
    ref = adapters[0]
    for other in adapters[1:]:
        for key in COMPARED_CONFIG:
            mine, theirs = _targets(ref.config.get(key)), _targets(other.config.get(key))
            if key == "modules_to_save" and isinstance(mine, list):
                mine, theirs = sorted(set(mine)), sorted(set(theirs or ()))
            if mine != theirs:
                raise MergeError(
                    f"{other.path}: {key} is {theirs!r}, but {ref.path} has {mine!r}; "
                    "fold adapters must share one LoRA config"
                )
        missing = sorted(ref.tensors.keys() - other.tensors.keys())
        extra = sorted(other.tensors.keys() - ref.tensors.keys())
        if missing or extra:
            raise MergeError(
                f"{other.path}: tensor keys differ from {ref.path}: missing {missing[:3]} "
                f"({len(missing)}), unexpected {extra[:3]} ({len(extra)})"
            )
        for key, t in ref.tensors.items():
            o = other.tensors[key]
            if o.shape != t.shape or o.dtype != t.dtype:
                raise MergeError(
                    f"{other.path}: tensor {key} is {tuple(o.shape)} {o.dtype}, "
                    f"but {tuple(t.shape)} {t.dtype} in {ref.path}"
                )


def fold_weights(weights: Sequence[float] | None, k: int) -> list[float]:
    """Per-fold weights: uniform by default; else ``k`` non-negative numbers summing to 1."""
    if weights is None:
        return [1.0 / k] * k
    w = [float(x) for x in weights]
    if len(w) != k:
        raise MergeError(f"{len(w)} weights for {k} adapters")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise MergeError(f"weights must be finite and non-negative, got {w}")
    if abs(sum(w) - 1.0) > 1e-6:
        raise MergeError(f"weights must sum to 1, got {w} (sum {sum(w)})")
    return w


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_k w_k t_k`` in float64, cast back to the tensors' dtype."""
    out = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for t, w in zip(tensors, weights, strict=True):
        out += w * t.to(torch.float64)
    return out.to(tensors[0].dtype)


@dataclass
class MergedAdapter:
    """The merge of K adapters: one factor pair per module (``dW = B @ A * scale``) and the head.

    ``factors[m] = (B, A)`` with ``m`` the module path in the base model (``model.layers.0.
    self_attn.q_proj``); rank r for ``ab_mean``, K·r for ``delta_mean``. ``head`` maps base
    state-dict keys (``score.weight``) to the averaged tensors. ``lora`` (``ab_mean`` only) holds
    the averaged tensors under the adapter file's own keys, ready to save as an adapter."""

    method: str
    weights: list[float]
    scale: float
    config: dict
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    head: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor] | None = None
    sources: list[str] = field(default_factory=list)

    def delta(self, module: str) -> torch.Tensor:
        """``dW`` of ``module`` in float32 (out_features x in_features)."""
        b, a = self.factors[module]
        return (b.float() @ a.float()) * self.scale


def merge_adapters(
    adapters: Sequence[LoraAdapter | str | Path],
    method: str = "ab_mean",
    weights: Sequence[float] | None = None,
) -> MergedAdapter:
    """Merge fold adapters (objects or folders) with ``method`` and per-fold ``weights``."""
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; expected one of {METHODS}")
    ads = [a if isinstance(a, LoraAdapter) else read_adapter(a) for a in adapters]
    for a in ads:
        check_mergeable(a)
    check_compatible(ads)
    w = fold_weights(weights, len(ads))
    ref = ads[0]
    head = {_strip(k): _weighted_sum([a.tensors[k] for a in ads], w) for k in ref.head_keys()}
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    lora: dict[str, torch.Tensor] | None = {} if method == "ab_mean" else None
    for m in ref.modules():
        ka, kb = f"{PREFIX}{m}.lora_A.weight", f"{PREFIX}{m}.lora_B.weight"
        if method == "ab_mean":
            a = _weighted_sum([x.tensors[ka] for x in ads], w)
            b = _weighted_sum([x.tensors[kb] for x in ads], w)
            lora[ka], lora[kb] = a, b
        else:
            a = torch.cat([x.tensors[ka].float() for x in ads], dim=0)
            b = torch.cat([wk * x.tensors[kb].float() for x, wk in zip(ads, w, strict=True)], dim=1)
        factors[m] = (b, a)
    if lora is not None:
        lora.update({k: head[_strip(k)] for k in ref.head_keys()})
    return MergedAdapter(
        method=method,
        weights=w,
        scale=ref.scale,
        config=dict(ref.config),
        factors=factors,
        head=head,
        lora=lora,
        sources=[str(a.path) for a in ads],
    )


def save_adapter(merged: MergedAdapter, out_dir: str | Path) -> Path:
    """Write an ``ab_mean`` merge as a peft adapter folder (same config as the folds)."""
    if merged.lora is None:
        raise MergeError(
            f"a {merged.method} merge is not a rank-r adapter; only ab_mean is saved as one"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.lora.items()}, out / ADAPTER_WEIGHTS)
    (out / ADAPTER_CONFIG).write_text(json.dumps(merged.config, indent=2, sort_keys=True) + "\n")
    return out


def fold_into_model(model: nn.Module, merged: MergedAdapter) -> dict[str, dict[str, float]]:
    """Add every ``dW`` to its Linear weight (in float32, cast back) and set the averaged head,
    in place. Returns per-module norms: ``delta`` (‖dW‖_F), ``weight`` (‖W‖_F) and ``rel``."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    stats: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name in merged.factors:
            layer = modules.get(name)
            if layer is None:
                raise MergeError(f"the base model has no module {name!r} (wrong model config?)")
            if type(layer) is not nn.Linear:
                raise MergeError(
                    f"module {name} is a {type(layer).__name__}; only plain nn.Linear weights "
                    "are merged (load the base unquantized)"
                )
            delta = merged.delta(name)
            if tuple(delta.shape) != tuple(layer.weight.shape):
                raise MergeError(
                    f"module {name}: LoRA update {tuple(delta.shape)} does not fit the base "
                    f"weight {tuple(layer.weight.shape)}"
                )
            w32 = layer.weight.detach().float()
            layer.weight.copy_((w32 + delta.to(w32.device)).to(layer.weight.dtype))
            dn, wn = float(delta.norm()), float(w32.norm())
            stats[name] = {"delta": dn, "weight": wn, "rel": dn / wn if wn else float("inf")}
        for key, value in merged.head.items():
            p = params.get(key)
            if p is None:
                raise MergeError(
                    f"the base model has no parameter {key!r} for the averaged head "
                    f"(has {sorted(k for k in params if 'score' in k or 'classifier' in k)})"
                )
            if p.shape != value.shape:
                raise MergeError(f"head {key}: {tuple(value.shape)} vs base {tuple(p.shape)}")
            p.copy_(value.to(device=p.device, dtype=p.dtype))
    return stats


def _plain(model_cfg: Mapping[str, Any]) -> dict:
    if isinstance(model_cfg, DictConfig):
        return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    return dict(model_cfg)


def merge_into_base(
    model_cfg: Mapping[str, Any],
    merged: MergedAdapter,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Load the base of ``model_cfg`` (unquantized, no adapter), fold ``merged`` into it and save
    a full Hugging Face model folder (safetensors, tokenizer) to ``out_dir``; the per-module
    norms of :func:`fold_into_model`.

    A 4-bit (QLoRA) config is loaded in its compute dtype instead: the fold adapters were
    trained on the dequantized NF4 weights, so the result is close to, not equal to, the
    QLoRA model. The saved ``config.json`` keeps ``num_labels``, ``pad_token_id`` and, for
    Gemma-2, ``attn_implementation: eager`` (transformers 5 does not save it). A hybrid head
    (``model.head: hybrid``) is averaged like the linear one (it is linear in its parameters:
    ``weight``, ``bias``, ``feature_weight``) and recorded in ``config.json``, so the project's
    loaders rebuild it (``models.hybrid.restore_hybrid_head``)."""
    from arena_distill.models.factory import load_for_inference, pin_saved_attention

    cfg = _plain(model_cfg)
    if cfg.get("head", "linear") not in MERGEABLE_HEADS:
        raise MergeError(
            f"head {cfg.get('head')!r}: a full model folder can only carry the linear or hybrid "
            "head (AutoModelForSequenceClassification would not rebuild an MLP head, and the "
            "mean of MLP heads is not the mean of their outputs)"
        )
    if cfg.get("quantization"):
        cfg["dtype"] = cfg["quantization"].get("compute_dtype", "bfloat16")
        cfg["quantization"] = None
        log.warning("%s: merging into the unquantized base in %s", cfg.get("name"), cfg["dtype"])
    model, tokenizer = load_for_inference(cfg, device=device)
    stats = fold_into_model(model, merged)
    out = Path(out_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    pin_saved_attention(out)
    return stats


def merge_summary(
    merged: MergedAdapter,
    stats: Mapping[str, Mapping[str, float]],
    adapters: Sequence[LoraAdapter] | None = None,
) -> dict:
    """Numbers worth keeping about a merge (``merge.json``): method, weights, LoRA config,
    per-module norms and, given the fold adapters, how far ``ab_mean`` is from the exact mean of
    the updates (``ab_vs_exact``: ‖dW_ab − dW_mean‖ / ‖dW_mean‖) and how much the folds differ."""
    out: dict[str, Any] = {
        "method": merged.method,
        "weights": merged.weights,
        "sources": merged.sources,
        "r": merged.config.get("r"),
        "lora_alpha": merged.config.get("lora_alpha"),
        "use_rslora": bool(merged.config.get("use_rslora", False)),
        "scale": merged.scale,
        "target_modules": merged.config.get("target_modules"),
        "modules": {m: dict(s) for m, s in stats.items()},
    }
    rels = [s["rel"] for s in stats.values()]
    out["delta_rel_norm_mean"] = sum(rels) / len(rels) if rels else None
    if adapters:
        exact = (
            merged
            if merged.method == "delta_mean"
            else merge_adapters(adapters, "delta_mean", merged.weights)
        )
        gaps, spread = [], []
        for m in merged.factors:
            d_exact = exact.delta(m)
            n = float(d_exact.norm())
            if merged.method == "ab_mean":
                g = float((merged.delta(m) - d_exact).norm()) / n if n else 0.0
                out["modules"][m]["ab_vs_exact"] = g
                gaps.append(g)
            ka, kb = f"{PREFIX}{m}.lora_A.weight", f"{PREFIX}{m}.lora_B.weight"
            folds = [(a.tensors[kb].float() @ a.tensors[ka].float()) * a.scale for a in adapters]
            s = sum(float((d - d_exact).norm()) for d in folds) / len(folds)
            out["modules"][m]["fold_spread"] = s / n if n else 0.0
            spread.append(s / n if n else 0.0)
        if gaps:
            out["ab_vs_exact_mean"] = sum(gaps) / len(gaps)
        out["fold_spread_mean"] = sum(spread) / len(spread) if spread else None
        heads = {}
        for fk in adapters[0].head_keys():
            v = merged.head[_strip(fk)].float()
            d = sum(float((a.tensors[fk].float() - v).norm()) for a in adapters) / len(adapters)
            heads[_strip(fk)] = d / max(float(v.norm()), 1e-12)
        out["head_fold_spread"] = heads
    return out
