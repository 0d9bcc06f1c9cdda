"""The model factory: LoRA/QLoRA classifiers from model configs, heads, adapters in and out."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from arena_distill.config import config_dir
from arena_distill.models import build_tiny_models
from arena_distill.models.factory import (
    build_model,
    count_parameters,
    head_name,
    load_for_inference,
    resolve_attn_implementation,
)

TEXTS = [
    f"Question {i}: how does {topic} work? Answer: it depends on {i % 7} factors and the context."
    for i, topic in enumerate(["photosynthesis", "recursion", "interest", "baking", "tides"] * 60)
]
BATCH = ["How does recursion work?", "Explain the base case of a recursive factorial function."]
NF4 = {"type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # Sizes multiple of 64: bitsandbytes repacks CPU 4-bit weights in blocks of 64 input features
    # (an eval forward of a 4-bit layer with in_features 32 or 96 raises a reshape error).
    return build_tiny_models(
        TEXTS,
        tmp_path_factory.mktemp("tiny"),
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
    )


def model_cfg(tiny, family: str, **overrides):
    """The project's own model config (a DictConfig), pointed at the tiny checkpoint."""
    name = "minilm" if family == "bert" else f"tiny_{family}"
    cfg = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    if family != "bert":
        cfg.name_or_path = str(tiny[family])
    return OmegaConf.merge(cfg, overrides)


