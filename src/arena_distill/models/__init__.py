"""Model factories: tiny random-init stand-ins, and the configured classifiers every stage uses."""

from arena_distill.models.factory import (
    build_model,
    count_parameters,
    head_name,
    load_for_inference,
    load_lora_weights,
    load_tokenizer,
    resolve_attn_implementation,
)
from arena_distill.models.tiny import (
    TINY_FAMILIES,
    build_tiny_model,
    build_tiny_models,
    train_tokenizer,
)

__all__ = [
    "TINY_FAMILIES",
    "build_model",
    "build_tiny_model",
    "build_tiny_models",
    "count_parameters",
    "head_name",
    "load_for_inference",
    "load_lora_weights",
    "load_tokenizer",
    "resolve_attn_implementation",
    "train_tokenizer",
]
