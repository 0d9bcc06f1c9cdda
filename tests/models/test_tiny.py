"""Tiny models load like real checkpoints, pool the last real token, and are reproducible."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from arena_distill.models import TINY_FAMILIES, build_tiny_model, build_tiny_models, train_tokenizer
from arena_distill.models.tiny import INFO_FILE

TEXTS = [
    "How does photosynthesis work? Plants use sunlight, water and carbon dioxide.",
    "Step 1: For example, the starter ferments the dough before it goes into the oven.",
    "I cannot help with that request. It depends on many factors.",
    "In summary, compound interest comes down to the principal, the rate and time.",
] * 20
SHORT = "What is recursion?"
LONG = "Explain how the base case stops recursion, with an example of factorials in Python."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(TEXTS, tmp_path_factory.mktemp("tiny"), vocab_size=512)


def test_tokenizer_round_trip_and_reload(tmp_path):
    tok = train_tokenizer(TEXTS, tmp_path, vocab_size=400)
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.padding_side == "right"
    text = "Hello, world! 42 unseen words: zyxw & ~ {braces}\n\tnew line."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids
    assert again.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert again.padding_side == "right"


def test_families_share_one_tokenization(tiny):
    ids = [AutoTokenizer.from_pretrained(tiny[f])(LONG)["input_ids"] for f in TINY_FAMILIES]
    assert ids[0] == ids[1] == ids[2]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_reloads_and_pools_the_last_real_token(tiny, family):
    tok = AutoTokenizer.from_pretrained(tiny[family])
    model = AutoModelForSequenceClassification.from_pretrained(tiny[family]).eval()
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.id2label == {0: "winner_model_a", 1: "winner_model_b", 2: "winner_tie"}
    if family == "gemma2":
        assert model.config._attn_implementation == "eager"
    batch = tok([SHORT, LONG], padding=True, return_tensors="pt")
    assert (batch["attention_mask"][0] == 0).any()  # the short row really is padded
    with torch.no_grad():
        logits = model(**batch).logits
        alone = model(**tok([SHORT], return_tensors="pt")).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_same_seed_same_weights(tiny, family, tmp_path):
    tokenizer_dir = tiny[family].parent / "tokenizer"
    again = build_tiny_model(family, tokenizer_dir, tmp_path / "again")
    other = build_tiny_model(family, tokenizer_dir, tmp_path / "other", seed=1)
    weights = load_file(tiny[family] / "model.safetensors")
    same = load_file(again / "model.safetensors")
    assert weights.keys() == same.keys()
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    differs = load_file(other / "model.safetensors")
    assert any(not torch.equal(weights[k], differs[k]) for k in weights)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_info_file_records_the_build(tiny, family):
    info = json.loads((tiny[family] / INFO_FILE).read_text())
    model = AutoModelForSequenceClassification.from_pretrained(tiny[family])
    assert info["family"] == family and info["seed"] == 0 and info["hidden_size"] == 64
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert 50_000 <= info["n_params"] <= 1_000_000


def test_unknown_family_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny_model("mistral", tiny["llama"].parent / "tokenizer", tmp_path)
