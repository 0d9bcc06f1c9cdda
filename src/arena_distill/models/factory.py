"""Build the sequence classifiers every training and prediction stage works on, from a model config.

One function turns a ``configs/model/*.yaml`` mapping into a ready model: the backbone loaded as
``AutoModelForSequenceClassification`` (3 labels, pooled on the last non-pad token for decoders),
the attention implementation that keeps Gemma-2's softcapping, optional 4-bit NF4 (QLoRA
teachers), the optional 2nd-place MLP head or the hybrid head (``models.hybrid``: pooled
representation and length features), and a LoRA whose head is always fully trained
(``modules_to_save``). ``init_adapter`` starts a stage from an earlier stage's LoRA with a fresh
head, as the 1st place did after post-pretraining on UltraFeedback.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from arena_distill.features import folder_head
from arena_distill.models.hybrid import install_hybrid_head, restore_hybrid_head
from arena_distill.settings import MODEL_HEADS

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
HEAD_NAMES = ("score", "classifier")  # decoders' *ForSequenceClassification, BERT
# model.head: the HF linear head, the 2nd place's MLP, or linear over [pooled ; length features]
HEADS = MODEL_HEADS
GC_KWARGS = {"use_reentrant": False}


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_tokenizer(model_cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The model's tokenizer, padding on the right, with a pad token (EOS when it has none).

    ``padding_side`` goes to ``from_pretrained`` because setting the attribute afterwards is not
    saved with the tokenizer. Llama-3 ships no pad token; the 1st place padded with EOS, which is
    safe because the classifier pools the last non-pad token and the prompt builder appends EOS
    itself (an EOS id equal to the pad id is only ever at the end of a row).
    """
    tok = AutoTokenizer.from_pretrained(str(model_cfg["name_or_path"]), padding_side="right")
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {model_cfg['name_or_path']} has neither pad nor EOS")
        tok.pad_token = tok.eos_token
    return tok


# Model families with attention-logit softcapping, which sdpa silently drops in transformers
# 5.17 (Gemma-2's logits then differ by ~0.2): they never get sdpa while softcapping is on.
SOFTCAP_FAMILIES = ("gemma2",)
# kernels that compile per input shape: batch lengths are rounded up to model.length_buckets
COMPILED_ATTENTION = ("flex_attention",)


def attention_rule(
    family: str,
    softcapping: bool,
    capability: tuple[int, int] | None,
    installed: Collection[str] = (),
) -> str:
    """The attention kernel for a model family: a pure function of what decides it.

    ``capability``: the CUDA device's compute capability, None on a CPU; ``installed``: the
    optional kernel packages present (``flash_attn``). On sm80+ (A100, H100, H200):
    FlashAttention-2 when installed (it keeps Gemma-2's softcapping), else ``flex_attention``
    for a softcapping model (keeps the cap; 23.4k vs eager's 17.1k tokens/s on an H200) and
    ``sdpa`` for the others. On a CPU and on a T4 (sm75: no FlashAttention-2, no Triton flex
    kernel): ``eager`` while softcapping is on (the only built-in kernel that keeps it), else
    ``sdpa``. BERT: ``sdpa``."""
    if family == "bert":
        return "sdpa"
    capped = family in SOFTCAP_FAMILIES and softcapping
    if capability is not None and capability[0] >= 8:
        if "flash_attn" in installed:
            return "flash_attention_2"
        return "flex_attention" if capped else "sdpa"
    return "eager" if capped else "sdpa"


def device_capability(device: str | torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability of ``device``; None for a CPU (or without CUDA)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(dev))


def installed_kernels() -> frozenset[str]:
    """The optional attention-kernel packages importable here."""
    return frozenset(n for n in ("flash_attn",) if importlib.util.find_spec(n) is not None)


def default_attention(family: str, device: str | torch.device, softcapping: bool = True) -> str:
    """The attention kernel for a model family (``model_type``) on ``device``: the one rule,
    :func:`attention_rule` on this device and these packages."""
    return attention_rule(family, softcapping, device_capability(device), installed_kernels())


