"""The training-memory estimate against the H200 probe, and the checkpointing / micro-batch plan."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from arena_distill.config import config_dir
from arena_distill.models import build_tiny_models, memory
from arena_distill.models.factory import build_model
from arena_distill.models.memory import (
    GIB,
    LORA_INPUTS,
    Adapter,
    LayerShape,
    batch_candidates,
    estimate_training_memory,
    plan_micro_batch,
)
from arena_distill.planner import ARCHITECTURES
from arena_distill.settings import TrainSettings
from arena_distill.train import fit, make_examples, plan_memory

GEMMA = {**ARCHITECTURES["google/gemma-2-9b-it"], "attn_logit_softcapping": 50.0}
SHAPE = LayerShape.from_config(GEMMA)
LORA = Adapter(64, LORA_INPUTS, 0.05)  # gemma2_9b.yaml's LoRA
TOLERANCE = 0.05  # relative, on the probe's peaks


def gemma_parameters() -> tuple[int, int]:
    """(all parameters, LoRA + head parameters) of the Gemma-2-9B classifier, from its shape."""
    h, i, q, kv = SHAPE.hidden_size, SHAPE.intermediate_size, SHAPE.q_dim, SHAPE.kv_dim
    layer = h * q + 2 * h * kv + q * h + 3 * h * i + 4 * h  # projections, four norms
    base = GEMMA["vocab_size"] * h + SHAPE.num_layers * layer + h + 3 * h  # embed, norm, score
    ins_outs = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    lora = SHAPE.num_layers * sum(LORA.r * (a + b) for a, b in ins_outs) + 3 * h
    return base, lora


def probe_estimate(batch: int, checkpointing: bool, attention: str):
    base, lora = gemma_parameters()
    return estimate_training_memory(
        SHAPE,
        batch=batch,
        seq_len=1024,
        checkpointing=checkpointing,
        adapter=LORA,
        attention=attention,
        dtype_bytes=2,  # bfloat16
        weight_bytes=2 * base + 4 * lora,  # peft keeps LoRA (and its head copy) in float32
        trainable_bytes=4 * lora,
    )


def test_the_shape_gives_the_probed_parameter_counts():
    base, lora = gemma_parameters()
    assert base / 1e9 == pytest.approx(9.242, abs=0.001)  # ../shared/gpu/README.md
    assert lora / 1e6 == pytest.approx(216.1, abs=0.1)  # "lora_trainable_m"


@pytest.mark.parametrize(
    ("batch", "checkpointing", "attention", "measured_gib"),
    [
        (8, False, "flex_attention", 133.4),  # the three points
        (4, False, "flex_attention", 76.5),
        (8, True, "sdpa", 25.8),
        (8, True, "flex_attention", 25.8),  # the rest of the probe's grid
        (16, True, "flex_attention", 31.8),
        (8, True, "eager", 26.8),
    ],
)
def test_estimate_matches_the_h200_probe(batch, checkpointing, attention, measured_gib):
    est = probe_estimate(batch, checkpointing, attention)
    assert est.gib() == pytest.approx(measured_gib, rel=TOLERANCE)


def test_eager_without_checkpointing_does_not_fit_an_h200():
    # the probe ran out of memory there (139.8 GiB device)
    assert probe_estimate(8, False, "eager").gib() > 139.8


def test_batch_candidates_divide_the_step():
    assert batch_candidates(64) == [64, 32, 16, 8, 4, 2, 1]
    assert batch_candidates(12) == [12, 6, 4, 3, 2, 1]
    assert batch_candidates(64, cap=10) == [8, 4, 2, 1]


def facts():
    base, lora = gemma_parameters()
    return {
        "shape": SHAPE,
        "adapter": LORA,
        "attention": "flex_attention",
        "dtype_bytes": 2,
        "weight_bytes": 2 * base + 4 * lora,
        "trainable_bytes": 4 * lora,
    }


def plan(gib: float, **kw):
    kw.setdefault("rows_per_step", 64)
    return plan_micro_batch(
        facts(), seq_len=1024, device="cuda:0", available_bytes=int(gib * GIB), **kw
    )


@pytest.mark.parametrize(
    ("gib", "checkpointing", "micro_batch"),
    [
        (139.3, False, 4),  # H200: 8 rows (133 GiB) leave no headroom; 4 rows do
        (79.0, False, 2),  # H100 80 GB
        (39.0, False, 1),  # A100 40 GB: one row fits without checkpointing
        (32.0, True, 8),  # none fits without; the largest with it
    ],
)
def test_largest_micro_batch_without_checkpointing_first(gib, checkpointing, micro_batch):
    p = plan(gib)
    assert (p.checkpointing, p.micro_batch) == (checkpointing, micro_batch)
    assert p.estimate_gib <= gib * memory.MEMORY_SAFETY
    assert p.candidates[0] == {
        "checkpointing": False,
        "micro_batch": 64,
        "gib": p.candidates[0]["gib"],
    }


def test_a_configured_micro_batch_only_toggles_checkpointing():
    assert plan(139.3, micro_batch=8).checkpointing is True
    assert plan(139.3, micro_batch=4).checkpointing is False
    assert plan(139.3, micro_batch=4).micro_batch == 4
    # a configured checkpointing with an auto micro-batch: the largest that fits with it
    p = plan(32.0, checkpointing=True)
    assert (p.checkpointing, p.micro_batch) == (True, 8)


def test_nothing_fits_gives_the_smallest_choice():
    p = plan(10.0)
    assert (p.checkpointing, p.micro_batch) == (True, 1)
    assert "may run out of memory" in p.reason


def test_full_swap_pairs_count_two_rows():
    single = plan(139.3, rows_per_step=32, rows_per_example=2)
    assert (single.checkpointing, single.micro_batch) == (False, 2)  # 2 pairs = 4 rows


def test_cpu_never_checkpoints():
    def cpu(gib):
        return plan_micro_batch(
            facts(), seq_len=1024, rows_per_step=64, device="cpu", available_bytes=int(gib * GIB)
        )

    roomy, tight = cpu(200.0), cpu(10.0)
    assert (roomy.checkpointing, roomy.micro_batch) == (False, 8)
    assert "off on a CPU" in roomy.reason
    assert (tight.checkpointing, tight.micro_batch) == (False, 1)  # not even then


# --- on a real (tiny) model ----------------------------------------------------------------

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


def tiny_model(tiny, **overrides):
    cfg = OmegaConf.load(config_dir() / "model" / "tiny_llama.yaml")
    cfg.name_or_path = str(tiny["llama"])
    return build_model(OmegaConf.merge(cfg, {"gradient_checkpointing": "auto", **overrides}))


def examples(n: int = 16):
    ids = [str(k) for k in range(n)]
    enc = {(r, s): [5 + (k % 7)] * (8 + k) for k, r in enumerate(ids) for s in (False, True)}
    return make_examples(ids, [k % 3 for k in range(n)], enc, swap="none")


def test_model_facts_of_a_built_model(tiny):
    model, _ = tiny_model(tiny)
    f = memory.model_memory_facts(model)
    assert f["shape"].model_type == "llama" and f["shape"].hidden_size == 64
    assert f["adapter"].r == 8 and set(f["adapter"].targets) == set(LORA_INPUTS)
    assert f["attention"] == "sdpa" and f["dtype_bytes"] == 4
    assert 0 < f["trainable_bytes"] < f["weight_bytes"]
    assert not model.get_base_model().is_gradient_checkpointing  # auto: decided by fit


def test_plan_memory_switches_checkpointing_on_when_chosen(tiny, monkeypatch):
    model, _ = tiny_model(tiny)
    real = memory.plan_micro_batch
    need = real(
        memory.model_memory_facts(model),
        seq_len=23,
        rows_per_step=16,
        device="cuda:0",
        checkpointing=False,
        micro_batch=1,
        available_bytes=10**12,
    ).estimate_gib
    # a simulated GPU where one row fits only with checkpointing
    tight = int(need * GIB / memory.MEMORY_SAFETY) - 1
    monkeypatch.setattr(
        memory,
        "plan_micro_batch",
        lambda f, **kw: real(f, **{**kw, "device": "cuda:0", "available_bytes": tight}),
    )
    settings = TrainSettings(global_batch_size=16, per_device_batch_size="auto")
    resolved, p = plan_memory(model, examples(), settings, "auto")
    assert p.checkpointing and model.get_base_model().is_gradient_checkpointing
    assert resolved.per_device_batch_size == p.micro_batch >= 1
    assert p.seq_len == 23  # the longest example


def test_fit_resolves_auto_on_cpu(tiny, tmp_path):
    model, tok = tiny_model(tiny)
    settings = TrainSettings(
        global_batch_size=8,
        per_device_batch_size="auto",
        max_steps=1,
        warmup_steps=0,
        logging_steps=1,
        swap="none",
    )
    result = fit(model, tok, examples(), None, settings, tmp_path, gradient_checkpointing="auto")
    assert result.memory_plan["checkpointing"] is False
    assert result.memory_plan["micro_batch"] == 8  # a tiny model: the whole step at once
    assert result.trainer.args.per_device_train_batch_size == 8
    assert result.trainer.args.gradient_accumulation_steps == 1
    assert not model.get_base_model().is_gradient_checkpointing


@pytest.mark.gpu
def test_plan_reads_the_cuda_device(tiny):
    """On a GPU: the free memory is read, and a tiny model fits the whole step unchecked."""
    model, _ = tiny_model(tiny)
    model.to("cuda:0")
    settings = TrainSettings(global_batch_size=16, per_device_batch_size="auto")
    resolved, p = plan_memory(model, examples(), settings, "auto")
    assert p.device.startswith("cuda") and p.available_bytes > 0
    assert (p.checkpointing, p.micro_batch) == (False, 16)
    assert resolved.per_device_batch_size == 16
