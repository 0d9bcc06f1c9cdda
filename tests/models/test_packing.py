"""Padding-free packed training: one concatenated row per micro-batch, each row pooled at its
own last token, giving the padded forward's logits and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from arena_distill.collate import PreferenceCollator, pack_rows, pad_right
from arena_distill.config import config_dir
from arena_distill.models import build_tiny_models
from arena_distill.models.factory import build_model
from arena_distill.models.hybrid import head_features, hybrid_heads
from arena_distill.models.packing import packed_logits
from arena_distill.settings import TrainSettings
from arena_distill.train import fit, make_examples

TEXTS = [
    f"Question {i}: how does {topic} work? Answer: it depends on {i % 7} factors and the context."
    for i, topic in enumerate(["photosynthesis", "recursion", "interest", "baking", "tides"] * 60)
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(
        TEXTS,
        tmp_path_factory.mktemp("tiny"),
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
    )


def model_cfg(tiny, family: str, **overrides):
    name = "minilm" if family == "bert" else f"tiny_{family}"
    cfg = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    if family != "bert":
        cfg.name_or_path = str(tiny[family])
    cfg.lora.dropout = 0.0  # deterministic train-mode forwards
    return OmegaConf.merge(cfg, overrides)


def rows(seed: int = 0, n: int = 5) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 300, size=int(k)).tolist() for k in rng.integers(3, 30, size=n)]


def test_pack_rows_layout():
    batch = pack_rows([[7, 8, 9], [4], [5, 6]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[7, 8, 9, 4, 5, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch["last_index"].tolist() == [2, 3, 5]
    assert "attention_mask" not in batch
    padded = pack_rows([[7, 8, 9], [4]], pad_token_id=0, buckets=[8])
    assert padded["input_ids"].tolist() == [[7, 8, 9, 4, 0, 0, 0, 0]]
    assert padded["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]  # a segment of its own
    assert padded["last_index"].tolist() == [2, 3]


def test_packing_collator_counts_no_padding():
    collator = PreferenceCollator(pad_token_id=0, packing=True)
    batch = collator(
        [
            {"input_ids": [1, 2, 3], "labels": 0, "teacher_logits": [[0.0, 1.0, 2.0]]},
            {"input_ids": [4, 5], "labels": 2, "teacher_logits": [[1.0, 1.0, 1.0]]},
        ]
    )
    assert batch["input_ids"].shape == (1, 5)
    assert batch["labels"].tolist() == [0, 2]
    assert batch["teacher_logits"].shape == (2, 1, 3)
    assert collator.padding_share == 0.0


CASES = [("gemma2", "eager"), ("llama", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa")]


@pytest.mark.parametrize(("family", "attn"), CASES)
def test_packed_logits_and_gradients_equal_the_padded_forward(tiny, family, attn):
    """fp32, the LoRA model as trained: the same logits (1e-5) and LoRA / head gradients."""
    torch.manual_seed(0)
    model, tok = build_model(model_cfg(tiny, family, attn_implementation=attn), train=True)
    with torch.no_grad():  # LoRA B starts at zero: give it values so its gradients matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    seqs = rows()
    labels = torch.tensor([0, 1, 2, 1, 0])
    pad = tok.pad_token_id
    seqs = [[t if t != pad else pad + 1 for t in s] for s in seqs]  # no pad id inside a row

    ids, mask = pad_right(seqs, pad)
    padded = model(input_ids=ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(padded, labels).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    packed_batch = pack_rows(seqs, pad, buckets=[128])  # with a padding segment too
    packed = packed_logits(
        model,
        packed_batch["input_ids"],
        packed_batch["position_ids"],
        packed_batch["last_index"],
    )
    torch.nn.functional.cross_entropy(packed, labels).backward()
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packing_refuses_an_encoder(tiny):
    model, tok = build_model(model_cfg(tiny, "bert"), train=True)
    batch = pack_rows([[101, 7, 102], [101, 8, 9, 102]], tok.pad_token_id)
    with pytest.raises(ValueError, match="packing needs a decoder"):
        packed_logits(model, batch["input_ids"], batch["position_ids"], batch["last_index"])


def test_fit_trains_packed(tiny, tmp_path):
    model, tok = build_model(model_cfg(tiny, "qwen2"), train=True)
    seqs = rows(1, 12)
    ids = [str(k) for k in range(12)]
    enc = {(r, s): seqs[k] for k, r in enumerate(ids) for s in (False, True)}
    examples = make_examples(ids, [k % 3 for k in range(12)], enc, swap="none")
    settings = TrainSettings(
        global_batch_size=4,
        per_device_batch_size=4,
        max_steps=3,
        warmup_steps=0,
        logging_steps=1,
        swap="none",
        packing=True,
        lr=1e-3,
    )
    result = fit(model, tok, examples, None, settings, tmp_path)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert result.padding_share == 0.0
    assert result.trained_rows == 12
    assert result.trained_tokens == sum(len(s) for s in seqs)


def test_packed_hybrid_head_gets_each_rows_features(tiny, tmp_path):
    """model.head=hybrid with packing: the packed row's pooled rows meet their own features
    (the same logits and head gradients as the padded forward), and fit trains it packed."""
    torch.manual_seed(0)
    model, tok = build_model(model_cfg(tiny, "llama", head="hybrid"), train=True)
    seqs = rows(2)
    pad = tok.pad_token_id
    seqs = [[t if t != pad else pad + 1 for t in s] for s in seqs]
    feats = torch.tensor(np.random.default_rng(2).normal(size=(5, 8)), dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 1, 0])
    ids, mask = pad_right(seqs, pad)
    with head_features(model, feats):
        padded = model(input_ids=ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(padded, labels).backward()
    grads = {
        n: p.grad.clone()
        for n, p in model.named_parameters()
        if ".score." in n and p.grad is not None
    }
    assert any(n.endswith("feature_weight") for n in grads)
    model.zero_grad()
    batch = pack_rows(seqs, pad)
    with head_features(model, feats):
        packed = packed_logits(
            model, batch["input_ids"], batch["position_ids"], batch["last_index"]
        )
    torch.nn.functional.cross_entropy(packed, labels).backward()
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(
            dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4
        )

    ids_ = [str(k) for k in range(5)]
    enc = {(r, s): seqs[k] for k, r in enumerate(ids_) for s in (False, True)}
    fmap = {(r, s): tuple(feats[k].tolist()) for k, r in enumerate(ids_) for s in (False, True)}
    examples = make_examples(ids_, [0, 1, 2, 1, 0], enc, swap="none", features=fmap)
    settings = TrainSettings(
        global_batch_size=5,
        per_device_batch_size=5,
        max_steps=2,
        warmup_steps=0,
        logging_steps=1,
        swap="none",
        packing=True,
        lr=1e-2,
    )
    head = [h for h in hybrid_heads(model) if h.weight.requires_grad][0]
    before = head.feature_weight.detach().clone()
    fit(model, tok, examples, None, settings, tmp_path)
    assert not torch.equal(head.feature_weight.detach(), before)
