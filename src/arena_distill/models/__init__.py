"""Model factories: tiny random-init stand-ins for Gemma-2, Llama and Qwen2 classifiers."""

from arena_distill.models.tiny import (
    TINY_FAMILIES,
    build_tiny_model,
    build_tiny_models,
    train_tokenizer,
)

__all__ = ["TINY_FAMILIES", "build_tiny_model", "build_tiny_models", "train_tokenizer"]
