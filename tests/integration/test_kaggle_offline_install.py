"""The Kaggle package of a quantized model installs offline and predicts.

Built here: demo data -> data -> tiny models -> ``quantize`` of the tiny Llama with
``method=bnb_int8`` (bitsandbytes LLM.int8) or ``method=gptq`` -> ``scripts/package_kaggle.py``
with its dependencies (downloaded from PyPI for Kaggle's Python and platform, as ``make
kaggle-package`` does: this step needs PyPI; for GPTQ, the gptqmodel and pypcre wheels are
built here from their PyPI sdists and passed with ``--find-links``, standing in for the wheels
``scripts/kaggle_build_gptqmodel.md`` builds on Kaggle) -> a FRESH virtual environment that
installs ``wheels/`` offline and runs ``arena_distill.kaggle.predict_csv`` on the demo
``test.csv``; its submission must equal the one this (development) environment predicts from
the same packaged folder, the model must be the quantized one, and every package Kaggle lacks
must have come from the wheels.

How Kaggle is emulated:

* Kaggle's image ships torch, transformers, tokenizers, safetensors, accelerate, numpy,
  pandas, pyarrow, scikit-learn, scipy, tqdm, rich, huggingface_hub, pillow and requests
  (:data:`KAGGLE_SHIPS`; the last two only gptqmodel imports).
  Those distributions and their own requirements (the closure of their non-extra
  ``Requires-Dist``, read from this environment's metadata: filelock, sympy, jinja2, regex,
  pyyaml, httpx, ...) are symlinked, top-level package folders, modules, ``.libs`` folders and
  ``.dist-info`` folders alike, into one folder, and a ``.pth`` file in the fresh venv's
  site-packages puts that folder on ``sys.path``, as Kaggle's preinstalled site-packages
  would be. The versions are this environment's (torch 2.13 CPU here, not Kaggle's CUDA
  build: the test shows that the packaging is complete, not that Kaggle's torch version works).
* Nothing else is visible: the venv does not see the system site-packages, ``PYTHONPATH`` is
  cleared, and the test checks that none of :data:`FROM_WHEELS_ONLY` (arena_distill, peft,
  hydra, omegaconf, optimum, gptqmodel, bitsandbytes, torchao, hqq, and gptqmodel's pcre,
  logbar, device_smi, tokenicer, defuser) is importable in the venv before the install, and
  that those in use afterwards are imported from the venv's own site-packages.
* The install is the notebook's: ``pip install --no-index --no-deps --find-links wheels/
  wheels/*.whl`` with pip's configuration files ignored (``PIP_CONFIG_FILE=/dev/null``) and the
  HTTP(S) proxies pointed at a closed local port, so any attempt to reach a network fails;
  the prediction runs with ``HF_HUB_OFFLINE=1`` under the same proxies, on the CPU.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from arena_distill import kaggle
from arena_distill.config import compose
from tests.stages.conftest import small_overrides
from tests.stages.test_kaggle import _load_script

pytestmark = pytest.mark.slow

KAGGLE_SHIPS = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "tqdm",
    "rich",
    "huggingface_hub",
    "pillow",
    "requests",
)
# distributions (and their import names) that must come from the packaged wheels, if at all
FROM_WHEELS_ONLY = {
    "arena-distill": "arena_distill",
    "peft": "peft",
    "hydra-core": "hydra",
    "omegaconf": "omegaconf",
    "optimum": "optimum",
    "gptqmodel": "gptqmodel",
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
    "hqq": "hqq",
    "pypcre": "pcre",
    "logbar": "logbar",
    "device-smi": "device_smi",
    "tokenicer": "tokenicer",
    "defuser": "defuser",
}
BASE_WHEELS = {"arena-distill", "hydra-core", "omegaconf", "antlr4-python3-runtime", "peft"}
METHOD_WHEELS = {
    "bnb_int8": {"bitsandbytes"},
    "gptq": {"optimum", "gptqmodel", "pypcre", "logbar", "device-smi", "tokenicer", "defuser"},
}
# wheels built here from PyPI sdists for --find-links (on Kaggle: scripts/kaggle_build_gptqmodel.md)
FIND_LINKS_BUILT = {"gptq": ("gptqmodel", "pypcre")}
SETTINGS = {
    "devices": "cpu",
    "tta": True,
    "max_length": 128,
    "batch_size": 4,
    "time_budget_hours": None,
    "progress": False,
}
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails


def kaggle_closure() -> dict[str, md.Distribution]:
    """:data:`KAGGLE_SHIPS` and everything they require (no extras), from this environment."""
    found: dict[str, md.Distribution] = {}
    todo = list(KAGGLE_SHIPS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        dist = md.distribution(name)
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def populate_preinstalled(site: Path) -> list[str]:
    """Symlink the top-level entries of :func:`kaggle_closure` into ``site``; their names."""
    site.mkdir(parents=True)
    closure = kaggle_closure()
    forbidden = {canonicalize_name(n) for n in FROM_WHEELS_ONLY} & set(closure)
    assert not forbidden, f"Kaggle's packages would bring {forbidden}"
    linked = []
    for dist in closure.values():
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or (site / top).exists():
                continue
            target = Path(dist.locate_file(top)).resolve()
            if target.exists():
                (site / top).symlink_to(target)
                linked.append(top)
    return sorted(closure)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_FIND_LINKS", "PIP_INDEX_URL")
        and not k.startswith("PIP_EXTRA")
    }
    env.update(
        PYTHONNOUSERSITE="1",
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HTTP_PROXY=DEAD_PROXY,
        HTTPS_PROXY=DEAD_PROXY,
        http_proxy=DEAD_PROXY,
        https_proxy=DEAD_PROXY,
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> str:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{cmd[:4]} failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
    return res.stdout


PROBE = """
import importlib.util, json, sys
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in sys.argv[1:]}))
"""

PREDICT = """
import json, sys, importlib
import torch
from transformers import AutoModelForSequenceClassification
from arena_distill.kaggle import predict_csv

