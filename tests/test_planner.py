"""The time planner: FLOPs that match the models' real weights, batches as the engine makes
them, plans in the guard's order, and the plan stage end to end without a GPU."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from arena_distill.config import compose
from arena_distill.planner import (
    ARCHITECTURES,
    DEVICES,
    Architecture,
    batch_flops,
    choose,
    project,
)

FAMILIES = {
    "gemma2": dict(head_dim=24, num_key_value_heads=2),
    "llama": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
    "bert": {},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_linear_weights_match_the_real_model(family):
    """The count equals the weights of every nn.Linear inside the transformer blocks of a
    model built from the same config (random init, so any layout error shows)."""
    config = AutoConfig.for_model(
        family,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=100,
        num_labels=3,
        **FAMILIES[family],
    )
    model = AutoModelForSequenceClassification.from_config(config)
    blocks = model.bert.encoder.layer if family == "bert" else model.model.layers
    real = sum(
        m.weight.numel()
        for block in blocks
        for m in block.modules()
        if isinstance(m, torch.nn.Linear)
    )
    arch = Architecture.from_config(config.to_dict())
    assert arch.linear_params == real
    assert arch.num_layers == 3


def test_the_shipped_architectures_are_the_recipes_models():
    gemma = Architecture.of("google/gemma-2-9b-it")
    # 42 x (q, k, v, o: 44.0 M + gate, up, down: 154.1 M): the 8.32 B of ../shared/gpu/README.md
    assert gemma.linear_params == 8_323_596_288
    assert gemma.attention_width == 16 * 256 and gemma.num_layers == 42
    llama = Architecture.of("meta-llama/Meta-Llama-3-70B-Instruct")
    qwen = Architecture.of("Qwen/Qwen2-72B-Instruct")
    assert 68e9 < llama.linear_params < 69e9 and 70e9 < qwen.linear_params < 71e9
    cfg = compose(["experiment=first_place"])
    for name in (cfg.model.name_or_path, *ARCHITECTURES):
        Architecture.of(name)
    with pytest.raises(KeyError, match="no config.json"):
        Architecture.of("some/unknown-model")


def test_flops_are_linear_weights_plus_quadratic_attention():
    arch = Architecture("x", linear_params=1000, num_layers=2, attention_width=8)
    assert arch.flops(10) == 2 * 1000 * 10 + 4 * 2 * 8 * 10 * 10


def test_batches_pay_for_their_padding():
    arch = Architecture("x", linear_params=1, num_layers=1, attention_width=1)
    # batch of 2: [30, 25] padded to 30; then [10] alone
    flops, real, padded = batch_flops([10, 30, 25], arch, batch_size=2, max_tokens=None)
    assert (real, padded) == (65, 70)
    assert flops == pytest.approx(2 * float(arch.flops(30)) + float(arch.flops(10)))


def test_plans_come_in_the_guards_order_and_the_first_that_fits_is_chosen():
    arch = Architecture("x", linear_params=10, num_layers=1, attention_width=1)
    lengths = {False: [100, 50, 20], True: [100, 50, 20]}
    rows = project(
        lengths, arch, max_lengths=[40, 100], flops_per_s=1.0, batch_size=1, budget_s=math.inf
    )
    assert [(r.max_length, r.tta) for r in rows] == [
        (100, True),
        (40, True),
        (100, False),
        (40, False),
    ]
    one = sum(float(arch.flops(n)) for n in (100, 50, 20))
    assert rows[2].tflops * 1e12 == pytest.approx(one)  # no TTA: one orientation
    assert rows[0].tflops == pytest.approx(2 * rows[2].tflops)  # TTA: both
    capped = sum(float(arch.flops(n)) for n in (40, 40, 20))
    assert rows[3].tflops * 1e12 == pytest.approx(capped)
    scaled = project(lengths, arch, max_lengths=[100], flops_per_s=1.0, batch_size=1, scale=10)
    assert scaled[0].rows == 30 and scaled[0].tflops == pytest.approx(10 * rows[0].tflops)
    # two devices halve the time; the budget picks the first plan that fits
    budget = 0.6 * rows[0].seconds
    fit = project(
        lengths, arch, max_lengths=[40, 100], flops_per_s=1.0, batch_size=1, budget_s=budget
    )
    assert choose(fit) == fit[1] and not fit[0].fits
    two = project(
        lengths,
        arch,
        max_lengths=[100],
        flops_per_s=1.0,
        batch_size=1,
        n_devices=2,
        budget_s=budget,
    )
    assert choose(two) == two[0]
    none = project(lengths, arch, max_lengths=[100], flops_per_s=1.0, batch_size=1, budget_s=1.0)
    assert choose(none) is None


def test_every_device_rate_says_where_it_comes_from():
    for device in DEVICES.values():
        assert device.flops_per_s > 0 and len(device.source) > 40
