"""The attention rule, softcapping kept by eager and flex_attention (not sdpa), length buckets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from arena_distill.collate import PreferenceCollator, bucket_length, pad_right
from arena_distill.config import config_dir
from arena_distill.inference import make_batches, padded_tokens, predict_logits
from arena_distill.models import build_tiny_models
from arena_distill.models.factory import (
    attention_rule,
    build_model,
    effective_length_buckets,
    resolve_attn_implementation,
)

TEXTS = [
    f"Question {i}: how does {topic} work? Answer: it depends on {i % 7} factors and the context."
    for i, topic in enumerate(["photosynthesis", "recursion", "interest", "baking", "tides"] * 60)
]
SM75, SM80, SM90 = (7, 5), (8, 0), (9, 0)
FLASH = {"flash_attn"}


@pytest.mark.parametrize(
    ("family", "softcapping", "capability", "installed", "expected"),
    [
        ("gemma2", True, None, (), "eager"),  # CPU: the only kernel keeping the cap
        ("gemma2", True, None, FLASH, "eager"),
        ("gemma2", False, None, (), "sdpa"),  # softcapping off (3rd place): sdpa is right
        ("gemma2", True, SM75, FLASH, "eager"),  # T4: no FlashAttention-2, no Triton flex
        ("gemma2", True, SM80, (), "flex_attention"),  # keeps the cap, faster than eager
        ("gemma2", True, SM90, FLASH, "flash_attention_2"),
        ("gemma2", False, SM90, (), "sdpa"),
        ("llama", True, None, (), "sdpa"),  # no softcapping in the family
        ("llama", True, SM75, (), "sdpa"),
        ("qwen2", True, SM90, (), "sdpa"),
        ("qwen2", True, SM90, FLASH, "flash_attention_2"),
        ("bert", True, SM90, FLASH, "sdpa"),
    ],
)
def test_attention_rule_is_a_pure_function(family, softcapping, capability, installed, expected):
    assert attention_rule(family, softcapping, capability, installed) == expected


def test_resolve_keeps_sdpa_off_gemma2_unless_softcapping_is_off():
    auto = {"family": "gemma2", "attn_implementation": "auto"}
    assert resolve_attn_implementation(auto, "cpu") == "eager"
    assert resolve_attn_implementation({**auto, "softcapping": True}, "cpu") == "eager"
    assert resolve_attn_implementation({**auto, "softcapping": None}, "cpu") == "eager"
    assert resolve_attn_implementation({**auto, "softcapping": False}, "cpu") == "sdpa"


def test_buckets_apply_only_where_shapes_compile():
    cfg = {"length_buckets": [512, 128, 256, 128]}
    assert effective_length_buckets(cfg, "flex_attention") == [128, 256, 512]
    assert effective_length_buckets(cfg, "eager") is None
    assert effective_length_buckets(cfg, "sdpa") is None
    compiled = {**cfg, "torch_compile": True}
    assert effective_length_buckets(compiled, "sdpa", "cuda:0") == [128, 256, 512]
    assert effective_length_buckets(compiled, "sdpa", "cpu") is None  # not compiled there
    forced = {**cfg, "torch_compile": "force"}
    assert effective_length_buckets(forced, "sdpa", "cpu") == [128, 256, 512]
    assert effective_length_buckets({"length_buckets": None}, "flex_attention") is None


def test_bucket_length_and_padding():
    buckets = [8, 16, 32]
    assert [bucket_length(n, buckets) for n in (1, 8, 9, 16, 17, 32, 33)] == [
        8,
        8,
        16,
        16,
        32,
        32,
        33,
    ]
    assert bucket_length(9, None) == 9
    ids, mask = pad_right([[5, 6, 7], [5] * 10], 0, buckets=buckets)
    assert ids.shape == (2, 16)
    assert mask.sum(1).tolist() == [3, 10]
    assert (ids[0, 3:] == 0).all()
    collator = PreferenceCollator(pad_token_id=0, buckets=buckets)
    batch = collator([{"input_ids": [1] * 5, "labels": 0}, {"input_ids": [2] * 11, "labels": 1}])
    assert batch["input_ids"].shape == (2, 16)
    assert collator.padding_share == pytest.approx(1 - 16 / 32)


def test_make_batches_budgets_at_the_bucket_width():
    lengths = [20, 19, 18, 17, 10, 9, 3]
    batches = make_batches(lengths, batch_size=8, max_tokens=64, buckets=[16, 32])
    # width 32 for the first rows: 2 per batch; then width 16: 4 per batch
    assert [len(b) for b in batches] == [2, 2, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert padded_tokens(lengths, batches, [16, 32]) == 2 * 32 + 2 * 32 + 3 * 16
    assert padded_tokens(lengths, batches) == 2 * 20 + 2 * 18 + 3 * 10


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
    cfg = OmegaConf.load(config_dir() / "model" / f"tiny_{family}.yaml")
    cfg.name_or_path = str(tiny[family])
    return OmegaConf.merge(cfg, overrides)


def sequences(n: int = 7, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 300, size=int(k)).tolist() for k in rng.integers(5, 40, size=n)]


@pytest.mark.parametrize(
    ("family", "attn"), [("gemma2", "eager"), ("llama", "sdpa"), ("qwen2", "sdpa")]
)
def test_bucketing_does_not_change_predictions(tiny, family, attn):
    """Padding up to a bucket is masked and every row is pooled at its own last token."""
    model, tok = build_model(model_cfg(tiny, family, attn_implementation=attn), train=False)
    seqs = sequences()
    kw = dict(pad_token_id=tok.pad_token_id, batch_size=3, progress=False)
    plain = predict_logits(model, seqs, **kw)
    bucketed = predict_logits(model, seqs, length_buckets=[16, 48, 64], **kw)
    assert bucketed.padded > plain.padded  # really padded further
    np.testing.assert_allclose(bucketed.logits, plain.logits, atol=1e-5, rtol=1e-5)


def capped(model: torch.nn.Module) -> torch.nn.Module:
    """Attention logits pushed far past Gemma-2's cap of 50 (q x 256, k x 16)."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "q_proj"):
                module.q_proj.weight.mul_(256)
                module.k_proj.weight.mul_(16)
    return model


