"""Fold-adapter merging maths (arena_distill.merge), checked against peft and by hand."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

from arena_distill.config import config_dir
from arena_distill.merge import (
    METHODS,
    PREFIX,
    MergeError,
    merge_adapters,
    merge_into_base,
    read_adapter,
    save_adapter,
)
from arena_distill.models import build_tiny_models
from arena_distill.models.factory import build_model, load_for_inference

TEXTS = [
    f"Question {i}: how does {topic} work? Answer: it depends on {i % 7} factors and the context."
    for i, topic in enumerate(["photosynthesis", "recursion", "interest", "baking", "tides"] * 40)
]
BATCH = ["How does recursion work?", "Explain the base case of a recursive factorial function."]
K = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(
        TEXTS,
        tmp_path_factory.mktemp("tiny"),
        families=("llama", "gemma2"),
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
    )


def model_cfg(tiny, family: str):
    cfg = OmegaConf.load(config_dir() / "model" / f"tiny_{family}.yaml")
    cfg.name_or_path = str(tiny[family])
    return cfg


def make_adapter(cfg, out, fold: int, *, scale: float = 0.05):
    """A 'trained' fold adapter: the shared init (seed 0) plus fold-specific noise on every
    trainable tensor (LoRA A, B and the head), saved the way the training stages save it."""
    set_seed(0)
    model, _ = build_model(cfg, train=True)
    gen = torch.Generator().manual_seed(100 + fold)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def folds(tiny, tmp_path_factory):
    """{family: [K adapter folders]} from one shared init."""
    root = tmp_path_factory.mktemp("folds")
    return {
        fam: [make_adapter(model_cfg(tiny, fam), root / fam / f"fold_{k}", k) for k in range(K)]
        for fam in ("llama", "gemma2")
    }


def logits_of(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.float()


def load_full(folder):
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def fold_tensors(folder):
    return load_file(folder / "adapter_model.safetensors")


def copy_adapter(src, dst, **config_changes):
    shutil.copytree(src, dst)
    path = dst / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(config_changes)
    path.write_text(json.dumps(config))
    return dst


# ----- one adapter at weight 1 reproduces it exactly ------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("method", METHODS)
def test_one_adapter_at_weight_one_reproduces_peft(tiny, folds, tmp_path, family, method):
    cfg = model_cfg(tiny, family)
    adapter = folds[family][1]
    merged = merge_adapters([adapter], method, [1.0])
    out = tmp_path / "merged"
    merge_into_base(cfg, merged, out)
    full, tok = load_full(out)
    assert full.config.num_labels == 3
    assert full.config.pad_token_id == tok.pad_token_id is not None
    if family == "gemma2":
        assert json.loads((out / "config.json").read_text())["attn_implementation"] == "eager"
        assert full.config._attn_implementation == "eager"
    peft_model, peft_tok = load_for_inference(cfg, adapter)
    expected = logits_of(peft_model, peft_tok)
    got = logits_of(full, tok)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (expected - logits_of(load_for_inference(cfg)[0], peft_tok)).abs().max() > 1e-3


def test_rslora_scale_reproduces_peft(tiny, folds, tmp_path):
    cfg = model_cfg(tiny, "llama")
    adapter = copy_adapter(folds["llama"][0], tmp_path / "rs", use_rslora=True)
    merged = merge_adapters([adapter], "ab_mean")
    assert merged.scale == pytest.approx(16 / 8**0.5)
    merge_into_base(cfg, merged, tmp_path / "merged")
    full, tok = load_full(tmp_path / "merged")
    peft_model, _ = load_for_inference(cfg, adapter)
    torch.testing.assert_close(logits_of(full, tok), logits_of(peft_model, tok), atol=1e-5, rtol=0)


# ----- the maths, computed independently ------------------------------------------------------


def modules_of(tensors):
    return sorted(
        k[len(PREFIX) : -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")
    )


@pytest.mark.parametrize("weights", [None, [0.5, 0.3, 0.2]])
def test_delta_mean_is_the_mean_of_the_updates(folds, weights):
    ts = [fold_tensors(f) for f in folds["llama"]]
    w = weights or [1 / K] * K
    merged = merge_adapters(folds["llama"], "delta_mean", weights)
    scale = 16 / 8
    assert merged.scale == scale and merged.lora is None
    mods = modules_of(ts[0])
    assert sorted(merged.factors) == mods and len(mods) == 14
    for m in mods:
        expected = sum(
            wk * (t[f"{PREFIX}{m}.lora_B.weight"] @ t[f"{PREFIX}{m}.lora_A.weight"]) * scale
            for wk, t in zip(w, ts, strict=True)
        )
        torch.testing.assert_close(merged.delta(m), expected, atol=1e-6, rtol=1e-6)
    head = sum(wk * t[f"{PREFIX}score.weight"] for wk, t in zip(w, ts, strict=True))
    torch.testing.assert_close(merged.head["score.weight"], head, atol=1e-7, rtol=1e-6)


def test_ab_mean_averages_a_b_and_head_separately(folds, tmp_path):
    ts = [fold_tensors(f) for f in folds["llama"]]
    merged = merge_adapters(folds["llama"], "ab_mean")
    for key in ts[0]:
        mean = torch.stack([t[key].double() for t in ts]).mean(0).float()
        torch.testing.assert_close(merged.lora[key], mean, atol=1e-9, rtol=2e-7)
    for m in modules_of(ts[0]):
        a = merged.lora[f"{PREFIX}{m}.lora_A.weight"]
        b = merged.lora[f"{PREFIX}{m}.lora_B.weight"]
        torch.testing.assert_close(merged.delta(m), b @ a * 2.0, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(
        merged.head["score.weight"],
        torch.stack([t[f"{PREFIX}score.weight"] for t in ts]).mean(0),
        atol=1e-7,
        rtol=1e-6,
    )
    # the saved adapter holds exactly those tensors, with the folds' config
    out = save_adapter(merged, tmp_path / "adapter")
    saved = load_file(out / "adapter_model.safetensors")
    assert saved.keys() == ts[0].keys()
    assert all(torch.equal(saved[k], merged.lora[k]) for k in saved)
    assert read_adapter(out).config == read_adapter(folds["llama"][0]).config


@pytest.mark.parametrize("method", METHODS)
def test_merged_model_is_base_plus_delta(tiny, folds, tmp_path, method):
    cfg = model_cfg(tiny, "llama")
    merged = merge_adapters(folds["llama"], method)
    stats = merge_into_base(cfg, merged, tmp_path / "merged")
    assert len(stats) == 14 and all(s["delta"] > 0 for s in stats.values())
    # expected state dict built by hand from the base checkpoint and the fold files
    ts = [fold_tensors(f) for f in folds["llama"]]
    base = load_file(tiny["llama"] / "model.safetensors")
    expected = dict(base)
    for m in modules_of(ts[0]):
        a = [t[f"{PREFIX}{m}.lora_A.weight"] for t in ts]
        b = [t[f"{PREFIX}{m}.lora_B.weight"] for t in ts]
        if method == "ab_mean":
            delta = (sum(b) / K) @ (sum(a) / K) * 2.0
        else:
            delta = sum(bk @ ak for ak, bk in zip(a, b, strict=True)) / K * 2.0
        expected[f"{m}.weight"] = base[f"{m}.weight"] + delta
    expected["score.weight"] = sum(t[f"{PREFIX}score.weight"] for t in ts) / K
    merged_sd = load_file(tmp_path / "merged" / "model.safetensors")
    assert merged_sd.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged_sd[key], value, atol=1e-6, rtol=1e-5)
    ref, tok = load_full(tiny["llama"])
    ref.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ref.load_state_dict(expected)
    full, tok2 = load_full(tmp_path / "merged")
    torch.testing.assert_close(logits_of(full, tok2), logits_of(ref, tok2), atol=1e-5, rtol=0)


def test_ab_mean_differs_from_delta_mean(tiny, folds, tmp_path):
    cfg = model_cfg(tiny, "llama")
    logits = {}
    for method in METHODS:
        merge_into_base(cfg, merge_adapters(folds["llama"], method), tmp_path / method)
        logits[method] = logits_of(*load_full(tmp_path / method))
    assert (logits["ab_mean"] - logits["delta_mean"]).abs().max() > 1e-4


def test_ab_mean_adapter_reloads_to_the_full_model(tiny, folds, tmp_path):
    cfg = model_cfg(tiny, "gemma2")
    merged = merge_adapters(folds["gemma2"], "ab_mean")
    merge_into_base(cfg, merged, tmp_path / "merged")
    save_adapter(merged, tmp_path / "merged" / "adapter")
    peft_model, tok = load_for_inference(cfg, tmp_path / "merged" / "adapter")
    full, _ = load_full(tmp_path / "merged")
    torch.testing.assert_close(logits_of(full, tok), logits_of(peft_model, tok), atol=1e-5, rtol=0)
    with pytest.raises(MergeError, match="only ab_mean"):
        save_adapter(merge_adapters(folds["gemma2"], "delta_mean"), tmp_path / "x")


# ----- refusals -------------------------------------------------------------------------------


def test_mismatched_rank_is_refused(tiny, folds, tmp_path):
    cfg = model_cfg(tiny, "llama")
    cfg.lora.r = 4
    other = make_adapter(cfg, tmp_path / "r4", 0)
    with pytest.raises(MergeError, match=r"r4.*\br is 4"):
        merge_adapters([folds["llama"][0], other])


def test_mismatched_alpha_and_targets_are_refused(folds, tmp_path):
    a = copy_adapter(folds["llama"][1], tmp_path / "alpha", lora_alpha=32)
    with pytest.raises(MergeError, match="lora_alpha"):
        merge_adapters([folds["llama"][0], a])
    t = copy_adapter(folds["llama"][1], tmp_path / "targets", target_modules=["q_proj"])
    with pytest.raises(MergeError, match="target_modules"):
        merge_adapters([folds["llama"][0], t])


def test_missing_or_reshaped_tensor_is_refused(folds, tmp_path):
    dst = copy_adapter(folds["llama"][1], tmp_path / "missing")
    tensors = fold_tensors(dst)
    key = f"{PREFIX}model.layers.1.mlp.up_proj.lora_A.weight"
    tensors.pop(key)
    tensors.pop(key.replace("lora_A", "lora_B"))
    save_file(tensors, dst / "adapter_model.safetensors")
    with pytest.raises(MergeError, match=r"missing.*layers\.1\.mlp\.up_proj"):
        merge_adapters([folds["llama"][0], dst])
    dst = copy_adapter(folds["llama"][1], tmp_path / "shape")
    tensors = fold_tensors(dst)
    tensors[f"{PREFIX}score.weight"] = torch.zeros(2, 64)
    save_file(tensors, dst / "adapter_model.safetensors")
    with pytest.raises(MergeError, match=r"shape.*score\.weight|score\.weight.*\(2, 64\)"):
        merge_adapters([folds["llama"][0], dst])


@pytest.mark.parametrize(
    "change",
    [
        {"use_dora": True},
        {"lora_bias": True},
        {"bias": "all"},
        {"alpha_pattern": {"q_proj": 32}},
        {"peft_type": "LOHA"},
    ],
)
def test_unsupported_variants_are_refused(folds, tmp_path, change):
    dst = copy_adapter(folds["llama"][0], tmp_path / "variant", **change)
    key = next(iter(change))
    with pytest.raises(MergeError, match=key):
        read_adapter(dst)


def test_unsupported_layer_tensors_are_refused(folds, tmp_path):
    dst = copy_adapter(folds["llama"][0], tmp_path / "emb")
    tensors = fold_tensors(dst)
    tensors[f"{PREFIX}model.embed_tokens.lora_embedding_A"] = torch.zeros(8, 300)
    save_file(tensors, dst / "adapter_model.safetensors")
    with pytest.raises(MergeError, match="lora_embedding_A"):
        read_adapter(dst)


def test_bad_weights_and_method_are_refused(folds):
    with pytest.raises(MergeError, match="sum to 1"):
        merge_adapters(folds["llama"], "ab_mean", [0.5, 0.5, 0.5])
    with pytest.raises(MergeError, match="3 adapters"):
        merge_adapters(folds["llama"], "ab_mean", [0.5, 0.5])
    with pytest.raises(MergeError, match="non-negative"):
        merge_adapters(folds["llama"], "ab_mean", [1.5, -0.5, 0.0])
    with pytest.raises(MergeError, match="unknown merge method"):
        merge_adapters(folds["llama"], "ties")
    with pytest.raises(MergeError, match="not a peft adapter"):
        read_adapter(folds["llama"][0].parent)


def test_mlp_head_full_model_is_refused(tiny, folds, tmp_path):
    cfg = model_cfg(tiny, "llama")
    cfg.head = "mlp"
    with pytest.raises(MergeError, match="mlp"):
        merge_into_base(cfg, merge_adapters(folds["llama"], "ab_mean"), tmp_path / "m")
