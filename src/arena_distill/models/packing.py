"""Padding-free (packed) forward of a sequence classifier: several rows in one sequence.

``collate.pack_rows`` concatenates a micro-batch's rows into one row with ``position_ids``
restarting at 0 for each and no ``attention_mask``; transformers 5 turns the restarts into
sequence boundaries itself (``masking_utils.find_packed_sequence_indices``: a block-diagonal
causal mask for eager / sdpa / flex_attention, the varlen path for FlashAttention-2), so no
token attends across rows. :func:`packed_logits` runs the backbone once and applies the head at
each row's own last token, where the padded forward pools (``*ForSequenceClassification``:
the last non-pad token), so both give the same logits. Decoders only: BERT attends both ways
and has no packed-sequence masks.
"""

from __future__ import annotations

import torch
from torch import nn

from arena_distill.models.factory import backbone, head_module

PACKABLE = ("gemma2", "llama", "qwen2", "mistral", "gemma3_text", "qwen3")


def packed_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    last_index: torch.Tensor,
) -> torch.Tensor:
    """Logits (n, labels) of the n rows packed in ``input_ids`` (1, T); ``last_index`` (n,):
    each row's last token in the packed row."""
    config = backbone(model).config
    if config.model_type not in PACKABLE:
        raise ValueError(
            f"packing needs a decoder with packed-sequence masks ({PACKABLE}); "
            f"{config.model_type} has none: set packing=false"
        )
    if input_ids.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got shape {tuple(input_ids.shape)}")
    hidden = backbone(model)(
        input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False
    ).last_hidden_state
    _, head = head_module(model)
    return head(hidden[0, last_index.to(hidden.device)])
