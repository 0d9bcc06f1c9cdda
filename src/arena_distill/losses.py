"""Training losses. A loss is any callable ``(logits, batch) -> scalar tensor``.

The training loop (``arena_distill.train``) calls the loss it is given, so distillation adds its
teacher terms by passing another callable, without touching the loop.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

# the label of a pseudo-labelled training row: it has none (no CE term; F.cross_entropy's default)
IGNORE_LABEL = -100


class LossFn(Protocol):
    def __call__(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


def cross_entropy(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """CE on the hard label (0 = A, 1 = B, 2 = tie), computed in fp32."""
    return F.cross_entropy(logits.float(), batch["labels"])


class DistillLoss:
    """Cross-entropy on the hard label plus, for each teacher, KL and cosine terms.

    ``batch["teacher_logits"]`` is (batch, n_teachers, 3): each teacher's raw logits on the
    same input the student sees (a swapped row comes with the teacher's swapped logits). With
    ``p_t = softmax(t / T)`` and ``s_T = s / T``:

    - ``KL = T² · KLDiv(batchmean)(log_softmax(s_T), p_t)`` (the T² keeps gradient scale
      independent of T; at the recipe's T = 1 it is the 1st place's term exactly);
    - ``Cos = CosineEmbeddingLoss(p_t, softmax(s_T), 1) = mean(1 − cos(p_t, p_s))``.

    ``loss = (w_ce·CE + Σ_teachers (w_kl·KL + w_cos·Cos)) / norm`` with ``norm`` the sum of the
    weights when ``normalise`` (the 1st place: ``(CE + KL₁ + Cos₁ + KL₂ + Cos₂) / 5``), else 1.

    Pseudo-labelled rows (``batch["pseudo"]`` = 1 for them, 0 for labelled rows; their label is
    ``IGNORE_LABEL``) have no CE term: per row, ``ℓ_i = (1 − π_i)·w_ce·CE_i + (1 − π_i +
    π_i·pseudo_weight)·Σ_teachers (w_kl·KL_i + w_cos·Cos_i)`` and ``loss = mean_i ℓ_i / norm``.
    Without a ``pseudo`` field the batch is all labelled and the loss is the one above.
    """

    def __init__(
        self,
        n_teachers: int,
        *,
        temperature: float = 1.0,
        ce: float = 1.0,
        kl: float = 1.0,
        cos: float = 1.0,
        normalise: bool = True,
        pseudo_weight: float = 1.0,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.n_teachers = n_teachers
        self.temperature = temperature
        self.ce, self.kl, self.cos = ce, kl, cos
        self.pseudo_weight = pseudo_weight
        total = ce + n_teachers * (kl + cos)
        if total <= 0:
            raise ValueError("the loss weights sum to 0: nothing to train on")
        self.norm = total if normalise else 1.0

    def terms(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Every unweighted term (``ce``, ``kl_<i>``, ``cos_<i>``), for logging and tests."""
        s = logits.float()
        out = {"ce": F.cross_entropy(s, batch["labels"])}
        teacher = batch["teacher_logits"].float()
        if teacher.shape[1:] != (self.n_teachers, s.shape[-1]):
            raise ValueError(
                f"teacher_logits has shape {tuple(teacher.shape)}, expected "
                f"(batch, {self.n_teachers}, {s.shape[-1]})"
            )
        t_ = self.temperature
        log_p_s = F.log_softmax(s / t_, dim=-1)
        for i in range(self.n_teachers):
            p_t = F.softmax(teacher[:, i] / t_, dim=-1)
            out[f"kl_{i}"] = F.kl_div(log_p_s, p_t, reduction="batchmean") * t_**2
            out[f"cos_{i}"] = (1 - F.cosine_similarity(p_t, log_p_s.exp(), dim=-1)).mean()
        return out

    def row_terms(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The terms of :meth:`terms` per row (shape ``(batch,)``); their batch means are
        :meth:`terms`' values. A row labelled ``IGNORE_LABEL`` has ``ce`` 0."""
        s = logits.float()
        teacher = batch["teacher_logits"].float()
        if teacher.shape[1:] != (self.n_teachers, s.shape[-1]):
            raise ValueError(
                f"teacher_logits has shape {tuple(teacher.shape)}, expected "
                f"(batch, {self.n_teachers}, {s.shape[-1]})"
            )
        out = {
            "ce": F.cross_entropy(s, batch["labels"], ignore_index=IGNORE_LABEL, reduction="none")
        }
        t_ = self.temperature
        log_p_s = F.log_softmax(s / t_, dim=-1)
        for i in range(self.n_teachers):
            p_t = F.softmax(teacher[:, i] / t_, dim=-1)
            out[f"kl_{i}"] = F.kl_div(log_p_s, p_t, reduction="none").sum(-1) * t_**2
            out[f"cos_{i}"] = 1 - F.cosine_similarity(p_t, log_p_s.exp(), dim=-1)
        return out

    def with_pseudo(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of a batch that may hold pseudo-labelled rows (``batch["pseudo"]``)."""
        terms = self.row_terms(logits, batch)
        pseudo = batch["pseudo"].to(terms["ce"].dtype)
        labelled = 1 - pseudo
        teacher = torch.zeros_like(terms["ce"])
        for i in range(self.n_teachers):
            teacher = teacher + self.kl * terms[f"kl_{i}"] + self.cos * terms[f"cos_{i}"]
        ce = torch.where(labelled > 0, terms["ce"], torch.zeros_like(terms["ce"]))
        rows = labelled * self.ce * ce + (labelled + pseudo * self.pseudo_weight) * teacher
        return rows.mean() / self.norm

    def __call__(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "pseudo" in batch:
            return self.with_pseudo(logits, batch)
        terms = self.terms(logits, batch)
        loss = self.ce * terms["ce"]
        for i in range(self.n_teachers):
            loss = loss + self.kl * terms[f"kl_{i}"] + self.cos * terms[f"cos_{i}"]
        return loss / self.norm
