"""Training losses. A loss is any callable ``(logits, batch) -> scalar tensor``.

The training loop (``arena_distill.train``) calls the loss it is given, so distillation adds its
teacher terms by passing another callable, without touching the loop.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class LossFn(Protocol):
    def __call__(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


def cross_entropy(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CE on the hard label (0 = A, 1 = B, 2 = tie), computed in fp32."""
    return F.cross_entropy(logits.float(), batch["labels"])