def resolve_attn_implementation(model_cfg: Mapping[str, Any], device: str | torch.device) -> str:
    """The attention kernel for ``model_cfg`` on ``device``: an explicit config value wins,
    ``auto`` follows :func:`default_attention` (sdpa allowed for Gemma-2 only with
    ``softcapping: false``)."""
    impl = str(model_cfg.get("attn_implementation") or "auto")
    if impl != "auto":
        return impl
    softcapping = model_cfg.get("softcapping") is not False
    return default_attention(model_cfg["family"], device, softcapping)


def effective_length_buckets(
    model_cfg: Mapping[str, Any], attention: str, device: str | torch.device = "cuda"
) -> list[int] | None:
    """``model.length_buckets`` sorted, when batch shapes matter (a compiling attention kernel,
    or ``torch_compile`` where it compiles: :func:`maybe_compile`); None otherwise, so eager /
    sdpa / FlashAttention pay no padding."""
    buckets = model_cfg.get("length_buckets")
    if not buckets:
        return None
    flag = model_cfg.get("torch_compile")
    compiles = flag == "force" or (bool(flag) and torch.device(device).type == "cuda")
    if attention in COMPILED_ATTENTION or compiles:
        out = sorted({int(b) for b in buckets})
        allow_recompiles(len(out))
        return out
    return None


def allow_recompiles(n_buckets: int) -> None:
    """Let dynamo compile every bucket's shape (training forward and backward, evaluation, the
    last smaller batch): its default recompile limit (8 per function) would otherwise send
    the later shapes to the slow fallback, as the H200 probe saw (../shared/gpu/README.md)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(int(getattr(cfg, name)), 4 * n_buckets))


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The classification head: ``(name, module)``, ``score`` (decoders) or ``classifier``
    (BERT); under PEFT, of the base model."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    for name in HEAD_NAMES:
        module = getattr(inner, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise ValueError(f"{type(inner).__name__} has no classification head among {HEAD_NAMES}")


def head_name(model: nn.Module) -> str:
    """Attribute name of the classification head: ``score`` (decoders) or ``classifier`` (BERT)."""
    return head_module(model)[0]


def _mlp_head(old: nn.Module, num_labels: int, dropout: float) -> nn.Sequential:
    """2nd-place head: Dropout-Linear(h, h/2)-Dropout-GELU-Linear(h/2, labels), on old's device."""
    h = old.in_features
    weight = old.weight
    head = nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(h, h // 2),
        nn.Dropout(dropout),
        nn.GELU(),
        nn.Linear(h // 2, num_labels),
    )
    return head.to(device=weight.device, dtype=weight.dtype)


def _quantization_config(model_cfg: Mapping[str, Any]) -> BitsAndBytesConfig | None:
    q = model_cfg.get("quantization")
    if not q:
        return None
    if q.get("type") != "nf4":
        raise ValueError(f"unsupported quantization {q.get('type')!r}; expected nf4")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=bool(q.get("double_quant", True)),
        bnb_4bit_compute_dtype=_dtype(q.get("compute_dtype", "bfloat16")),
        # ZeRO-3 / FSDP can only shard 4-bit weights stored in a float dtype
        bnb_4bit_quant_storage=_dtype(q["quant_storage"])
        if q.get("quant_storage")
        else torch.uint8,
    )


def load_base_model(
    model_cfg: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    device: str | torch.device = "cpu",
    architecture: PreTrainedConfig | None = None,
) -> PreTrainedModel:
    """The backbone as a classifier: dtype, attention, softcapping, NF4 and head from the config.

    ``architecture`` (a Hugging Face config): random-init weights of that shape instead of the
    checkpoint at ``name_or_path``, built on ``device`` (benchmarks of the full-size shapes,
    ``scripts/bench_gpu.py``); the pad id is then the architecture's when ``tokenizer`` is None.
    """
    kwargs: dict[str, Any] = {
        "num_labels": int(model_cfg.get("num_labels", 3)),
        "dtype": _dtype(model_cfg.get("dtype", "float32")),
        "attn_implementation": resolve_attn_implementation(model_cfg, device),
    }
    if model_cfg["family"] == "gemma2" and model_cfg.get("softcapping") is False:
        # 3rd place: softcapping off (+0.002). Config kwargs override config.json on load.
        kwargs.update(attn_logit_softcapping=None, final_logit_softcapping=None)
    overrides = dict(model_cfg.get("config_overrides") or {})
    clash = sorted(set(overrides) & set(kwargs))
    if clash:
        raise ValueError(f"config_overrides may not set {clash}: they have their own model keys")
    # e.g. {num_hidden_layers: 3}: a pretrained encoder cut to its first 3 layers (a student);
    # from_pretrained loads the kept layers' weights and ignores the others
    kwargs.update(overrides)
    quant = _quantization_config(model_cfg)
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": str(device)})
    if architecture is not None:
        model = _random_init(architecture, kwargs, device)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_cfg["name_or_path"]), **kwargs
        )
    if quant is None:
        model.to(device)
    # read by the engines (collate.batch_buckets): the widths batches are padded to
    model.length_buckets = effective_length_buckets(
        model_cfg, kwargs["attn_implementation"], device
    )
    if model_cfg.get("liger_kernel"):
        apply_liger_kernel(model, device)
    # Without pad_token_id the classifier cannot find the last real token of a padded batch.
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    set_head(model, model_cfg, None if architecture is not None else model_cfg["name_or_path"])
    return model


