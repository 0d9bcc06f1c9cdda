"""CUDA tests (``make test-gpu``, ``pytest -m gpu``; skipped without a CUDA device).

The same code paths as the CPU tests, on one GPU, with tiny random-init models (seconds each):
bf16 and fp16 training through ``train.fit`` and prediction in both half precisions, QLoRA (nf4,
bitsandbytes) training with evaluation between steps, a GPTQ folder made by the quantize stage
loaded and run on the GPU, and the predict stage on one GPU against the same stage on the CPU.
Comparisons are device- and dtype-aware (``tests/devices.py``): half precision is compared with
float32 within what its mantissa allows, never bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from arena_distill.encode import labelled_encodings
from arena_distill.inference import predict_logits
from arena_distill.layout import LOGIT_COLS, load_run_data
from arena_distill.metrics import probs_from_logits
from arena_distill.models.factory import build_model
from arena_distill.settings import TrainSettings
from arena_distill.train import fit, make_examples
from tests.devices import PREDICT_ATOL, changed, host, snapshot_params
from tests.stages.conftest import small_cfg

pytestmark = pytest.mark.gpu

GPU = "cuda:0"
# largest |p_half - p_fp32| accepted on the tiny models: bf16 keeps 8 mantissa bits, fp16 11
PROB_ATOL = {"bfloat16": 3e-2, "float16": 5e-3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Demo data and tiny models (built on the CPU, as everywhere), 150 rows."""
    from arena_distill.stages import data, demo_data, tiny_models

    root = tmp_path_factory.mktemp("gpu")
    cfg = small_cfg(root)
    for stage in (demo_data, data, tiny_models):
        stage.run(cfg)
    return root, cfg


def rows_and_encodings(cfg, tok, n: int = 32):
    rd = load_run_data(cfg)
    enc = labelled_encodings(cfg, rd, tok)
    rows = rd.train.iloc[:n]
    return rows["id"].tolist(), rows["label"].astype(int).tolist(), enc


