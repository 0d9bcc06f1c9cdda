"""Integration: the stages built so far, chained on a small demo set with tiny models (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from arena_distill.config import compose
from arena_distill.data.folds import read_folds
from arena_distill.data.schema import DataError, check_table
from arena_distill.data.tableio import load_table
from arena_distill.io import StageInputError
from arena_distill.stages import data as data_stage
from arena_distill.stages import demo_data, tiny_models, tokenize


def demo_cfg(tmp_path, *extra: str):
    return compose(
        [
            "experiment=demo",
            f"runs_root={tmp_path}/runs",
            f"stages.demo_data.out_dir={tmp_path}/demo",
            "stages.demo_data.n_train=240",
            "stages.demo_data.n_test=40",
            "stages.demo_data.n_pretrain=60",
            "stages.tiny_models.vocab_size=512",
            "data.holdout_frac=0.1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """demo_data -> data -> tiny_models -> tokenize, once for the module."""
    tmp_path = tmp_path_factory.mktemp("demo")
    cfg = demo_cfg(tmp_path)
    demo_data.run(cfg)
    data_dir = data_stage.run(cfg)
    models_dir = tiny_models.run(cfg)
    tokens_dir = tokenize.run(cfg)
    return tmp_path, cfg, data_dir, models_dir, tokens_dir


def test_data_stage_outputs(demo_run):
    tmp_path, cfg, data_dir, _, _ = demo_run
    train = load_table(data_dir / "train.parquet")
    test = load_table(data_dir / "test.parquet")
    check_table(train)
    check_table(test)
    assert len(train) == 240 and len(test) == 40
    assert test["label"].notna().all()  # the demo ships its test labels
    folds = read_folds(data_dir / "folds.csv")
    assert set(folds["id"]) == set(train["id"])
    holdout = folds[folds["split"] == "holdout"]
    assert len(holdout) == 24  # holdout_frac 0.1
    # the demo experiment uses 3 folds
    assert sorted(folds.loc[folds["split"] == "cv", "fold"].unique()) == [0, 1, 2]
    summary = json.loads((data_dir / "summary.json").read_text())
    assert summary["rows_read"] == {"demo": 280, "demo_ut": 60}
    assert summary["rows_kept"] == {"demo": 280, "demo_ut": 60}
    assert len(load_table(data_dir / "pretrain.parquet")) == 60 - len(
        [d for d in summary["dropped"] if d["source"] == "demo_ut"]
    )
    assert summary["normalisations"]["demo/null_to_empty"] > 0
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["stage"] == "data"
    assert {i["path"] for i in manifest["inputs"]} >= {cfg.data.train.path, cfg.data.test.path}


def test_data_stage_rerun_reuses_folds_and_refuses_mismatch(demo_run):
    tmp_path, cfg, data_dir, _, _ = demo_run
    before = (data_dir / "folds.csv").read_bytes()
    data_stage.run(demo_cfg(tmp_path))  # the same settings: the existing file is reused
    assert (data_dir / "folds.csv").read_bytes() == before
    # a different fold seed would give other folds: refused (data.folds.overwrite rebuilds)
    with pytest.raises(StageInputError, match="data.folds.seed=2025, now 7.*overwrite=true"):
        data_stage.run(demo_cfg(tmp_path, "data.folds.seed=7"))
    assert (data_dir / "folds.csv").read_bytes() == before
    with pytest.raises(DataError, match="overwrite"):
        data_stage.run(demo_cfg(tmp_path, "data.folds.n_folds=4"))
    assert (data_dir / "folds.csv").read_bytes() == before  # a failed run leaves the output intact


def test_tiny_models_load_like_real_checkpoints(demo_run):
    _, cfg, _, models_dir, _ = demo_run
    for family in ("gemma2", "llama", "qwen2"):
        path = models_dir / f"tiny_{family}"
        assert str(path) == compose_model_path(cfg, f"tiny_{family}")
        model = AutoModelForSequenceClassification.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.num_labels == 3 and model.config.pad_token_id == tok.pad_token_id


def compose_model_path(cfg, name: str) -> str:
    return compose(
        ["experiment=demo", f"runs_root={cfg.runs_root}", f"model={name}"]
    ).model.name_or_path


def test_tokenize_stage_fills_the_cache_the_later_stages_read(demo_run):
    """The tokenize stage encodes every table at the budget of the stage that reads it, with
    that stage's tokenizer loader and data key: the training stages and the predict stage
    then find every encoding in the cache (no new cache file, cache hits)."""
    from arena_distill.encode import cache_dir, labelled_encodings, prompt_config, test_key
    from arena_distill.layout import load_run_data
    from arena_distill.models.factory import load_tokenizer
    from arena_distill.tokens import tokenize_both_orientations

    _, cfg, data_dir, _, tokens_dir = demo_run
    stats = json.loads((tokens_dir / "stats.json").read_text())
    budget = cfg.prompt.max_length  # the demo's stages use the prompt's budget
    run = load_run_data(cfg)
    labelled, holdout = len(run.labelled), len(run.rows("holdout"))
    assert holdout > 0 and labelled == 240  # train rows (cv and holdout), no extra set
    # both orientations of every table
    assert stats[f"train@{budget}"]["rows"] == 2 * labelled
    assert stats[f"pretrain@{budget}"]["rows"] == 2 * 60
    assert stats[f"test@{budget}"]["rows"] == 2 * 40
    assert stats[f"holdout@{budget}"]["rows"] == 2 * holdout
    assert stats[f"train@{budget}"]["max"] <= budget
    files = sorted(cache_dir(cfg).glob("*.parquet"))
    tok = load_tokenizer(cfg.model)
    enc = labelled_encodings(cfg, run, tok, cfg.stages.teacher.max_length)
    assert len(enc) == 2 * labelled
    test = load_table(data_dir / "test.parquet")
    tokenize_both_orientations(
        test, tok, prompt_config(cfg), cache_dir=cache_dir(cfg), data_key=test_key(data_dir)
    )
    assert sorted(cache_dir(cfg).glob("*.parquet")) == files  # nothing new was encoded


def test_stage_refuses_missing_input(tmp_path):
    cfg = demo_cfg(tmp_path)
    with pytest.raises(StageInputError, match="arena-distill data"):
        tiny_models.run(cfg)


def test_cli_runs_a_stage_through_hydra(tmp_path):
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "arena_distill",
        "demo_data",
        f"stages.demo_data.out_dir={out}",
        "stages.demo_data.n_train=30",
        "stages.demo_data.n_test=5",
        f"runs_root={tmp_path}/runs",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    assert len(pd.read_csv(out / "train.csv")) == 30
    assert json.loads((out / "manifest.json").read_text())["stage"] == "demo_data"


def test_cli_refuses_unknown_stages():
    from arena_distill.__main__ import main

    assert main(["no_such_stage"]) == 2
    assert main(["--help"]) == 0


def test_data_stage_takes_a_union_of_files_and_bare_pretrain_paths(demo_run, tmp_path):
    """`make pipeline TRAIN=a.csv,b.csv PRETRAIN=c.csv` -> a list of paths and a bare path."""
    src = demo_run[0] / "demo"
    rows = pd.read_csv(src / "train.csv", dtype=object, keep_default_na=False)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    rows.iloc[:150].to_csv(a, index=False)
    rows.iloc[150:].to_csv(b, index=False)
    cfg = compose(
        [
            "data=competition",
            f"data.train.path=[{a},{b}]",
            f"data.pretrain=[{src / 'pretrain.csv'}]",
            f"run_dir={tmp_path}/run",
            "data.folds.n_folds=3",
        ]
    )
    data_dir = data_stage.run(cfg)
    train = load_table(data_dir / "train.parquet")
    assert sorted(train["id"]) == sorted(rows["id"])
    assert len(load_table(data_dir / "pretrain.parquet")) > 0
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert {i["path"] for i in manifest["inputs"]} >= {str(a), str(b), str(src / "pretrain.csv")}
    # the same row in both files is an id clash, reported with the id
    rows.iloc[:10].to_csv(b, index=False)
    cfg = compose(["data=competition", f"data.train.path=[{a},{b}]", f"run_dir={tmp_path}/run2"])
    with pytest.raises(DataError, match=str(rows["id"].iloc[0])):
        data_stage.run(cfg)
