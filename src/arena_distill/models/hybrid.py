"""The hybrid classification head: the pooled representation and per-row length features.

``model.head: hybrid`` replaces the classifier's ``score`` (decoders) / ``classifier`` (BERT)
``nn.Linear`` by a :class:`HybridHead`::

    logits = hidden · weightᵀ + features · feature_weightᵀ + bias

``hidden`` is what the Hugging Face ``*ForSequenceClassification.forward`` hands its head
(decoders: every position, (B, T, h), pooled at the last non-pad token afterwards; BERT: the
pooled (B, h)); ``features`` the row's 8 length features (``features.head_features``, fixed
normalisation), broadcast over the positions. For small data sets, where a logistic regression
on those features beats the transformer, the head starts from what the regression sees. The
head is linear in its parameters, so fold heads average like the linear head's (the merge).

The forward signature of the Hugging Face classes has no place for the features: the engines
hand them to the head right before the forward with :func:`head_features` (a context manager
that sets them on every hybrid head of the model and clears them afterwards). A hybrid head
called without features raises a clear error instead of guessing.

Saved folders: the head's tensors are ``<head>.weight``, ``<head>.bias`` and
``<head>.feature_weight``, and ``config.json["arena_distill"]["head"]`` records the head
(``features.head_marker``). ``AutoModelForSequenceClassification.from_pretrained`` alone builds
a plain linear head (and reports the two extra tensors as unexpected); the project's loaders
call :func:`restore_hybrid_head` right after it, which rebuilds the hybrid head with the saved
tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena_distill.features import MARKER, N_FEATURES, check_folder_head, folder_head, head_marker


class MissingFeaturesError(RuntimeError):
    """A hybrid head was called without the batch's features (or with the wrong ones)."""


class HybridHead(nn.Module):
    """``hidden · weightᵀ + features · feature_weightᵀ + bias`` (see the module docstring).

    ``weight`` (labels, h) and ``bias`` (labels,) play the linear head's part (same names, so
    a linear head's tensors fill them); ``feature_weight`` (labels, n_features) starts at 0,
    so a fresh hybrid head computes what the linear head it replaces computed."""

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        n_features: int = N_FEATURES,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features = int(in_features)
        self.out_features = int(num_labels)
        self.n_features = int(n_features)
        self.weight = nn.Parameter(torch.empty(num_labels, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_labels, **kw))
        self.feature_weight = nn.Parameter(torch.zeros(num_labels, n_features, **kw))
        nn.init.normal_(self.weight, std=0.02)
        self._features: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Module, n_features: int = N_FEATURES) -> HybridHead:
        """A hybrid head computing what ``linear`` computes (its weight and bias, zero feature
        weights), on its device and dtype."""
        weight = getattr(linear, "weight", None)
        if type(linear) is not nn.Linear or not isinstance(weight, torch.Tensor):
            raise ValueError(
                f"a hybrid head replaces an nn.Linear head, got {type(linear).__name__} "
                "(a 4-bit head? keep the head out of the quantization)"
            )
        head = cls(
            linear.in_features,
            linear.out_features,
            n_features,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            head.weight.copy_(weight)
            if linear.bias is not None:
                head.bias.copy_(linear.bias)
        return head

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, n_features={self.n_features}, "
            f"out_features={self.out_features}"
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        features = self._features
        if features is None:
            raise MissingFeaturesError(
                "the hybrid head (model.head=hybrid) got no per-row features for this forward: "
                "pass them with models.hybrid.head_features(model, features) (the inference "
                "engine's features=, the training examples' 'features' field)"
            )
        rows = hidden.shape[0]
        if features.ndim != 2 or features.shape != (rows, self.n_features):
            raise MissingFeaturesError(
                f"the hybrid head got features of shape {tuple(features.shape)} for a batch of "
                f"{rows} rows; expected ({rows}, {self.n_features}) (torch.nn.DataParallel splits "
                "the batch, not the features: run one process per GPU, torchrun / accelerate)"
            )
        out = F.linear(hidden, self.weight, self.bias)
        f = features.to(device=hidden.device, dtype=self.feature_weight.dtype)
        extra = F.linear(f, self.feature_weight)
        if hidden.ndim == 3:  # decoders score every position: the row's features on each
            extra = extra.unsqueeze(1)
        return out + extra.to(out.dtype)


def hybrid_heads(model: nn.Module) -> list[HybridHead]:
    """Every :class:`HybridHead` in ``model`` (under peft: the original and its trained copy)."""
    return [m for m in model.modules() if isinstance(m, HybridHead)]


def uses_features(model: nn.Module) -> bool:
    """Whether ``model`` has a hybrid head (its forward needs :func:`head_features`)."""
    return bool(hybrid_heads(model))


@contextmanager
def head_features(model: nn.Module, features: torch.Tensor | np.ndarray | None) -> Iterator[None]:
    """Hand the batch's features (rows × n_features, in the batch's row order) to every hybrid
    head of ``model`` for the forward passes inside the block; cleared when it ends. A no-op for
    a model without one, or when ``features`` is None (a hybrid head then raises)."""
    heads = hybrid_heads(model) if features is not None else []
    if not heads:
        yield
        return
    if not isinstance(features, torch.Tensor):
        features = torch.from_numpy(np.asarray(features, dtype=np.float32))
    for head in heads:
        head._features = features
    try:
        yield
    finally:
        for head in heads:
            head._features = None


def install_hybrid_head(model: nn.Module, name: str, n_features: int = N_FEATURES) -> HybridHead:
    """Replace ``model``'s linear head ``name`` by a fresh :class:`HybridHead` computing the same
    (zero feature weights) and record it in ``model.config`` (saved into ``config.json``)."""
    head = HybridHead.from_linear(getattr(model, name), n_features)
    setattr(model, name, head)
    mark = getattr(model.config, MARKER, None)
    setattr(
        model.config, MARKER, {**(mark if isinstance(mark, dict) else {}), "head": head_marker()}
    )
    return head


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} has no safetensors weights to restore the hybrid head from")


def saved_head_tensors(folder: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of head ``name`` in a saved folder's safetensors files (``weight``, ...)."""
    from safetensors import safe_open

    prefix = f"{name}."
    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(Path(folder)):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.startswith(prefix):
                    out[key[len(prefix) :]] = f.get_tensor(key)
    return out


def restore_hybrid_head(model: nn.Module, folder: str | Path, name: str) -> bool:
    """After ``from_pretrained(folder)``: when ``folder``'s ``config.json`` records a hybrid
    head, replace the plain linear head ``name`` that transformers built by the hybrid head
    holding the folder's tensors (on the loaded head's device, in its dtype). Returns whether
    it did. A record without the tensors, or of another feature set, is an error."""
    recorded = folder_head(folder)
    if recorded is None:
        return False
    check_folder_head(recorded, str(Path(folder) / "config.json"))
    old = getattr(model, name)
    weight = getattr(old, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{folder}: the loaded head {name} has no weight to place the head by")
    tensors = saved_head_tensors(folder, name)
    missing = sorted({"weight", "bias", "feature_weight"} - tensors.keys())
    if missing:
        raise ValueError(
            f"{folder} records a hybrid head but its weights lack {name}.{missing} (saved by a "
            "plain linear model?)"
        )
    labels, hidden = tensors["weight"].shape
    head = HybridHead(hidden, labels, int(tensors["feature_weight"].shape[1]))
    head.load_state_dict(tensors, strict=True)
    setattr(model, name, head.to(device=weight.device, dtype=weight.dtype))
    return True