def set_head(model: PreTrainedModel, model_cfg: Mapping[str, Any], folder: Any = None) -> None:
    """The head of ``model_cfg`` on a freshly loaded classifier (``folder``: where it was
    loaded from). A folder recording a hybrid head (a merged or quantized model) gets it back
    with its saved tensors (``models.hybrid.restore_hybrid_head``), whatever the config says
    but ``mlp``; otherwise ``mlp`` and ``hybrid`` replace the linear head by a fresh one. The
    HF forward calls ``self.score(hidden)`` / ``self.classifier(pooled)``: a module under the
    same attribute name keeps that call working."""
    head = model_cfg.get("head", "linear")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    name = head_name(model)
    saved = folder is not None and folder_head(str(folder)) is not None
    if saved:
        if head == "mlp":
            raise ValueError(
                f"{folder} holds a hybrid head but the model config says head=mlp; "
                "set model.head=hybrid (or linear: the folder's head is used)"
            )
        restore_hybrid_head(model, folder, name)
        if head != "hybrid":
            log.info("%s: the folder's hybrid head is used (model.head=%s)", folder, head)
    elif head == "mlp":
        p = float(model_cfg.get("head_dropout", 0.1))
        num_labels = int(model_cfg.get("num_labels", 3))
        setattr(model, name, _mlp_head(getattr(model, name), num_labels, p))
    elif head == "hybrid":
        install_hybrid_head(model, name)


def _random_init(
    architecture: PreTrainedConfig, kwargs: Mapping[str, Any], device: str | torch.device
) -> PreTrainedModel:
    """A random-init classifier of ``architecture`` with the load kwargs of
    :func:`load_base_model` (config keys set on a copy; dtype and attention passed on), its
    weights created directly on ``device``.

    Quantized (``quantization_config``: NF4): bitsandbytes quantizes weights as they load, so
    the random weights are written to a temporary folder (safetensors, in the compute dtype)
    and loaded back through ``from_pretrained`` with the same kwargs as a real checkpoint:
    the QLoRA path the teachers take, at the cost of one write and read of the weights."""
    passed = ("dtype", "attn_implementation", "quantization_config", "device_map")
    config = copy.deepcopy(architecture)
    for key, value in kwargs.items():
        if key not in passed:
            setattr(config, key, value)
    quant = kwargs.get("quantization_config")
    dtype = quant.bnb_4bit_compute_dtype if quant is not None else kwargs["dtype"]
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(
            config, dtype=dtype, attn_implementation=kwargs["attn_implementation"]
        )
    if quant is None:
        return model
    with tempfile.TemporaryDirectory(prefix="random-nf4-") as tmp:
        model.save_pretrained(tmp)
        del model
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return AutoModelForSequenceClassification.from_pretrained(
            tmp, **{k: v for k, v in kwargs.items() if k in passed}
        )


def _lora_config(model_cfg: Mapping[str, Any], head: str) -> LoraConfig:
    lora = model_cfg["lora"]
    targets = lora["target_modules"]
    layers = lora.get("layers_to_transform")
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=targets if isinstance(targets, str) else list(targets),
        # all-linear would otherwise also put LoRA on the Linear layers of an MLP head.
        exclude_modules=rf".*\b{head}\b.*",
        modules_to_save=[head],
        # only these layers get LoRA (null: all); the backward pass stops below the lowest one
        layers_to_transform=list(layers) if layers is not None else None,
    )


