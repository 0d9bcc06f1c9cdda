"""The Kaggle path: packaging, the submission notebook end to end, and ``kaggle.predict_csv``
against the predict stage, on the shared trained run's tiny Llama."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from arena_distill import kaggle
from arena_distill.data.readers import read_sample_submission
from arena_distill.encode import prompt_config
from arena_distill.stages import predict
from arena_distill.submission import read_submission, validate_submission
from arena_distill.text import PromptConfig
from tests.stages.conftest import small_cfg, small_overrides

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "submission.ipynb"
FINAL = ["final_p_a", "final_p_b", "final_p_tie"]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "package_kaggle", REPO / "scripts/package_kaggle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def packaged(trained_run, tmp_path_factory) -> Path:  # noqa: F811
    cfg = trained_run.cfg
    out = tmp_path_factory.mktemp("kaggle") / "dataset"
    model_dir = Path(cfg.stages.tiny_models.out_dir) / "tiny_llama"
    _load_script().main(
        [
            "--model-dir",
            str(model_dir),
            "--out",
            str(out),
            "--kaggle-user",
            "tester",
            "--slug",
            "arena-distill-test",
            "--title",
            "arena-distill test model",
            "--no-deps",
            "--",
            *small_overrides(trained_run.root),
        ]
    )
    return out


def test_package_layout_metadata_model_and_wheel(packaged, trained_run):  # noqa: F811
    cfg = trained_run.cfg
    assert sorted(p.name for p in packaged.iterdir()) == [
        "dataset-metadata.json",
        "model",
        "wheels",
    ]
    meta = json.loads((packaged / "dataset-metadata.json").read_text())
    assert meta == {
        "title": "arena-distill test model",
        "id": "tester/arena-distill-test",
        "licenses": [{"name": "apache-2.0"}],
    }
    wheels = [p.name for p in (packaged / "wheels").iterdir()]
    assert len(wheels) == 1 and wheels[0].startswith("arena_distill-")
    assert wheels[0].endswith("-py3-none-any.whl")
    info = kaggle.read_prompt_file(packaged / "model")
    assert PromptConfig.from_dict(info["prompt"]) == prompt_config(cfg)
    assert info["model"]["family"] == "llama" and "name_or_path" not in info["model"]
    assert info["predict"]["tta"] is True and "out_dir" not in info["predict"]
    # the model reloads from the packaged folder, with the same weights
    source = Path(cfg.stages.tiny_models.out_dir) / "tiny_llama"
    a = AutoModelForSequenceClassification.from_pretrained(source).eval()
    b = AutoModelForSequenceClassification.from_pretrained(packaged / "model").eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits)


def _kernel(tmp: Path, no_configs: Path) -> str:
    """A kernelspec running this interpreter, with no configs/ reachable (the wheel case)."""
    spec = tmp / "kernels" / "arena-distill-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "arena-distill test",
                "language": "python",
                "env": {"ARENA_DISTILL_CONFIG_DIR": str(no_configs), "HF_HUB_OFFLINE": "1"},
            }
        )
    )
    return "arena-distill-test"


def run_notebook(packaged, tmp_path, monkeypatch, test_csv: Path, sample: Path):
    """Execute notebooks/submission.ipynb with the test's parameters; returns (notebook,
    submission path, work dir, seconds)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out_csv = tmp_path / "working" / "submission.csv"
    work_dir = tmp_path / "working" / "arena_distill"
    params = {
        "DATASET_DIR": str(packaged),
        "WHEELS_DIR": str(packaged / "wheels"),
        "MODEL_DIR": str(packaged / "model"),
        "ADAPTER_DIR": None,
        "TEST_CSV": str(test_csv),
        "SAMPLE_SUBMISSION": str(sample),
        "OUT_CSV": str(out_csv),
        "WORK_DIR": str(work_dir),
        "TTA": True,
        "TIME_BUDGET_HOURS": 9.0,
        "MAX_LENGTH": 128,
        "BATCH_SIZE": 4,
        "DEVICES": "cpu",
    }
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1 and all(not c.get("outputs") for c in nb.cells if "outputs" in c)
    names = {
        line.split("=")[0].strip()
        for line in cells[0].source.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert names == set(params), "the test must set every notebook parameter"
    cells[0].source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    no_configs = tmp_path / "no-configs"
    no_configs.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    kernel = _kernel(tmp_path / "jupyter", no_configs)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.perf_counter()
    client.execute()
    return nb, out_csv, work_dir, time.perf_counter() - t0


def shown(nb) -> str:
    return "".join(
        o.get("text", "") + json.dumps(o.get("data", {}))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )


def test_notebook_writes_a_valid_submission(packaged, trained_run, tmp_path, monkeypatch):  # noqa: F811
    demo = Path(trained_run.cfg.stages.demo_data.out_dir)
    nb, out_csv, work_dir, seconds = run_notebook(
        packaged, tmp_path, monkeypatch, demo / "test.csv", demo / "sample_submission.csv"
    )
    assert seconds < 120, f"the notebook took {seconds:.0f} s"

    test_ids = pd.read_csv(demo / "test.csv", dtype={"id": str})["id"].tolist()
    sub = read_submission(out_csv)
    assert list(sub.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert sorted(sub["id"]) == sorted(test_ids) and sub["id"].is_unique
    p = sub.iloc[:, 1:].to_numpy(dtype=np.float64)
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    sample = read_sample_submission(demo / "sample_submission.csv")["id"].tolist()
    validate_submission(sub, test_ids, sample_ids=sample, clip_eps=1e-6)
    metrics = json.loads((work_dir / "predictions" / "metrics.json").read_text())
    assert metrics["tta"] is True and metrics["max_length"] == 128
    assert metrics["devices"] == ["cpu"] and metrics["guard"]["action"] == "none"
    assert json.loads((work_dir / "submission.json").read_text())["prior"] == 0
    assert "winner_model_a" in shown(nb) and "guard" in shown(nb)
    # the forecast printed before prediction: the rows, the device, the chosen plan
    assert "10 rows of" in shown(nb) and "<- chosen" in shown(nb)
    if not torch.cuda.is_available():  # plan_csv names the visible GPUs' kind, else the CPU
        assert "1 x cpu" in shown(nb)


def malformed_test_csv(demo: Path, out: Path) -> tuple[Path, Path, dict[str, str]]:
    """The demo's test.csv with broken rows, and a sample submission with one id more;
    returns (test.csv, sample_submission.csv, {id: what is wrong})."""
    test = pd.read_csv(demo / "test.csv", dtype=str, keep_default_na=False)
    broken = {
        test.loc[0, "id"]: "prompt: not valid JSON",
        test.loc[1, "id"]: "response_a: a JSON object",
        test.loc[2, "id"]: "response_b: a nested list",
    }
    test.loc[0, "prompt"] = '["an unterminated list'
    test.loc[1, "response_a"] = '{"turn": "an object"}'
    test.loc[2, "response_b"] = '[["nested"]]'
    # a second row with row 3's id: dropped, the first row's prediction is kept
    dup = test.iloc[[3]].assign(prompt='["a second row with the same id"]')
    test = pd.concat([test, dup], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    test.to_csv(out / "test.csv", index=False)
    sample = pd.read_csv(demo / "sample_submission.csv", dtype={"id": str})
    extra = sample.iloc[[0]].assign(id="999999999")  # an id the test file lacks
    broken["999999999"] = "not in the test file"
    pd.concat([sample, extra], ignore_index=True).to_csv(out / "sample.csv", index=False)
    return out / "test.csv", out / "sample.csv", broken


def test_notebook_with_malformed_rows_submits_every_id(  # noqa: F811
    packaged, trained_run, tmp_path, monkeypatch
):
    demo = Path(trained_run.cfg.stages.demo_data.out_dir)
    test_csv, sample_csv, broken = malformed_test_csv(demo, tmp_path / "input")
    nb, out_csv, work_dir, _ = run_notebook(packaged, tmp_path, monkeypatch, test_csv, sample_csv)
    sample = read_sample_submission(sample_csv)["id"].tolist()
    sub = read_submission(out_csv)
    assert sub["id"].tolist() == sample  # every id once, in the sample's order
    validate_submission(sub, sample, sample_ids=sample, clip_eps=1e-6)
    listed = pd.read_csv(work_dir / "malformed_rows.csv", dtype=str).set_index("id")
    dup_id = pd.read_csv(test_csv, dtype=str)["id"].iloc[3]
    assert sorted(listed.index) == sorted([*broken, dup_id])
    assert (listed.loc[list(broken), "submitted"] == "prior").all()
    assert listed.loc[dup_id, "reason"] == "id: duplicate id"
    assert listed.loc[dup_id, "submitted"] == "predicted (another row)"
    # the broken rows get the class prior (uniform: no prior in a model-dir package)
    at_prior = sub[sub["id"].isin(broken)].iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(at_prior, 1 / 3, atol=1e-9)
    info = json.loads((work_dir / "submission.json").read_text())
    assert info["prior"] == len(broken) and info["predicted"] == len(sample) - len(broken)
    assert "ids at the class prior: 4" in shown(nb)


def test_predict_csv_gives_malformed_rows_the_saved_prior(packaged, trained_run, tmp_path):  # noqa: F811
    demo = Path(trained_run.cfg.stages.demo_data.out_dir)
    test_csv, sample_csv, broken = malformed_test_csv(demo, tmp_path / "input")
    model = tmp_path / "model"
    import shutil

    shutil.copytree(packaged / "model", model)
    info = json.loads((model / kaggle.PROMPT_FILE).read_text())
    (model / kaggle.PROMPT_FILE).write_text(json.dumps({**info, "prior": [0.5, 0.3, 0.2]}))
    out = kaggle.predict_csv(
        test_csv,
        model,
        tmp_path / "out" / "submission.csv",
        sample_submission=sample_csv,
        settings={"devices": "cpu", "progress": False, "time_budget_hours": None},
    )
    sub = read_submission(out).set_index("id")
    np.testing.assert_allclose(sub.loc[list(broken)].to_numpy(), [[0.5, 0.3, 0.2]] * 4)
    metrics = kaggle.read_metrics(out)
    assert metrics["submission"]["prior_reasons"]["not in the test file"] == 1
    assert metrics["fallback"] == {"rows": {}, "oom_splits": 0, "oom_rows": 0}


def test_predict_csv_submits_the_prior_when_prediction_fails(trained_run, tmp_path):  # noqa: F811
    demo = Path(trained_run.cfg.stages.demo_data.out_dir)
    broken_model = tmp_path / "not-a-model"
    broken_model.mkdir()
    out = kaggle.predict_csv(
        demo / "test.csv",
        broken_model,
        tmp_path / "out" / "submission.csv",
        sample_submission=demo / "sample_submission.csv",
        settings={"devices": "cpu"},
    )
    sample = read_sample_submission(demo / "sample_submission.csv")["id"].tolist()
    sub = read_submission(out)
    assert sub["id"].tolist() == sample
    np.testing.assert_allclose(sub.iloc[:, 1:].to_numpy(), 1 / 3)
    metrics = kaggle.read_metrics(out)
    assert metrics["submission"]["fallback"] is True
    assert "config.json" in metrics["failure"]["error"]  # the folder holds no model
    with pytest.raises(FileNotFoundError, match="config.json"):
        kaggle.predict_csv(
            demo / "test.csv", broken_model, tmp_path / "strict.csv", fail_safe=False
        )


def test_predict_csv_equals_the_predict_stage(trained_run, tmp_path):  # noqa: F811
    root = trained_run.root
    cfg = trained_run.cfg
    model_dir = Path(cfg.stages.tiny_models.out_dir) / "tiny_llama"
    demo = Path(cfg.stages.demo_data.out_dir)
    stage_cfg = small_cfg(
        root,
        f"stages.predict.model_dir={model_dir}",
        f"stages.predict.out_dir={tmp_path}/stage",
        f"stages.tokenize.cache_dir={tmp_path}/cache",
        "stages.predict.max_length=null",
        "stages.predict.progress=false",
        "stages.predict.batch_size=4",
        "stages.predict.time_budget_hours=null",
        "stages.predict.postprocess.enabled=true",
        "stages.predict.devices=cpu",  # the device of the notebook call below: same numbers
    )
    stage_out = predict.run(stage_cfg)
    out_csv = kaggle.predict_csv(
        demo / "test.csv",
        model_dir,
        tmp_path / "kaggle" / "submission.csv",
        sample_submission=demo / "sample_submission.csv",
        prompt=prompt_config(cfg),
        model_cfg=dict(cfg.model),
        settings={
            "tta": True,
            "devices": "cpu",
            "time_budget_hours": None,
            "max_length": cfg.prompt.max_length,
            "batch_size": 4,
            "postprocess": {"enabled": True},
            "progress": False,
        },
    )
    a = pd.read_parquet(stage_out / "predictions.parquet")
    b = pd.read_parquet(
        tmp_path / "kaggle" / "arena_distill" / "predictions" / "predictions.parquet"
    )
    assert a["id"].tolist() == b["id"].tolist()
    prob_cols = [c for c in a.columns if c.startswith(("p_", "tta_p_", "final_p_"))]
    assert set(FINAL) <= set(prob_cols) and any(c.startswith("tta_p_") for c in prob_cols)
    np.testing.assert_allclose(a[prob_cols].to_numpy(), b[prob_cols].to_numpy(), atol=1e-6)
    assert a["postprocess_rule"].tolist() == b["postprocess_rule"].tolist()
    sa = read_submission(stage_out / "submission.csv")
    sb = read_submission(out_csv)
    assert sa["id"].tolist() == sb["id"].tolist()
    np.testing.assert_allclose(sa.iloc[:, 1:].to_numpy(), sb.iloc[:, 1:].to_numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The wheels follow the packaged model folder's quantize method
# ---------------------------------------------------------------------------------------------

QUANT_WHEELS = {"optimum", "gptqmodel", "bitsandbytes"}


def _names(reqs):
    import re

    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for r in reqs}


def test_kaggle_requirements_by_folder_method(tmp_path):
    script = _load_script()
    base = {"hydra-core", "omegaconf", "antlr4-python3-runtime", "peft"}
    configs = {
        "gptq": {"quantization_config": {"quant_method": "gptq", "bits": 8}},
        "bnb_int8": {"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}},
        "none": {"dtype": "float16", "arena_distill": {"quantize_method": "none"}},
    }
    gptq = {"optimum", "gptqmodel", "pypcre", "logbar", "device-smi", "tokenicer", "defuser"}
    expected = {"gptq": gptq, "bnb_int8": {"bitsandbytes"}, "none": set()}
    for method, config in configs.items():
        folder = tmp_path / method
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
        assert script.model_method(folder) == method
        reqs = script.kaggle_requirements(method)
        assert _names(reqs) == base | expected[method], method
        assert all("==" in r for r in reqs), reqs  # at the project's pins
    assert "bitsandbytes==0.50.2" in script.kaggle_requirements("bnb_int8")
    without = script.kaggle_requirements("gptq", without=["gptqmodel"])
    assert _names(without) == base | gptq - {"gptqmodel"}
    # a folder whose records disagree is refused, naming the folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(
        json.dumps({"model_type": "llama", "arena_distill": {"quantize_method": "bnb_int8"}})
    )
    with pytest.raises(SystemExit, match="cannot tell which wheels"):
        script.model_method(bad)


def test_package_downloads_the_wheels_of_the_folder_method(trained_run, tmp_path, monkeypatch):  # noqa: F811
    """A bitsandbytes LLM.int8 folder gets bitsandbytes, never optimum / gptqmodel (the download
    itself is stubbed here; tests/integration/test_kaggle_offline_install.py does it for real)."""
    from arena_distill.models.factory import load_tokenizer
    from arena_distill.quantize_methods import quantize_bnb_int8, save_model

    source = Path(trained_run.cfg.stages.tiny_models.out_dir) / "tiny_llama"
    folder = tmp_path / "int8"
    save_model(
        quantize_bnb_int8(source, device="cpu"),
        load_tokenizer({"name_or_path": str(source)}),
        folder,
        "bnb_int8",
    )
    script = _load_script()
    asked: list[str] = []

    def fake_download(reqs, dest, python_version, find_links=()):
        asked.extend(reqs)
        return []

    monkeypatch.setattr(script, "download_deps", fake_download)
    out = tmp_path / "dataset"
    args = ["--model-dir", str(folder), "--out", str(out), "--kaggle-user", "tester"]
    script.main([*args, "--", *small_overrides(trained_run.root)])
    names = _names(asked)
    assert "bitsandbytes" in names and not names & {"optimum", "gptqmodel"}
    assert (
        json.loads((out / "model" / "config.json").read_text())["quantization_config"][
            "quant_method"
        ]
        == "bitsandbytes"
    )
    # the tiny model folder (no quantization) needs no quantization wheel at all
    asked.clear()
    tiny = ["--model-dir", str(source), "--out", str(tmp_path / "d2"), "--kaggle-user", "tester"]
    script.main([*tiny, "--", *small_overrides(trained_run.root)])
    assert asked and not _names(asked) & QUANT_WHEELS