def capped_logits(tiny, attn: str, seqs, **kw) -> np.ndarray:
    model, tok = build_model(model_cfg(tiny, "gemma2", attn_implementation=attn), train=False)
    assert model.config.attn_logit_softcapping == 50.0
    assert model.config._attn_implementation == attn
    run = predict_logits(capped(model), seqs, pad_token_id=tok.pad_token_id, progress=False, **kw)
    return run.logits


def test_sdpa_drops_gemma2_softcapping(tiny):
    seqs = sequences()
    eager = capped_logits(tiny, "eager", seqs, batch_size=4)
    sdpa = capped_logits(tiny, "sdpa", seqs, batch_size=4)
    assert np.abs(sdpa - eager).max() > 0.1  # the cap is what sdpa leaves out


@pytest.mark.slow
def test_flex_attention_keeps_gemma2_softcapping_on_cpu(tiny):
    """flex_attention (compiled by transformers; torch 2.13 runs it on CPU, ~30-60 s to compile
    here) gives eager's logits with the cap biting, also on bucketed batches."""
    seqs = sequences()
    eager = capped_logits(tiny, "eager", seqs, batch_size=4)
    flex = capped_logits(tiny, "flex_attention", seqs, batch_size=4, length_buckets=[32, 64])
    np.testing.assert_allclose(flex, eager, atol=1e-4, rtol=1e-4)
    sdpa = capped_logits(tiny, "sdpa", seqs, batch_size=4)
    assert np.abs(sdpa - eager).max() > 100 * np.abs(flex - eager).max()


def test_a_built_model_carries_its_buckets_to_the_engines(tiny, tmp_path):
    from arena_distill.collate import batch_buckets
    from arena_distill.settings import TrainSettings
    from arena_distill.train import fit, make_examples

    flex, _ = build_model(
        model_cfg(tiny, "gemma2", attn_implementation="flex_attention", length_buckets=[64, 32])
    )
    assert batch_buckets(flex) == [32, 64]  # through the PeftModel
    model, tok = build_model(model_cfg(tiny, "gemma2", length_buckets=[64, 32]))
    assert batch_buckets(model) is None  # eager: no compile, no rounding
    model.get_base_model().length_buckets = [32, 64]  # what flex would get, without compiling
    seqs = sequences(8, seed=3)
    ids = [str(k) for k in range(8)]
    enc = {(r, s): seqs[k] for k, r in enumerate(ids) for s in (False, True)}
    examples = make_examples(ids, [k % 3 for k in range(8)], enc, swap="none")
    settings = TrainSettings(
        global_batch_size=4, per_device_batch_size=4, max_steps=2, warmup_steps=0, swap="none"
    )
    result = fit(model, tok, examples, None, settings, tmp_path)
    assert result.collator.buckets == [32, 64]
    # two batches of 4 rows, each 32 or 64 wide
    assert result.collator.padded_tokens in (2 * 4 * 32, 4 * 32 + 4 * 64, 2 * 4 * 64)
    assert result.collator.real_tokens == sum(len(s) for s in seqs)