def is_head_key(key: str, head: str) -> bool:
    """Whether a parameter/state-dict key belongs to the head module named ``head``."""
    return head in key.split(".")


def _is_lora_key(key: str, head: str) -> bool:
    return "lora_" in key and not is_head_key(key, head)


def load_lora_weights(model: PeftModel, adapter_dir: str | Path) -> int:
    """Copy the LoRA matrices of a saved adapter into ``model``, dropping its head; the count.

    The 1st place started every stage from the post-pretraining adapter but with a fresh
    ``score``: only ``lora_*`` tensors are taken. Every LoRA tensor of ``model`` must be found
    in the file with the same shape; a different rank, alpha or set of target modules is refused
    with the names involved rather than silently leaving some matrices at their fresh init.
    """
    adapter_dir = Path(adapter_dir)
    ours = model.peft_config["default"]
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    mine = {"r": ours.r, "lora_alpha": ours.lora_alpha, "target_modules": ours.target_modules}
    for key, value in mine.items():
        theirs = saved.get(key)
        if key == "target_modules":
            value = {value} if isinstance(value, str) else set(value)
            theirs = {theirs} if isinstance(theirs, str) else set(theirs or ())
        if value != theirs:
            raise ValueError(
                f"init adapter {adapter_dir}: {key} is {theirs}, the model has {value}"
            )
    head = head_name(model)
    current = get_peft_model_state_dict(model)
    expected = {k: v.shape for k, v in current.items() if _is_lora_key(k, head)}
    weights = {
        k: v
        for k, v in load_file(adapter_dir / "adapter_model.safetensors").items()
        if _is_lora_key(k, head)
    }
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & weights.keys() if weights[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"init adapter {adapter_dir} does not fit the model: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"wrong shape {wrong[:5]} ({len(wrong)})"
        )
    # set_peft_model_state_dict also wants the head (modules_to_save): give it its own fresh one.
    result = set_peft_model_state_dict(model, {**current, **weights})
    not_loaded = [k for k in result.unexpected_keys if "lora_" in k]
    if not_loaded:
        raise ValueError(f"init adapter {adapter_dir}: tensors not loaded: {not_loaded[:5]}")
    return len(weights)


def build_model(
    model_cfg: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    train: bool = True,
    init_adapter: str | Path | None = None,
    architecture: PreTrainedConfig | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
    """The model of ``model_cfg`` and its tokenizer, ready to train (``train``) or evaluate.

    ``architecture``: random-init weights of that Hugging Face config instead of the checkpoint
    (no tokenizer is loaded: None is returned for it; see :func:`load_base_model`).

    Training with a ``lora`` section gives a ``PeftModel`` whose trainable parameters are the
    LoRA matrices and the whole head; without one, full fine-tuning (2nd place). The model is
    returned in train mode: besides dropout, this matters for bitsandbytes on CPU, whose 4-bit
    layers repack their weights for good on any forward in eval mode without input grads, after
    which LoRA gradients are wrong (``from_pretrained`` returns eval mode).
    """
    tokenizer = load_tokenizer(model_cfg) if architecture is None else None
    model = load_base_model(model_cfg, tokenizer, device=device, architecture=architecture)
    if not train:
        if init_adapter is not None:
            raise ValueError("init_adapter is for training; use load_for_inference to evaluate")
        return model.eval(), tokenizer
    quantized = model_cfg.get("quantization") is not None
    # auto: decided when training starts, from the batch and the device's memory (train.fit)
    use_gc = model_cfg.get("gradient_checkpointing", False) is True
    if quantized:
        if not model_cfg.get("lora"):
            raise ValueError("a 4-bit model can only be trained with LoRA (QLoRA)")
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=use_gc, gradient_checkpointing_kwargs=GC_KWARGS
        )
    elif use_gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GC_KWARGS)
    if model_cfg.get("lora"):
        model = get_peft_model(model, _lora_config(model_cfg, head_name(model)))
        if init_adapter is not None:
            n = load_lora_weights(model, init_adapter)
            log.info("initialised %d LoRA tensors from %s (head left fresh)", n, init_adapter)
    elif init_adapter is not None:
        raise ValueError("init_adapter needs a lora section in the model config")
    trainable, total = count_parameters(model)
    log.info("%s: %d trainable of %d parameters", model_cfg.get("name"), trainable, total)
    maybe_compile(model, model_cfg, device)
    return model.train(), tokenizer


