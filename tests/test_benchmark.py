"""The benchmarks: `make bench` at its smallest size, `bench_gpu.py --dry-run`, and the exact
pieces they are built from (limit shapes, the engine's training batches, steady rates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from arena_distill.benchmark import (
    compare_inference,
    engine_batches,
    limit_shapes,
    ratio,
    steady_rate,
)
from arena_distill.inference import make_batches
from tests.conftest import REPO_ROOT


def test_summarise_profile_counts_the_gpus_own_work_by_kind():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from arena_distill.benchmark import profile_kind, summarise_profile

    def evt(key, device, device_us, cpu_us, count=1):
        return SimpleNamespace(
            key=key,
            device_type=device,
            self_device_time_total=device_us,
            self_cpu_time_total=cpu_us,
            count=count,
        )

    events = [
        evt("sm90_xmma_gemm_bf16bf16_bf16f32", DeviceType.CUDA, 600_000, 0, 84),
        evt("nvjet_tst_128x256_64x4", DeviceType.CUDA, 100_000, 0, 10),
        evt("flash_fwd_kernel", DeviceType.CUDA, 50_000, 0, 42),
        evt("void at::native::vectorized_elementwise_kernel<4, ...>", DeviceType.CUDA, 150_000, 0),
        evt("Memcpy DtoD (Device -> Device)", DeviceType.CUDA, 20_000, 0),
        evt("aten::mm", DeviceType.CPU, 700_000, 30_000, 94),  # host op: not the GPU's work
    ]
    out = summarise_profile(events, step_s=1.6, device="cuda", top=3)
    assert out["what"] == "GPU kernels (device time)"
    assert out["busy_s"] == pytest.approx(0.92) and out["busy_share"] == pytest.approx(0.575)
    assert out["by_kind"]["matmul"]["s"] == pytest.approx(0.7)
    assert out["by_kind"]["matmul"]["share_of_busy"] == pytest.approx(0.7 / 0.92, abs=1e-4)
    assert list(out["by_kind"])[0] == "matmul"  # largest first
    assert {k: v["s"] for k, v in out["by_kind"].items()} == pytest.approx(
        {"matmul": 0.7, "elementwise/other": 0.15, "attention": 0.05, "copy/cast": 0.02}
    )
    assert [t["name"][:10] for t in out["top"]] == ["sm90_xmma_", "void at::n", "nvjet_tst_"]
    on_cpu = summarise_profile(events, step_s=0.1, device="cpu")
    assert on_cpu["busy_s"] == pytest.approx(0.03) and list(on_cpu["by_kind"]) == ["matmul"]
    assert profile_kind("MmBackward0") == "autograd (host)"
    assert profile_kind("aten::bernoulli_") == "dropout"
    assert profile_kind("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "norm"
    assert profile_kind("void at::native::direct_copy_kernel_cuda") == "copy/cast"


def test_limit_shapes_keep_rows_and_real_tokens_without_padding():
    lengths = [10, 3, 7, 7, 2, 9]
    batches = make_batches(lengths, batch_size=2, max_tokens=100)
    shapes = limit_shapes(lengths, batches)
    assert [n for n, _ in shapes] == [len(b) for b in batches]
    # each batch's twin: its rows at the mean real length (10,9 -> 9.5 -> 10; 7,7 -> 7; 3,2 -> 2)
    assert shapes == [(2, 10), (2, 7), (2, 2)]


def test_steady_rate_skips_the_warmup_steps():
    times = [0.0, 5.0, 6.0, 7.0, 9.0]  # start, then the end of steps 1..4
    tokens = [100, 10, 10, 20]
    assert steady_rate(times, tokens, warmup=1) == pytest.approx(40 / 4.0)
    assert steady_rate(times, tokens, warmup=0) == pytest.approx(140 / 9.0)
    assert ratio(1.0, 0.0) != ratio(1.0, 0.0)  # nan, not a crash


def test_engine_batches_are_the_trainers_length_grouped_batches(tmp_path):
    from arena_distill.collate import PreferenceCollator
    from arena_distill.settings import TrainSettings
    from arena_distill.train import PreferenceTrainer, training_arguments

    rng = np.random.default_rng(0)
    examples = [
        {"input_ids": [1] * int(n), "labels": int(rng.integers(0, 3))}
        for n in rng.integers(1, 40, 24)
    ]
    settings = TrainSettings(per_device_batch_size=2, global_batch_size=4, max_steps=8)
    args = training_arguments(settings, tmp_path, has_eval=False)
    plan = engine_batches(examples, args, steps=8)  # 6 steps per epoch: 2 from the second
    assert [len(step) for step in plan] == [2] * 8
    trainer = PreferenceTrainer(
        model=torch.nn.Linear(1, 1),
        args=args,
        train_dataset=examples,
        data_collator=PreferenceCollator(pad_token_id=0),
    )
    drawn = [sorted(b["attention_mask"].sum(1).tolist()) for b in trainer.get_train_dataloader()]
    planned = [
        sorted(len(examples[i]["input_ids"]) for i in micro) for step in plan for micro in step
    ]
    assert len(drawn) == 12 and planned[:12] == drawn  # the first epoch, batch by batch


class _Tiny(torch.nn.Module):
    """A stand-in classifier: logits from the mean embedding of the real tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("C", (), {"vocab_size": 50})()
        self.emb = torch.nn.Embedding(50, 3)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        out = (self.emb(input_ids) * m).sum(1) / m.sum(1)
        return type("O", (), {"logits": out})()


