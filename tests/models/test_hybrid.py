"""The hybrid head (``model.head: hybrid``): its maths, its features, its save / load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel

from arena_distill.config import config_dir
from arena_distill.data.readers import read_competition
from arena_distill.data.summary import DataSummary
from arena_distill.data.swap import swap_table
from arena_distill.demo import generate_demo
from arena_distill.features import (
    FEATURE_SCALE,
    N_FEATURES,
    feature_map,
    head_features,
    length_features,
    orientation_features,
)
from arena_distill.inference import predict_logits
from arena_distill.models import build_tiny_models
from arena_distill.models.factory import backbone, build_model, load_for_inference
from arena_distill.models.hybrid import HybridHead, MissingFeaturesError, hybrid_heads
from arena_distill.models.hybrid import head_features as with_features
from arena_distill.settings import ConfigError, ModelSettings

TEXTS = [
    f"Question {i}: how does {topic} work? Answer: it depends on {i % 7} factors and the context."
    for i, topic in enumerate(["photosynthesis", "recursion", "interest", "baking", "tides"] * 60)
]
ROWS = ["How does recursion work?", "Explain the base case of a recursive factorial function."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(
        TEXTS,
        tmp_path_factory.mktemp("tiny"),
        families=("llama",),
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
    )


def model_cfg(tiny, family: str, **overrides):
    name = "minilm" if family == "bert" else f"tiny_{family}"
    cfg = OmegaConf.load(config_dir() / "model" / f"{name}.yaml")
    if family != "bert":
        cfg.name_or_path = str(tiny[family])
    return OmegaConf.merge(cfg, {"head": "hybrid", **overrides})


def pooled(model, ids: list[list[int]]) -> torch.Tensor:
    """What the classifier hands its head for each row, pooled: the decoder's last token, BERT's
    pooler output (one row at a time: no padding involved)."""
    out = []
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row])
            if model.config.model_type == "bert":
                out.append(backbone(model)(input_ids=x).pooler_output[0])
            else:
                out.append(backbone(model)(input_ids=x).last_hidden_state[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_hybrid_head_is_the_linear_maths_of_pooled_and_features(tiny, family):
    model, tok = build_model(model_cfg(tiny, family), train=False)
    (head,) = hybrid_heads(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    ids = [tok(t)["input_ids"] for t in ROWS]
    f = np.random.default_rng(0).normal(size=(2, N_FEATURES)).astype(np.float32)
    run = predict_logits(model, ids, pad_token_id=tok.pad_token_id, features=f, progress=False)
    h = pooled(model, ids)
    expected = h @ head.weight.T + torch.from_numpy(f) @ head.feature_weight.T + head.bias
    np.testing.assert_allclose(run.logits, expected.detach().numpy(), atol=1e-5)
    # only row 0's features change: row 0 moves by exactly feature_weight · delta, row 1 not
    g = f.copy()
    g[0, 2] += 1.5
    moved = predict_logits(model, ids, pad_token_id=tok.pad_token_id, features=g, progress=False)
    np.testing.assert_allclose(
        moved.logits[0] - run.logits[0], 1.5 * head.feature_weight[:, 2].detach().numpy(), atol=1e-5
    )
    np.testing.assert_array_equal(moved.logits[1], run.logits[1])
    with pytest.raises(MissingFeaturesError, match="no per-row features"):
        predict_logits(model, ids, pad_token_id=tok.pad_token_id, progress=False)
    assert head._features is None  # the engine cleared what it set


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_fresh_hybrid_head_starts_as_the_linear_head(tiny, family):
    torch.manual_seed(3)
    linear, tok = build_model(model_cfg(tiny, family, head="linear"))
    torch.manual_seed(3)
    hybrid, _ = build_model(model_cfg(tiny, family))
    (head,) = [h for h in hybrid_heads(hybrid) if h.weight.requires_grad]
    assert torch.equal(head.feature_weight, torch.zeros(3, N_FEATURES))
    trainable = [n for n, p in hybrid.named_parameters() if p.requires_grad and ".score." in n]
    if family == "llama":
        assert sorted(n.rsplit(".", 1)[1] for n in trainable) == [
            "bias",
            "feature_weight",
            "weight",
        ]
    ids = [tok(t)["input_ids"] for t in ROWS]
    f = np.ones((2, N_FEATURES), dtype=np.float32)
    a = predict_logits(linear.eval(), ids, pad_token_id=tok.pad_token_id, progress=False)
    b = predict_logits(
        hybrid.eval(), ids, pad_token_id=tok.pad_token_id, features=f, progress=False
    )
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-6)


def test_saved_hybrid_adapter_reloads_exactly_and_trains_the_feature_weights(tiny, tmp_path):
    cfg = model_cfg(tiny, "llama")
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    enc = tok(ROWS, padding=True, return_tensors="pt")
    f = torch.tensor(np.random.default_rng(1).normal(size=(2, N_FEATURES)), dtype=torch.float32)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        with with_features(model, f):
            loss = model(**enc, labels=torch.tensor([0, 2])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    (trained,) = [h for h in hybrid_heads(model) if h.weight.requires_grad]
    assert trained.feature_weight.abs().sum() > 0
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_for_inference(cfg, tmp_path / "adapter")
    assert isinstance(again, PeftModel)
    ids = [tok(t)["input_ids"] for t in ROWS]
    kw = {"pad_token_id": tok.pad_token_id, "features": f.numpy(), "progress": False}
    expected = predict_logits(model.eval(), ids, **kw).logits
    np.testing.assert_array_equal(predict_logits(again, ids, **kw).logits, expected)


def test_head_features_are_fixed_and_follow_the_swap(tmp_path):
    paths = generate_demo(tmp_path, n_train=40, n_test=2, seed=5)
    df = read_competition(paths["train"], summary=DataSummary(), source="demo")
    f = head_features(df)
    assert f.dtype == np.float32 and f.shape == (len(df), N_FEATURES)
    np.testing.assert_array_equal(f, (length_features(df) / FEATURE_SCALE).astype(np.float32))
    # a row's features do not depend on the other rows (no fitted scaler)
    np.testing.assert_array_equal(head_features(df.iloc[[7]]), f[[7]])
    both = orientation_features(df)
    np.testing.assert_array_equal(both[True], head_features(swap_table(df)))
    np.testing.assert_array_equal(both[True][:, :4], -f[:, :4])  # A - B differences flip
    np.testing.assert_array_equal(both[True][:, 4:], f[:, 4:])  # sizes, identity, turns stay
    fmap = feature_map(df)
    rid = str(df["id"].iloc[3])
    assert fmap[(rid, False)] == tuple(f[3].tolist())
    assert fmap[(rid, True)] == tuple(both[True][3].tolist())


def test_head_setting_is_checked():
    base = {"name": "m", "name_or_path": "x", "family": "llama"}
    assert ModelSettings(**base, head="hybrid").head == "hybrid"
    with pytest.raises(ConfigError, match="model.head must be one of"):
        ModelSettings(**base, head="hybird")


def test_hybrid_head_refuses_features_of_the_wrong_shape():
    head = HybridHead(4, 3, N_FEATURES)
    head._features = torch.zeros(3, N_FEATURES)
    with pytest.raises(MissingFeaturesError, match="batch of 2 rows"):
        head(torch.zeros(2, 4))