def backbone(model: nn.Module) -> nn.Module:
    """The transformer under the classification head (``model.model``, ``bert``); under PEFT,
    of the base model."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(inner, inner.base_model_prefix)


def maybe_compile(model: nn.Module, model_cfg: Mapping[str, Any], device) -> bool:
    """``model.torch_compile``: ``torch.compile`` the backbone in place (``Module.compile``:
    parameter names and state dicts unchanged; the head and the pooling stay eager). ``true``
    compiles on CUDA only (on a CPU the compile time is not won back: it logs and skips);
    ``force`` compiles on any device. Returns whether it compiled."""
    flag = model_cfg.get("torch_compile", False)
    if not flag:
        return False
    if torch.device(device).type != "cuda" and flag != "force":
        log.warning(
            "model.torch_compile=true is skipped on %s (torch_compile=force runs it)", device
        )
        return False
    backbone(model).compile()
    log.info("torch.compile: backbone of %s compiled on first use", model_cfg.get("name"))
    return True


def apply_liger_kernel(model: nn.Module, device: str | torch.device) -> None:
    """``model.liger_kernel``: Liger's Triton kernels (RMSNorm, RoPE, gated MLP) patched into the
    model's modules, before LoRA wraps them. CUDA only, and the optional ``liger-kernel``
    package (``pip install arena-distill[gpu]``): anything else is a clear error."""
    if torch.device(device).type != "cuda":
        raise RuntimeError(
            f"model.liger_kernel needs a CUDA device (Triton kernels); this model is on {device}: "
            "set model.liger_kernel=false"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise RuntimeError("model.liger_kernel needs the liger-kernel package (extra gpu)")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    # classification: no language-model head, so no fused cross-entropy
    _apply_liger_kernel_to_instance(
        model=model, cross_entropy=False, fused_linear_cross_entropy=False
    )
    log.info("liger kernels applied to %s", type(model).__name__)


def load_for_inference(
    model_cfg: Mapping[str, Any],
    adapter_dir: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A trained model in eval mode: the base plus the adapter in ``adapter_dir`` (if any).

    The saved head comes back through the adapter's ``modules_to_save``; the base must be built
    with the same config (an MLP or hybrid head must exist before the adapter's weights can
    fill it). Without ``adapter_dir`` the folder of ``name_or_path`` is the whole model (merged
    or full; a hybrid head it records is restored with its tensors).
    """
    model, tokenizer = build_model(model_cfg, device=device, train=False)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    maybe_compile(model, model_cfg, device)
    return model.eval(), tokenizer


def load_split(model_cfg: Mapping[str, Any], device_map: str = "auto") -> tuple[nn.Module, Any]:
    """A full model folder as ONE copy spread over the visible devices (accelerate's
    ``device_map``: layers placed on GPU 0, then GPU 1, ...; the CPU alone without CUDA), with
    the attention rule of :func:`default_attention`, in eval mode."""
    tokenizer = load_tokenizer(model_cfg)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_cfg["name_or_path"]),
        dtype=_dtype(model_cfg.get("dtype", "float32")),
        attn_implementation=resolve_attn_implementation(model_cfg, device),
        device_map=device_map,
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    restore_hybrid_head(model, model_cfg["name_or_path"], head_name(model))
    return model.eval(), tokenizer


def pin_saved_attention(folder: str | Path) -> None:
    """Write the attention rule into a saved softcapping model's ``config.json``.

    transformers 5 does not serialise the attention choice, and a plain ``from_pretrained``
    of Gemma-2 with sdpa silently drops logit softcapping (STACK.md); the key makes a reload
    without arguments pick ``default_attention(model_type, "cpu")`` (eager). Other model types
    are left as they are."""
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text())
    model_type = data.get("model_type")
    if model_type in SOFTCAP_FAMILIES:
        data["attn_implementation"] = default_attention(model_type, "cpu")
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit tensor counts its unpacked weights."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2 * p.element_size()  # two 4-bit values per byte of storage
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
