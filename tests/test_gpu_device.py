"""A GPU machine without a package index: scripts/gpu_carry.py (what to bring, the cut
environment that stands in for the machine's image) and scripts/gpu_device.sh (the one command
run there), exercised here at tiny shapes; bench_gpu.py's levers preset."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
import torch

from arena_distill.config import compose
from arena_distill.models.factory import default_attention
from tests.conftest import REPO_ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_carry = _load("gpu_carry")
bench_gpu = _load("bench_gpu")


def test_carry_covers_what_the_project_needs_and_the_image_lacks():
    carried = {gpu_carry.normalise(n) for n in gpu_carry.CARRY}
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime"} <= carried - gpu_carry.IMAGE
    assert {"torch", "transformers", "accelerate", "pandas", "pip"} <= gpu_carry.IMAGE
    pins = gpu_carry.pins()
    assert set(pins) == set(gpu_carry.CARRY) and all(pins.values())
    assert gpu_carry.normalise("Hydra_Core") == "hydra-core"


def test_owners_maps_site_packages_entries_to_their_distribution():
    owner = gpu_carry.owners(gpu_carry.site_packages())
    assert owner["torch"] == "torch"
    assert owner["omegaconf"] == "omegaconf"
    assert owner["hydra"] == "hydra-core"


def _run_cut(args: list[str], env: dict | None = None, timeout: int = 300):
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "gpu_carry.py"), "--check", "--", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


def test_the_cut_environment_has_the_image_and_the_carried_packages_only():
    probe = (
        "import importlib.util as u, arena_distill;"
        "print(arena_distill.__file__);"
        "print(*[m for m in ('torch', 'hydra', 'peft', 'datasets', 'gptqmodel', 'bitsandbytes',"
        " 'nbformat') if u.find_spec(m) is None])"
    )
    done = _run_cut(["python3", "-c", probe])
    assert done.returncode == 0, done.stderr[-3000:]
    where, missing = done.stdout.splitlines()[-2:]
    assert where == str(REPO_ROOT / "src" / "arena_distill" / "__init__.py")  # from src/
    assert missing.split() == ["datasets", "gptqmodel", "nbformat"]


def test_gpu_device_sh_runs_its_parts_in_the_cut_environment(tmp_path):
    """The machine's command at tiny shapes (DRY_RUN=1) where only the image's packages and
    the carried ones import: preflight, one bench point, the GPU tests; every file back."""
    out = tmp_path / "out"
    done = _run_cut(
        ["bash", "scripts/gpu_device.sh", "bench,test"],
        env={
            "OUT": str(out),
            "DRY_RUN": "1",
            "BENCH_GPU_ARGS": "--points llama3_70b/sdpa/gc/b4",
        },
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "device.log",
        "env.json",
        "gpu.json",
        "logs.tgz",
        "test_gpu.log",
    ]
    env = json.loads((out / "env.json").read_text())
    cuda = torch.cuda.is_available()  # the preflight reads this machine (DRY_RUN or not)
    assert env["cuda"] is cuda
    assert env["gemma2_attention"] == default_attention("gemma2", "cuda" if cuda else "cpu")
    assert env["versions"]["hydra-core"] and env["versions"]["bitsandbytes"]
    assert env["versions"]["gptqmodel"] is None
    doc = json.loads((out / "gpu.json").read_text())
    assert doc["meta"]["dry_run"] is True
    (res,) = doc["points"]
    assert res["returncode"] == 0 and res["training"]["tokens_per_s"]["engine"] > 0
    # without CUDA every GPU test skips; with it they run
    assert re.search(r"\d+ (passed|skipped)", (out / "test_gpu.log").read_text())
    with tarfile.open(out / "logs.tgz") as tar:
        assert any(n.endswith("00_llama3_70b_sdpa_gc_b4.log") for n in tar.getnames())
    log = (out / "device.log").read_text()
    assert "done (status 0)" in log and "| llama3_70b/sdpa/gc/b4 | 2, on | " in log  # the table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without CUDA")
def test_gpu_device_sh_stops_at_the_preflight_without_cuda(tmp_path):
    out = tmp_path / "out"
    done = _run_cut(["bash", "scripts/gpu_device.sh", "bench"], env={"OUT": str(out)})
    assert done.returncode == 3
    assert "preflight failed" in (out / "device.log").read_text()
    assert not (out / "gpu.json").exists()


def test_levers_preset_points_are_named_apart_and_compose():
    points = bench_gpu.PRESETS["levers"]()
    names = [p["name"] for p in points]
    assert len(set(names)) == len(names) == 5
    assert names[0] == "gemma2_9b/flex/nogc/b4"
    for p in points:
        assert p["train"] and not p["predict"]
        cfg = compose([f"model={p['model']}", *p["overrides"]])  # the strict config accepts them
        if "+all" in p["name"]:
            assert cfg.model.liger_kernel and cfg.model.torch_compile
            assert cfg.model.lora.dropout == 0
    with pytest.raises(Exception, match="liger_kernl|not read|unknown"):
        compose(["model=gemma2_9b", "+model.liger_kernl=true"])


def test_a_point_saves_its_training_figures_before_it_predicts():
    """A child killed by its timeout while predicting still leaves its training result."""
    opts = {"dry_run": True, "extra": [], "bare": False, "profile": False, "lengths": None}
    opts.update(predict_batch=None, predict_max_tokens=None)
    saved: list[dict] = []
    p = bench_gpu.point("llama3_70b", "sdpa", True, 4, layers=4)
    result = bench_gpu.run_point(p, opts, save=lambda r: saved.append(json.loads(json.dumps(r))))
    assert len(saved) == 1  # after training; the caller saves the whole result at the end
    assert saved[0]["training"]["tokens_per_s"]["engine"] > 0 and "inference" not in saved[0]
    assert result["inference"]["tokens_per_s"]["engine"] > 0


def test_the_shipped_settings_point_resolves_the_micro_batch_as_fit_does():
    """gradient_checkpointing and per_device_batch_size auto: decided once by the memory plan
    (here: the CPU, so no checkpointing and the whole step), the engine trained on the planned
    batches."""
    opts = {"dry_run": True, "extra": [], "bare": True, "profile": False, "lengths": None}
    opts.update(predict_batch=None, predict_max_tokens=None)
    (p,) = [q for q in bench_gpu.default_grid() if q["name"] == "gemma2_9b/flex/gc-auto/b-auto"]
    assert p["gradient_checkpointing"] == "auto" and not p["predict"]
    train = bench_gpu.run_point(p, opts)["training"]
    plan = train["memory_plan"]
    assert plan["checkpointing"] is False and plan["micro_batch"] == train["micro_batch"] == 2
    assert train["same_batches"] and train["tokens_per_s"]["bare"] > 0


def test_the_default_grid_composes_and_quantizes_only_the_qlora_point():
    opts = {"dry_run": False, "train_steps": 6, "extra": []}
    grid = bench_gpu.default_grid()
    names = [p["name"] for p in grid]
    assert len(set(names)) == len(names) and names[0] == "gemma2_9b/flex/gc-auto/b-auto"
    for p in grid:
        attn, overrides = bench_gpu.point_overrides(p, opts)
        cfg = compose(overrides)
        assert cfg.model.attn_implementation == attn == p["attn_implementation"]
        if p["quantized"]:
            assert p["name"] == "llama3_70b/sdpa/gc/b4/nf4" and not p["predict"]
            assert cfg.model.quantization.type == "nf4"
        else:
            assert cfg.model.quantization is None
    shipped = compose(bench_gpu.point_overrides(grid[0], opts)[1])
    assert shipped.stages.teacher.per_device_batch_size == "auto"
    assert shipped.model.gradient_checkpointing == "auto"


@pytest.mark.slow
def test_bench_flex_shapes_counts_the_calls_that_compile(tmp_path):
    """scripts/bench_flex_shapes.py on the CPU (inductor's C++ flex_attention): every call
    recorded with its shape and new graphs; the first call always compiles."""
    out = tmp_path / "flex.json"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench_flex_shapes.py")]
    done = subprocess.run(
        [*cmd, "--shapes", "4", "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert len(doc["calls"]) == 4 and doc["calls"][0]["new_graphs"] > 0
    assert doc["calls_that_compiled"] == sum(c["new_graphs"] > 0 for c in doc["calls"])