test_csv, model_dir, out_csv, settings, names = sys.argv[1:6]
predict_csv(test_csv, model_dir, out_csv, settings=json.loads(settings))
model = AutoModelForSequenceClassification.from_pretrained(model_dir)
kinds = {}
for n, m in model.named_modules():
    if type(m).__name__ == "Linear8bitLt" or hasattr(m, "qweight"):
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
origins = {}
for name in json.loads(names):
    module = sys.modules.get(name)
    if module is not None:  # a namespace package (optimum) has no __file__, only __path__
        origins[name] = module.__file__ or list(module.__path__)[0]
    else:
        origins[name] = None
print("RESULT " + json.dumps({
    "quantized_layers": kinds,
    "head": type(model.score).__name__,
    "head_dtype": str(model.score.weight.dtype),
    "origins": origins,
    "torch": torch.__file__,
}))
"""


def build_find_links(method: str, dest: Path) -> list[str]:
    """``--find-links`` wheels built here from PyPI sdists (the Kaggle-built ones' stand-ins)."""
    names = FIND_LINKS_BUILT.get(method, ())
    if not names:
        return []
    reqs = [f"{n}=={md.version(n)}" for n in names]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), *reqs]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return ["--find-links", str(dest)]


@pytest.mark.parametrize(
    "method,layer",
    [("bnb_int8", "Linear8bitLt"), ("gptq", "TorchLinear")],
)
def test_package_installs_offline_and_predicts(tmp_path, method, layer):
    t0 = time.perf_counter()
    from arena_distill.stages import data, demo_data, quantize, tiny_models

    overrides = small_overrides(tmp_path / "run")
    cfg = compose(overrides)
    for stage in (demo_data, data, tiny_models):
        stage.run(cfg)
    source = Path(cfg.stages.tiny_models.out_dir) / "tiny_llama"
    quantized = tmp_path / "quantized"
    qcfg = compose(
        [
            *overrides,
            f"stages.quantize.source={source}",
            f"stages.quantize.out_dir={quantized}",
            f"stages.quantize.method={method}",
            "stages.quantize.n_calibration=12",
        ]
    )
    quantize.run(qcfg)
    metrics = json.loads((quantized / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["head_intact"]
    find_links = build_find_links(method, tmp_path / "built-wheels")

    # the package, its wheels downloaded for Kaggle (PyPI) as `make kaggle-package` does
    package = tmp_path / "dataset"
    _load_script().main(
        [
            "--model-dir",
            str(quantized),
            "--out",
            str(package),
            "--kaggle-user",
            "tester",
            *find_links,
            "--",
            *overrides,
        ]
    )
    wheels = sorted(p.name for p in (package / "wheels").glob("*.whl"))
    dists = {canonicalize_name(w.split("-")[0]) for w in wheels}
    assert dists == BASE_WHEELS | METHOD_WHEELS[method], wheels
    t_package = time.perf_counter() - t0

    # the reference: the same packaged folder predicted in this environment
    demo = Path(cfg.stages.demo_data.out_dir)
    ref_csv = kaggle.predict_csv(
        demo / "test.csv", package / "model", tmp_path / "ref" / "submission.csv", settings=SETTINGS
    )

    # a fresh venv that sees only what Kaggle ships
    venv = tmp_path / "kaggle-venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    run([base_python, "-m", "venv", str(venv)], clean_env(), tmp_path)
    python = str(venv / "bin" / "python")
    site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            clean_env(),
            tmp_path,
        ).strip()
    )
    shipped = populate_preinstalled(tmp_path / "kaggle-preinstalled")
    (site / "kaggle_preinstalled.pth").write_text(str(tmp_path / "kaggle-preinstalled") + "\n")
    env = clean_env()
    names = [*FROM_WHEELS_ONLY.values(), "torch", "transformers"]
    before = json.loads(run([python, "-c", PROBE, *names], env, tmp_path))
    assert before["torch"] and before["transformers"], before
    assert not any(before[n] for n in FROM_WHEELS_ONLY.values()), before

    # the notebook's install: only the dataset's wheels, no index, no network
    run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(package / "wheels"),
            *[str(package / "wheels" / w) for w in wheels],
        ],
        env,
        tmp_path,
    )
    out_csv = tmp_path / "working" / "submission.csv"
    stdout = run(
        [
            python,
            "-c",
            PREDICT,
            str(demo / "test.csv"),
            str(package / "model"),
            str(out_csv),
            json.dumps(SETTINGS),
            json.dumps(list(FROM_WHEELS_ONLY.values())),
        ],
        env,
        tmp_path,
    )
    result = json.loads(stdout.split("RESULT ", 1)[1])
    seconds = time.perf_counter() - t0
    print(
        f"{method} offline install: package {t_package:.0f}s, total {seconds:.0f}s; {wheels}; "
        f"{len(shipped)} preinstalled distributions; {result}"
    )

    # the quantized model, its head a float Linear, loaded in the venv
    assert result["quantized_layers"] == {layer: 14}
    assert result["head"] == "Linear" and result["head_dtype"] == "torch.float32"
    # what Kaggle lacks came from the wheels (the venv's site-packages), torch from "Kaggle"
    used = {k: v for k, v in result["origins"].items() if v is not None}
    needed = {"bnb_int8": {"bitsandbytes"}, "gptq": {"gptqmodel", "optimum", "pcre", "logbar"}}
    assert {"arena_distill", "peft", "omegaconf"} | needed[method] <= set(used), used
    for name, path in used.items():
        assert Path(path).resolve().is_relative_to(site.resolve()), (name, path)
    other = {"bnb_int8": ("optimum", "gptqmodel"), "gptq": ("bitsandbytes",)}[method]
    for name in (*other, "torchao", "hqq"):
        assert result["origins"][name] is None, name
    assert "kaggle-preinstalled" in result["torch"]

    # the same submission as in this environment
    import pandas as pd

    ref = pd.read_csv(ref_csv)
    got = pd.read_csv(out_csv)
    test_ids = pd.read_csv(demo / "test.csv")["id"].tolist()
    assert got["id"].tolist() == ref["id"].tolist() and sorted(got["id"]) == sorted(test_ids)
    p = got.iloc[:, 1:].to_numpy(dtype=np.float64)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p, ref.iloc[:, 1:].to_numpy(dtype=np.float64), atol=1e-6)
