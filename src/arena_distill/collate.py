"""Batches of token ids: padding, attention masks, labels, and the padding share they cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Decoder-only families (``config.model_type``): attention is causal, so with right padding a
# real token attends only to the real tokens before it, and their classifiers pool the last
# non-pad token found from the input ids. The padding mask then changes nothing in the logits
# (nor in the loss and its gradients), while passing it costs sdpa its causal fast path (a
# 30% slower forward on CPU, measured by `make bench`) and flex/flash attention a mask to build.
CAUSAL_FAMILIES = ("gemma", "gemma2", "llama", "mistral", "qwen2", "qwen3")


def padding_mask_needed(model) -> bool:
    """Whether ``model`` needs the attention mask of a right-padded batch: False for the causal
    decoders of :data:`CAUSAL_FAMILIES`, True for anything else (BERT attends both ways)."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) not in CAUSAL_FAMILIES


def pad_right(
    sequences: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` right-padded with ``pad_token_id`` and the ``attention_mask`` (long).

    Right padding: the classifiers pool the last non-pad token, and their config's pad id says
    which token that is. The one padding routine of the project (training collator, inference
    engine). ``pad_to_multiple_of`` rounds the width up."""
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        m = pad_to_multiple_of
        longest = (longest + m - 1) // m * m
    ids = torch.full((len(sequences), longest), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        n = len(s)
        ids[i, :n] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, :n] = 1
    return ids, mask


@dataclass
class PreferenceCollator:
    """Pads a list of examples ``{"input_ids": list[int], "labels": int, ...}`` to one batch.

    Right padding with ``pad_token_id`` (the models pool the last non-pad token, and the pad id
    is set in their config). A training example may be a *pair* (``{"pair": [ex, ex]}``: the
    original and A/B-swapped row of the "full swap" augmentation), which is flattened so both
    land in the same optimiser step. Extra tensor-like fields (e.g. ``teacher_logits``) are
    stacked. ``real_tokens`` / ``padded_tokens`` count what was computed, for the padding share.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    real_tokens: int = 0
    padded_tokens: int = 0

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        flat = [e for ex in examples for e in (ex["pair"] if "pair" in ex else [ex])]
        ids, mask = pad_right(
            [e["input_ids"] for e in flat], self.pad_token_id, self.pad_to_multiple_of
        )
        self.real_tokens += int(mask.sum())
        self.padded_tokens += mask.numel()
        batch = {"input_ids": ids, "attention_mask": mask}
        for key in flat[0]:
            if key in ("input_ids", "pair"):
                continue
            batch[key] = torch.as_tensor([e[key] for e in flat])
        return batch

    @property
    def padding_share(self) -> float:
        """Share of computed positions that were padding (0 when nothing was collated)."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0
