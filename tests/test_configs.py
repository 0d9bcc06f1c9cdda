"""Every config file composes and resolves; configs agree with the code and the recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from arena_distill.config import compose, config_dir
from arena_distill.stages import STAGES
from arena_distill.text import PromptConfig

CONFIGS = config_dir()


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def resolved(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose(overrides), resolve=True)


def test_root_config_resolves():
    cfg = resolved([])
    assert set(cfg["stages"]) == set(STAGES)
    assert cfg["run_dir"] == "runs/default"


@pytest.mark.parametrize("name", names("data"))
def test_data_configs(name):
    cfg = resolved([f"data={name}", "data.train.path=some/train.csv"])["data"]
    assert cfg["name"] == name
    assert cfg["folds"]["n_folds"] >= 2
    assert 0.0 <= cfg["holdout_frac"] < 1.0
    assert cfg["on_bad_row"] in ("error", "drop")


@pytest.mark.parametrize("name", names("model"))
def test_model_configs(name):
    cfg = resolved([f"model={name}"])["model"]
    assert cfg["name"] == name
    assert cfg["num_labels"] == 3
    assert cfg["kind"] in ("decoder", "encoder")
    assert cfg["lora"]["r"] > 0 and cfg["lora"]["target_modules"]
    # every model config has the same keys as the reference one, so stages can rely on them
    reference = resolved(["model=gemma2_9b"])["model"]
    assert set(reference) <= set(cfg)


def test_minilm_points_into_the_installed_wheel():
    path = resolved(["model=minilm"])["model"]["name_or_path"]
    assert Path(path, "config.json").is_file() and Path(path, "model.safetensors").is_file()


@pytest.mark.parametrize("name", names("prompt"))
def test_prompt_configs_map_onto_prompt_config(name):
    cfg = resolved([f"prompt={name}"])["prompt"]
    prompt = PromptConfig.from_dict(cfg)
    assert {f.name for f in dataclasses.fields(PromptConfig)} == set(cfg)
    assert prompt.max_prompt_tokens < prompt.max_length


@pytest.mark.parametrize("name", names("stage"))
def test_stage_configs(name):
    raw = yaml.safe_load((CONFIGS / "stage" / f"{name}.yaml").read_text())
    assert raw["name"] == name
    assert name in STAGES
    assert resolved([])["stages"][name]["name"] == name


@pytest.mark.parametrize("name", names("experiment"))
def test_experiment_configs(name):
    cfg = resolved([f"experiment={name}"])
    assert cfg["run_name"] == name
    PromptConfig.from_dict(cfg["prompt"])
    for model in [*cfg["pipeline"]["teachers"], cfg["pipeline"]["student"]]:
        assert model in names("model")


def test_first_place_has_the_recipe_numbers():
    """The numbers of ../shared/RECIPE.md, 1st place."""
    cfg = resolved(["experiment=first_place"])
    assert cfg["data"]["folds"] == {
        "n_folds": 5,
        "seed": 2025,
        "group_by_prompt": False,
        "overwrite": False,
    }
    p = cfg["prompt"]
    assert (p["max_words_prompt"], p["max_words_response"]) == (256, 700)
    assert (p["max_length"], p["max_prompt_tokens"]) == (1024, 256)
    assert cfg["pipeline"] == {"teachers": ["llama3_70b", "qwen2_72b"], "student": "gemma2_9b"}
    assert cfg["model"]["lora"] == {
        "r": 64,
        "alpha": 128,
        "dropout": 0.05,
        "target_modules": [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    }
    s = cfg["stages"]
    assert (s["pretrain"]["lr"], s["pretrain"]["epochs"]) == (1e-5, 1)
    assert (s["teacher"]["lr"], s["teacher"]["epochs"], s["teacher"]["global_batch_size"]) == (
        1e-5,
        2,
        64,
    )
    assert (s["distill"]["lr"], s["distill"]["epochs"], s["distill"]["temperature"]) == (
        5e-5,
        2,
        1.0,
    )
    assert s["teacher"]["betas"] == [0.9, 0.95] and s["teacher"]["warmup_steps"] == 100
    assert s["teacher"]["seed"] == 1234
    assert s["merge"]["method"] == "ab_mean"
    q = s["quantize"]
    assert (q["bits"], q["group_size"], q["n_calibration"], q["calibration_max_length"]) == (
        8,
        128,
        128,
        2100,
    )
    assert (s["predict"]["max_length"], s["predict"]["batch_size"], s["predict"]["tta"]) == (
        2000,
        8,
        True,
    )
    teachers = [resolved([f"model={m}"])["model"] for m in cfg["pipeline"]["teachers"]]
    assert all(
        t["quantization"]
        == {"type": "nf4", "double_quant": True, "compute_dtype": "bfloat16", "quant_storage": None}
        for t in teachers
    )


def test_overrides_reach_stage_blocks():
    cfg = compose(["experiment=demo", "stages.teacher.lr=3e-4", "data.folds.n_folds=3"])
    assert cfg.stages.teacher.lr == 3e-4
    assert cfg.data.folds.n_folds == 3
    assert cfg.run_dir == "runs/demo"
