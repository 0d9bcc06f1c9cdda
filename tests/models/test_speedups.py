"""Optional speed-ups behind model flags: torch_compile (CUDA, or forced on CPU), liger_kernel."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from omegaconf import OmegaConf

from arena_distill.collate import pad_right
from arena_distill.config import config_dir
from arena_distill.models import build_tiny_models
from arena_distill.models.factory import backbone, build_model, load_for_inference, maybe_compile

TEXTS = [
    f"Question {i}: how does {t} work? It depends." for i, t in enumerate(["a", "b", "c"] * 40)
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(
        TEXTS,
        tmp_path_factory.mktemp("tiny"),
        vocab_size=200,
        hidden_size=64,
        intermediate_size=128,
    )


def model_cfg(tiny, family: str = "llama", **overrides):
    cfg = OmegaConf.load(config_dir() / "model" / f"tiny_{family}.yaml")
    cfg.name_or_path = str(tiny[family])
    return OmegaConf.merge(cfg, overrides)


def logits(model, pad: int) -> torch.Tensor:
    ids, mask = pad_right([[5, 6, 7, 8, 9, 10], [11, 12, 13]], pad)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_torch_compile_is_skipped_on_cpu_unless_forced(tiny, caplog):
    cfg = model_cfg(tiny, torch_compile=True)
    with caplog.at_level(logging.WARNING):
        model, tok = load_for_inference(cfg)
    assert "torch_compile=true is skipped on cpu" in caplog.text
    assert not hasattr(backbone(model), "_compiled_call_impl") or (
        backbone(model)._compiled_call_impl is None
    )
    plain, _ = load_for_inference(model_cfg(tiny))
    torch.testing.assert_close(logits(model, tok.pad_token_id), logits(plain, tok.pad_token_id))


@pytest.mark.slow
def test_forced_torch_compile_on_cpu_gives_the_same_logits(tiny):
    """``torch_compile: force`` compiles the backbone in place (tens of seconds here)."""
    plain, tok = load_for_inference(model_cfg(tiny))
    model, _ = load_for_inference(model_cfg(tiny, torch_compile="force"))
    assert backbone(model)._compiled_call_impl is not None
    assert model.state_dict().keys() == plain.state_dict().keys()  # names unchanged
    torch.testing.assert_close(
        logits(model, tok.pad_token_id), logits(plain, tok.pad_token_id), atol=1e-5, rtol=1e-5
    )


def test_compile_flag_off_does_nothing(tiny):
    model, _ = build_model(model_cfg(tiny), train=False)
    assert maybe_compile(model, {"torch_compile": False}, "cuda:0") is False


def test_liger_kernel_is_refused_on_cpu(tiny):
    with pytest.raises(RuntimeError, match="liger_kernel needs a CUDA device"):
        build_model(model_cfg(tiny, liger_kernel=True), train=True)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gemma2", "llama", "qwen2"])
def test_liger_kernel_keeps_the_logits_on_cuda(tiny, family):
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed (pip install .[gpu])")
    overrides = {"dtype": "float32", "attn_implementation": "eager"}
    plain, tok = build_model(model_cfg(tiny, family, **overrides), train=False, device="cuda:0")
    liger, _ = build_model(
        model_cfg(tiny, family, liger_kernel=True, **overrides), train=False, device="cuda:0"
    )
    ids, mask = pad_right([[5, 6, 7, 8, 9, 10], [11, 12, 13]], tok.pad_token_id)
    with torch.no_grad():
        a = plain(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits
        b = liger(input_ids=ids.cuda(), attention_mask=mask.cuda()).logits
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