def logits_on(model, seqs, pad: int, device: str) -> np.ndarray:
    return predict_logits(
        model.to(device), seqs, pad_token_id=pad, batch_size=8, progress=False
    ).logits


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_and_prediction_on_cuda(tiny, precision):
    """``fit`` on the GPU with bf16 (the default there) or fp16 mixed precision: finite losses
    that go down, every LoRA matrix moved, the model on the GPU; then the trained model predicts
    in bfloat16 and float16 close to its own float32 logits, and CUDA float32 matches the CPU."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    root, cfg = tiny
    model, tok = build_model(cfg.model, train=True, device=GPU)
    before = snapshot_params(model, "lora_")
    ids, labels, enc = rows_and_encodings(cfg, tok)
    settings = TrainSettings(
        max_steps=6,
        lr=3e-3,
        global_batch_size=8,
        per_device_batch_size=8,
        warmup_steps=0,
        logging_steps=1,
        bf16=precision == "bf16",
        extra={"fp16": True} if precision == "fp16" else {},
    )
    examples = make_examples(ids, labels, enc, swap="none")
    result = fit(model, tok, examples, None, settings, root / f"train-{precision}")
    args = result.trainer.args
    assert (args.bf16, args.fp16) == (precision == "bf16", precision == "fp16")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 6 and np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    moved = changed(before, model)
    assert moved and len(moved) == len(before)
    assert all(p.device.type == "cuda" for p in model.parameters())

    model.eval()
    seqs = [e["input_ids"] for e in examples]
    pad = int(tok.pad_token_id)
    fp32 = logits_on(model, seqs, pad, GPU)
    cpu = logits_on(model, seqs, pad, "cpu")
    np.testing.assert_allclose(fp32, cpu, atol=1e-4)  # float32 on either device
    for dtype, atol in PROB_ATOL.items():
        half = logits_on(model.to(GPU, getattr(torch, dtype)), seqs, pad, GPU)
        assert np.isfinite(half).all(), dtype
        np.testing.assert_allclose(probs_from_logits(half), probs_from_logits(fp32), atol=atol)
        model.to(torch.float32)


def test_qlora_nf4_trains_on_cuda_with_evaluation_between_steps(tiny):
    """nf4 + double quant on the GPU: the 4-bit layers live on the GPU, evaluation between
    steps is allowed there (on the CPU it corrupts the LoRA gradients, STACK.md), every LoRA B
    matrix moves and the losses are finite."""
    bnb = pytest.importorskip("bitsandbytes")
    root, cfg = tiny
    mcfg = OmegaConf.merge(
        cfg.model,
        {"quantization": {"type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}},
    )
    model, tok = build_model(mcfg, train=True, device=GPU)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.weight.device.type == "cuda" for m in four_bit)
    before = snapshot_params(model, "lora_B")
    ids, labels, enc = rows_and_encodings(cfg, tok, n=48)
    train = make_examples(ids[:32], labels[:32], enc, swap="none")
    valid = make_examples(ids[32:], labels[32:], enc, swap="none")
    settings = TrainSettings(
        max_steps=4,
        lr=1e-3,
        global_batch_size=8,
        per_device_batch_size=8,
        warmup_steps=0,
        logging_steps=1,
        eval_steps=2,
        keep_best=False,
    )
    result = fit(model, tok, train, valid, settings, root / "qlora")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    evals = [h["eval_log_loss"] for h in result.log_history if "eval_log_loss" in h]
    assert len(losses) == 4 and np.isfinite(losses).all()
    assert len(evals) == 2 and np.isfinite(evals).all()
    moved = changed(before, model)
    assert moved and len(moved) == len(before)


def test_gptq_folder_loads_and_predicts_on_cuda(tiny):
    """The quantize stage's GPTQ folder (made here, on this machine) reloads onto the GPU with
    its head intact and predicts within GPTQ's drift of the float32 source on the CPU."""
    pytest.importorskip("gptqmodel")
    pytest.importorskip("optimum")
    from arena_distill.quantize import head_state, load_classifier, quantized_layers
    from arena_distill.stages import quantize

    root, cfg = tiny
    source = Path(cfg.model.name_or_path)
    out = root / "gptq"
    qcfg = small_cfg(
        root,
        f"stages.quantize.source={source}",
        f"stages.quantize.out_dir={out}",
        "stages.quantize.n_calibration=32",
    )
    quantize.run(qcfg)
    assert json.loads((out / "metrics.json").read_text())["head_intact"] is True

    model = load_classifier(out, device=GPU)
    layers = quantized_layers(model)
    assert layers
    assert all(b.device.type == "cuda" for m in layers.values() for b in m.buffers())
    src = load_classifier(source, dtype="float32", device="cpu")
    (_, src_head), (_, q_head) = head_state(src), head_state(model)
    for k, v in src_head.items():
        np.testing.assert_allclose(host(q_head[k]), host(v), atol=1e-3)  # the head is kept

    _, tok = build_model(cfg.model, train=False)
    ids, labels, enc = rows_and_encodings(cfg, tok)
    seqs = [enc[(i, False)] for i in ids]
    pad = int(tok.pad_token_id)
    quant = logits_on(model, seqs, pad, GPU)
    ref = logits_on(src, seqs, pad, "cpu")
    assert np.isfinite(quant).all()
    rel = np.linalg.norm(quant - ref) / np.linalg.norm(ref)
    assert rel < 0.1, rel  # 8-bit GPTQ of the tiny models: ~0.01-0.03 on the CPU (STACK.md)


def test_predict_stage_on_one_gpu_matches_the_cpu(tiny):
    """``arena-distill predict`` with ``devices=[cuda:0]`` (float16, ``dtype: auto``) against
    the same stage on the CPU (float32): every test id once, the GPU recorded, logits within
    float16's tolerance, the GPU's peak memory in the manifest."""
    from arena_distill.stages import predict

    root, cfg = tiny

    def run(name: str, devices: str):
        out = predict.run(
            small_cfg(
                root,
                f"stages.predict.model_dir={cfg.model.name_or_path}",
                f"stages.predict.out_dir={root}/predict-{name}",
                f"stages.predict.devices={devices}",
                "stages.predict.max_length=null",
                "stages.predict.progress=false",
                "stages.predict.time_budget_hours=null",
            )
        )
        preds = pd.read_parquet(out / "predictions.parquet")
        return out, preds, json.loads((out / "metrics.json").read_text())

    out, gpu, m = run("gpu", f"[{GPU}]")
    _, cpu, _ = run("cpu", "[cpu]")
    test = pd.read_parquet(Path(cfg.stages.data.out_dir) / "test.parquet")
    assert gpu["id"].tolist() == test["id"].tolist() == cpu["id"].tolist()
    assert m["devices"] == [GPU] and m["tta"] is True
    cols = [*LOGIT_COLS, *(f"swap_{c}" for c in LOGIT_COLS)]
    assert np.isfinite(gpu[cols].to_numpy()).all()
    np.testing.assert_allclose(gpu[cols].to_numpy(), cpu[cols].to_numpy(), atol=PREDICT_ATOL)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timings"]["peak_cuda_mb"] > 0