def test_compare_inference_reports_the_three_methods_on_the_same_logits():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 50, int(n)).tolist() for n in rng.integers(1, 60, 40)]
    res = compare_inference(
        _Tiny(), seqs, pad_token_id=0, batch_size=4, max_tokens=None, device="cpu", repeats=2
    )
    assert set(res["tokens_per_s"]) == {"engine", "naive", "limit"}
    assert all(v > 0 for v in res["tokens_per_s"].values())
    assert res["tokens"] == sum(map(len, seqs))
    assert 0 <= res["padding_share"]["engine"] <= res["padding_share"]["naive"] < 1
    assert res["engine_naive_max_abs_diff"] < 1e-6  # the same predictions, in input order
    assert len(res["seconds"]["engine"]) == 2


def _check_bench_outputs(out: Path) -> None:
    inference = json.loads((out / "inference.json").read_text())
    training = json.loads((out / "training.json").read_text())
    for doc in (inference, training):
        assert len(doc["meta"]["loadavg"]) == 3 and doc["meta"]["data"]
        assert doc["models"]
    assert inference["engine_vs_naive"] > 0 and inference["engine_vs_limit"] > 0
    assert 0 <= inference["padding_share"] <= 1
    for name, res in inference["models"].items():
        r = res["inference"]
        assert r["engine_vs_naive"] > 0 and r["engine_vs_limit"] > 0, name
        assert r["limit_vs_naive"] == pytest.approx(
            r["tokens_per_s"]["limit"] / r["tokens_per_s"]["naive"], rel=1e-3
        )
        assert all(v > 0 for v in r["tokens_per_s"].values()), name
        pad = r["padding_share"]
        assert 0 <= pad["engine"] <= pad["naive"] <= 1, name
    assert set(inference["targets"]) == {"engine_vs_naive", "engine_vs_limit", "padding_share"}
    assert training["engine_vs_bare"] > 0
    for name, res in training["models"].items():
        t = res["training"]
        assert t["engine_vs_bare"] > 0 and t["same_batches"], name
        assert 0 <= t["padding_share"] <= 1, name
    assert set(training["targets"]) == {"engine_vs_bare"}


def test_make_bench_at_its_smallest_size(tmp_path):
    """`make bench BENCH_ARGS=--quick`: both JSON files, their keys and sane values."""
    venv = Path(sys.prefix)
    out = tmp_path / "bench"
    cmd = [
        "make",
        "-C",
        str(REPO_ROOT),
        "--no-print-directory",
        "-o",
        str(venv / ".installed"),  # the running environment: no setup
        f"VENV={venv}",
        "bench",
        f"BENCH_ARGS=--quick --out-dir {out}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "engine tok/s" in done.stdout  # the printed table
    _check_bench_outputs(out)


def test_bench_gpu_dry_run_records_each_point_and_survives_a_failed_one(tmp_path):
    """The GPU grid's code path at tiny shapes on the CPU: a point measured through the
    factory, fit and the predict engine; a point killed by its timeout is recorded, not fatal."""
    grid = [
        {
            "name": "gemma2_9b/eager/gc/b8",
            "model": "gemma2_9b",
            "layers": None,
            "attn_implementation": "eager",
            "gradient_checkpointing": True,
            "micro_batch": 8,
            "dtype": "bfloat16",
            "train": True,
            "predict": True,
            "overrides": [],
        },
        {
            "name": "llama3_70b/sdpa/gc/b4",
            "model": "llama3_70b",
            "layers": 4,
            "attn_implementation": "sdpa",
            "gradient_checkpointing": True,
            "micro_batch": 4,
            "dtype": "bfloat16",
            "train": True,
            "predict": False,
            "overrides": [],
            "timeout_s": 0.5,  # killed long before it finishes
        },
    ]
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    out = tmp_path / "gpu.json"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "bench_gpu.py"),
        "--dry-run",
        "--profile",
        "--grid",
        str(tmp_path / "grid.json"),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["dry_run"] is True
    ok, killed = doc["points"]
    assert ok["returncode"] == 0 and ok["full_layers"] == 42 and ok["layers"] == 2
    train, inf = ok["training"], ok["inference"]
    # same_batches: the engine also trained the extra, profiled step (its token count agrees)
    assert train["tokens_per_s"]["engine"] > 0 and train["same_batches"]
    prof = train["profile"]
    assert prof["what"] == "CPU operators (self time)" and 0 < prof["busy_s"] <= prof["step_s"]
    assert "matmul" in prof["by_kind"] and prof["top"][0]["s"] > 0
    assert train["model_flops_factor"] == 2.0  # LoRA: no weight gradients
    assert train["projected_tokens_per_s"] == pytest.approx(
        train["tokens_per_s"]["engine"] * 2 / 42, rel=1e-3
    )
    assert inf["tokens_per_s"]["engine"] > 0 and 0 <= inf["padding_share"]["engine"] <= 1
    assert inf["flops_per_s"]["engine"] > 0
    assert killed["returncode"] == "timeout" and "error" in killed
    # the README's tables of it: a training row per point (the killed one with its reason),
    # an inference row for the point that predicted
    table = subprocess.run(
        [*cmd[:2], "--table", str(out)], capture_output=True, text=True, timeout=120
    ).stdout
    train_rows = [r for r in table.split("\n\n")[0].splitlines()[2:]]
    assert [r.split(" | ")[0] for r in train_rows] == [
        "| gemma2_9b/eager/gc/b8",
        "| llama3_70b/sdpa/gc/b4",
    ]
    assert "child exited with timeout" in train_rows[1]
    assert table.split("\n\n")[1].splitlines()[2].startswith("| gemma2_9b/eager/gc/b8 | ")
    assert "training" not in killed
