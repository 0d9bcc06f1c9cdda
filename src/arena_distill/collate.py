"""Batches of token ids: padding, attention masks, labels, and the padding share they cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def bucket_length(length: int, buckets: Sequence[int] | None) -> int:
    """``length`` rounded up to the smallest bucket that holds it (``model.length_buckets``);
    unchanged without buckets or when it is longer than every bucket."""
    if not buckets:
        return int(length)
    for b in sorted(buckets):
        if b >= length:
            return int(b)
    return int(length)


def batch_buckets(model: Any) -> list[int] | None:
    """The widths ``model``'s batches are padded to (``models.factory`` sets them from
    ``model.length_buckets`` when its kernels compile per shape); None: the longest row."""
    return getattr(model, "length_buckets", None)


def pad_right(
    sequences: Sequence[Sequence[int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    buckets: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` right-padded with ``pad_token_id`` and the ``attention_mask`` (long).

    Right padding: the classifiers pool the last non-pad token, and their config's pad id says
    which token that is. The one padding routine of the project (training collator, inference
    engine). ``pad_to_multiple_of`` rounds the width up; ``buckets`` rounds it up to the
    smallest bucket (:func:`bucket_length`)."""
    longest = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        m = pad_to_multiple_of
        longest = (longest + m - 1) // m * m
    longest = bucket_length(longest, buckets)
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
    land in the same optimiser step. Extra tensor-like fields (e.g. ``teacher_logits``, a hybrid
    head's ``features``) are stacked. ``real_tokens`` / ``padded_tokens`` count what was computed, for the padding share.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    buckets: Sequence[int] | None = None  # widths to round up to (model.length_buckets)
    packing: bool = False  # one concatenated row per batch (pack_rows)
    real_tokens: int = 0
    padded_tokens: int = 0

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        flat = [e for ex in examples for e in (ex["pair"] if "pair" in ex else [ex])]
        if self.packing:
            batch = pack_rows([e["input_ids"] for e in flat], self.pad_token_id, self.buckets)
            self.real_tokens += sum(len(e["input_ids"]) for e in flat)
            self.padded_tokens += batch["input_ids"].numel()
        else:
            ids, mask = pad_right(
                [e["input_ids"] for e in flat],
                self.pad_token_id,
                self.pad_to_multiple_of,
                self.buckets,
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


def pack_rows(
    sequences: Sequence[Sequence[int]], pad_token_id: int, buckets: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Padding-free batch: every sequence concatenated into ONE row.

    ``input_ids`` and ``position_ids`` (1, T), positions restarting at 0 for each sequence, no
    ``attention_mask``: transformers reads the restarts as sequence boundaries
    (``masking_utils.find_packed_sequence_indices``) and keeps attention within each sequence,
    for every kernel (a block-diagonal causal mask for eager / sdpa / flex, varlen FlashAttention).
    ``last_index`` (n,): where each sequence's last token is, where it is pooled
    (``models.packing.packed_logits``). With ``buckets`` the row is padded up to a bucket by a
    sequence of pad tokens of its own (positions restarting at 0), never pooled."""
    lengths = [len(s) for s in sequences]
    if min(lengths) < 1:
        raise ValueError("cannot pack an empty sequence")
    total = sum(lengths)
    width = bucket_length(total, buckets)
    ids = np.full(width, int(pad_token_id), dtype=np.int64)
    pos = np.zeros(width, dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - np.asarray(lengths)
    for s, start, n in zip(sequences, starts, lengths, strict=True):
        ids[start : start + n] = np.asarray(s, dtype=np.int64)
        pos[start : start + n] = np.arange(n)
    pos[total:] = np.arange(width - total)
    return {
        "input_ids": torch.from_numpy(ids)[None],
        "position_ids": torch.from_numpy(pos)[None],
        "last_index": torch.from_numpy(ends - 1),
    }