def batch(tokenizer):
    enc = tokenizer(BATCH, padding=True, return_tensors="pt")
    assert (enc["attention_mask"][0] == 0).any()  # really padded
    return enc


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def train_steps(model, tokenizer, steps: int = 2, lr: float = 1e-2) -> list[float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    labels = torch.tensor([0, 2])
    losses = []
    for _ in range(steps):
        loss = model(**batch(tokenizer), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def eval_logits(model, tokenizer) -> torch.Tensor:
    return model.eval()(**batch(tokenizer)).logits.float()


@pytest.mark.parametrize("family", ["gemma2", "llama", "qwen2", "bert"])
def test_lora_model_trains_only_lora_and_head(tiny, family):
    model, tok = build_model(model_cfg(tiny, family))
    assert isinstance(model, PeftModel) and model.training
    head = head_name(model)
    assert head == ("classifier" if family == "bert" else "score")
    names = trainable_names(model)
    lora = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    head_params = [n for n in names if f".{head}.modules_to_save." in n]
    assert lora and head_params
    assert sorted(names) == sorted(lora + head_params)
    assert count_parameters(model)[0] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    assert tok.pad_token is not None and tok.padding_side == "right"
    assert model.config.pad_token_id == tok.pad_token_id
    logits = model(**batch(tok)).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_pad_falls_back_to_eos(tiny, tmp_path):
    """Llama-3 has no pad token: the 1st place padded with EOS."""
    folder = tmp_path / "nopad"
    shutil.copytree(tiny["llama"], folder)
    cfg_file = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg.pop("pad_token", None)
    cfg_file.write_text(json.dumps(tok_cfg))
    model, tok = build_model(model_cfg(tiny, "llama", name_or_path=str(folder)), train=False)
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert model.config.pad_token_id == tok.eos_token_id
    assert model(**batch(tok)).logits.shape == (2, 3)


@pytest.mark.parametrize(
    ("capability", "flash", "family", "expected"),
    [
        ((7, 5), True, "gemma2", "eager"),  # Kaggle's T4: no FlashAttention-2 on sm75
        ((7, 5), False, "llama", "sdpa"),
        ((8, 0), True, "gemma2", "flash_attention_2"),  # A100+: FA2 keeps the softcapping
        ((8, 0), False, "gemma2", "flex_attention"),  # never sdpa with softcapping
        ((9, 0), False, "llama", "sdpa"),  # no softcapping: sdpa, faster than flex
        ((9, 0), True, "llama", "flash_attention_2"),
    ],
)
def test_attention_rule_on_gpus(monkeypatch, capability, flash, family, expected):
    """The one rule (``factory.default_attention``) on a simulated CUDA device."""
    import importlib.util

    from arena_distill.models import factory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        factory.importlib.util,
        "find_spec",
        lambda name, *a: (object() if flash else None) if name == "flash_attn" else real(name, *a),
    )
    assert factory.default_attention(family, "cuda:0") == expected


def test_attn_implementation_rules_on_cpu():
    auto = {"attn_implementation": "auto"}
    assert resolve_attn_implementation({**auto, "family": "gemma2"}, "cpu") == "eager"
    assert resolve_attn_implementation({**auto, "family": "llama"}, "cpu") == "sdpa"
    assert resolve_attn_implementation({**auto, "family": "qwen2"}, "cpu") == "sdpa"
    assert resolve_attn_implementation({**auto, "family": "bert"}, "cpu") == "sdpa"
    explicit = {"family": "gemma2", "attn_implementation": "flash_attention_2"}
    assert resolve_attn_implementation(explicit, "cpu") == "flash_attention_2"
    explicit = OmegaConf.create({"family": "llama", "attn_implementation": "eager"})
    assert resolve_attn_implementation(explicit, torch.device("cpu")) == "eager"


def test_softcapping_off_changes_config_and_logits(tiny, tmp_path):
    # A tiny random model's attention logits are far below the real cap (50): make it bite.
    folder = tmp_path / "capped"
    shutil.copytree(tiny["gemma2"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["attn_logit_softcapping"] = 0.05
    (folder / "config.json").write_text(json.dumps(config))
    on, tok = build_model(model_cfg(tiny, "gemma2", name_or_path=str(folder)), train=False)
    off, _ = build_model(
        model_cfg(tiny, "gemma2", name_or_path=str(folder), softcapping=False), train=False
    )
    assert on.config.attn_logit_softcapping == 0.05 and on.config.final_logit_softcapping
    assert off.config.attn_logit_softcapping is None
    assert off.config.final_logit_softcapping is None
    assert on.config._attn_implementation == off.config._attn_implementation == "eager"
    diff = (eval_logits(on, tok) - eval_logits(off, tok)).abs().max()
    assert diff > 1e-3


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_mlp_head(tiny, family):
    model, tok = build_model(model_cfg(tiny, family, head="mlp", head_dropout=0.2))
    head = head_name(model)
    mlp = getattr(model.get_base_model(), head).modules_to_save["default"]
    h = model.config.hidden_size
    assert [type(m) for m in mlp] == [nn.Dropout, nn.Linear, nn.Dropout, nn.GELU, nn.Linear]
    assert (mlp[1].in_features, mlp[1].out_features) == (h, h // 2)
    assert (mlp[4].in_features, mlp[4].out_features) == (h // 2, 3)
    assert mlp[0].p == mlp[2].p == 0.2
    names = trainable_names(model)
    assert sum(f".{head}.modules_to_save." in n for n in names) == 4  # two weights, two biases
    assert not any("lora_" in n and f".{head}." in n for n in names)
    loss = model(**batch(tok), labels=torch.tensor([1, 2])).loss
    loss.backward()
    assert mlp[1].weight.grad is not None and mlp[1].weight.grad.abs().sum() > 0


def test_all_linear_leaves_the_mlp_head_to_modules_to_save(tiny):
    cfg = model_cfg(tiny, "qwen2", head="mlp", lora={"target_modules": "all-linear"})
    model, _ = build_model(cfg)
    names = trainable_names(model)
    assert any(".mlp.down_proj.lora_A." in n for n in names)
    assert not any("lora_" in n and ".score." in n for n in names)


@pytest.mark.parametrize(("family", "head"), [("gemma2", "linear"), ("llama", "mlp")])
def test_saved_adapter_reloads_exactly(tiny, family, head, tmp_path):
    cfg = model_cfg(tiny, family, head=head)
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    train_steps(model, tok)
    expected = eval_logits(model, tok)
    model.save_pretrained(tmp_path / "adapter")
    again, tok2 = load_for_inference(cfg, tmp_path / "adapter")
    assert isinstance(again, PeftModel) and not again.training
    assert not any(p.requires_grad for p in again.parameters())
    assert torch.equal(eval_logits(again, tok2), expected)
    base, _ = load_for_inference(cfg)
    assert not isinstance(base, PeftModel)
    assert not torch.equal(eval_logits(base, tok2), expected)


def test_init_adapter_loads_lora_and_drops_head(tiny, tmp_path):
    cfg = model_cfg(tiny, "llama")
    torch.manual_seed(0)
    first, tok = build_model(cfg)
    train_steps(first, tok)
    first.save_pretrained(tmp_path / "ut")
    saved = load_file(tmp_path / "ut" / "adapter_model.safetensors")
    torch.manual_seed(1)  # a different LoRA init, so equality below means "loaded"
    second, _ = build_model(cfg, init_adapter=tmp_path / "ut")
    loaded = lora_state(second)
    assert len(loaded) == 28  # 2 layers x 7 modules x (A, B)
    for name, value in loaded.items():
        assert torch.equal(value, saved[name.replace(".default", "")]), name
    fresh_head = second.get_base_model().score.modules_to_save["default"].weight
    base_head = load_file(tiny["llama"] / "model.safetensors")["score.weight"]
    assert not torch.equal(fresh_head, saved["base_model.model.score.weight"])
    assert torch.equal(fresh_head, base_head)


def test_init_adapter_refuses_a_mismatch(tiny, tmp_path):
    cfg = model_cfg(tiny, "llama")
    model, _ = build_model(cfg)
    model.save_pretrained(tmp_path / "ut")
    with pytest.raises(ValueError, match="r is 8, the model has 4"):
        build_model(model_cfg(tiny, "llama", lora={"r": 4}), init_adapter=tmp_path / "ut")
    fewer = model_cfg(tiny, "llama", lora={"target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(ValueError, match="target_modules"):
        build_model(fewer, init_adapter=tmp_path / "ut")
    # Same config, but tensors missing from the file: named in the error.
    weights = load_file(tmp_path / "ut" / "adapter_model.safetensors")
    gone = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
    del weights[gone]
    save_file(weights, tmp_path / "ut" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"missing \[.*layers\.1\.mlp\.down_proj\.lora_A"):
        build_model(cfg, init_adapter=tmp_path / "ut")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_qlora_nf4_trains_on_cpu(tiny, family):
    """QLoRA on CPU: training steps only. Any eval / no_grad forward of a bitsandbytes 4-bit
    layer on CPU repacks its weights for good (wrong LoRA gradients afterwards; layers with a
    bias, i.e. Qwen2's q/k/v, then raise on the next training forward), so Qwen2 and evaluation
    are left out here and the LoRA logic is tested in fp32 above."""
    from bitsandbytes.nn import Linear4bit, Params4bit

    cfg = model_cfg(tiny, family, dtype="bfloat16", quantization=NF4)
    model, tok = build_model(cfg)
    assert model.training  # from_pretrained returns eval mode: the trap above
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, Linear4bit)
    assert isinstance(q_proj.base_layer.weight, Params4bit)
    assert count_parameters(model)[1] > sum(p.numel() for p in model.parameters())
    before = lora_state(model)
    losses = train_steps(model, tok, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = lora_state(model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before)


def test_random_init_architecture_loads_nf4_like_a_checkpoint(tiny):
    """bench_gpu's QLoRA points: random weights of a shape, quantized as a checkpoint's are
    (written, then loaded with the NF4 config), LoRA on the 4-bit layers trains."""
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoConfig

    arch = AutoConfig.from_pretrained(tiny["llama"])
    model, tok = build_model(
        model_cfg(tiny, "llama", dtype="bfloat16", quantization=NF4), architecture=arch
    )
    assert tok is None and model.training
    layer = model.get_base_model().model.layers[0]
    assert isinstance(layer.self_attn.q_proj.base_layer, Linear4bit)
    plain, _ = build_model(model_cfg(tiny, "llama"), architecture=arch)
    assert count_parameters(model)[1] == count_parameters(plain)[1]  # the same shape
    before = lora_state(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(1, arch.vocab_size, (2, 12))
    for _ in range(2):
        model(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
        opt.step()
        opt.zero_grad()
    after = lora_state(model)
    assert all(not torch.equal(before[n], after[n]) for n in before)


def test_qlora_without_lora_is_refused(tiny):
    with pytest.raises(ValueError, match="QLoRA"):
        build_model(model_cfg(tiny, "llama", quantization=NF4, lora=None))


def test_gradient_checkpointing_backward(tiny):
    model, tok = build_model(model_cfg(tiny, "gemma2", gradient_checkpointing=True))
    assert model.get_base_model().is_gradient_checkpointing
    model(**batch(tok), labels=torch.tensor([0, 1])).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_full_finetune_without_lora(tiny):
    model, _ = build_model(model_cfg(tiny, "qwen2", lora=None))
    assert not isinstance(model, PeftModel)
    trainable, total = count_parameters(model)
    assert trainable == total


def test_config_overrides_cut_a_pretrained_encoder(tiny):
    """minilm_l3 (the cpu_real student) keeps the first 3 pretrained layers of 6."""
    cfg = OmegaConf.load(config_dir() / "model" / "minilm.yaml")
    full, _ = build_model(cfg, train=False)
    cut_cfg = OmegaConf.merge(cfg, {"config_overrides": {"num_hidden_layers": 3}})
    cut, _ = build_model(cut_cfg, train=False)
    assert len(full.bert.encoder.layer) == 6 and len(cut.bert.encoder.layer) == 3
    for k in range(3):
        a, b = full.bert.encoder.layer[k].state_dict(), cut.bert.encoder.layer[k].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ValueError, match="config_overrides"):
        build_model(OmegaConf.merge(cfg, {"config_overrides": {"num_labels": 2}}), train=False)


def test_lora_layers_to_transform_limits_the_adapter(tiny):
    cfg = model_cfg(tiny, "bert", lora={"layers_to_transform": [4, 5]})
    model, _ = build_model(cfg, train=True)
    layers = {
        int(n.split(".layer.")[1].split(".")[0]) for n in trainable_names(model) if "lora_" in n
    }
    assert layers == {4, 5}
