"""Every config file composes and resolves; configs agree with the code and the recipe."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from arena_distill import settings
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
    assert cfg["family"] in ("gemma2", "llama", "qwen2", "bert")
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
    text = (CONFIGS / "stage" / f"{name}.yaml").read_text()
    assert name in STAGES
    # the header comment names the module that reads the block
    assert text.startswith(f"# arena_distill.stages.{name}:")
    settings.stage(compose([]), name)  # every key is one the stage's settings declare


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
    assert cfg["pipeline"] == {
        "teachers": ["llama3_70b", "qwen2_72b"],
        "student": "gemma2_9b",
        "ablate": False,
        "final": "merge",
    }
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
    # the micro-batch from the GPU's memory (models.memory), not the stage default of 1 (the
    # full stage trains with the distill settings)
    recipe = compose(["experiment=first_place"])
    for name in ("pretrain", "teacher", "distill"):
        assert settings.stage(recipe, name).per_device_batch_size == "auto"
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


# --- the configuration contract: every shipped key is declared and read -----------------------

SHIPPED = (
    [[f"experiment={n}"] for n in names("experiment")]
    + [[f"model={n}"] for n in names("model")]
    + [[f"data={n}", "data.train.path=a.csv"] for n in names("data")]
    + [[f"prompt={n}"] for n in names("prompt")]
)


@pytest.mark.parametrize("overrides", SHIPPED, ids=lambda o: o[0])
def test_every_shipped_config_builds_its_settings(overrides):
    """Every experiment, model, data and prompt file composes into blocks that build into
    their settings classes (no unknown key, every value of the declared type)."""
    if overrides[0] == "experiment=cpu_real":
        overrides = [*overrides, "data.train.path=a.csv"]
    cfg = compose(overrides)
    for name in settings.STAGE_SETTINGS:
        settings.stage(cfg, name)
    settings.model(cfg)
    settings.data(cfg)
    settings.prompt(cfg)
    settings.pipeline(cfg)
    settings.logging_settings(cfg)


def _settings_classes() -> dict[str, type]:
    """Every settings dataclass reachable from a config block, by its config path."""
    out: dict[str, type] = {}

    def walk(cls: type, path: str) -> None:
        if cls in out.values():
            return
        out[path] = cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for arg in typing.get_args(hints[f.name]) or (hints[f.name],):
                for inner in typing.get_args(arg) or (arg,):
                    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                        walk(inner, f"{path}.{f.name}")

    for name, cls in settings.STAGE_SETTINGS.items():
        walk(cls, f"stages.{name}")
    for name, cls in settings.ROOT_BLOCKS.items():
        walk(cls, name)
    return out


def test_every_declared_key_is_read_by_the_code():
    """A settings field nothing reads would be a key that changes nothing: each one must be
    read somewhere in the package (attribute access, or ``["key"]`` / ``.get("key")`` where the
    block travels as a mapping, as the model config does)."""
    package = Path(settings.__file__).parent
    code = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "settings.py")
    unread = []
    for path, cls in _settings_classes().items():
        for f in dataclasses.fields(cls):
            n = re.escape(f.name)
            if not re.search(rf"\.{n}\b|\[[\"']{n}[\"']\]|\.get\([\"']{n}[\"']", code):
                unread.append(f"{path}.{f.name}")
    assert unread == []


def test_every_shipped_key_is_declared():
    """The YAML files declare nothing the settings classes do not (the reverse direction of
    the check above: validate() refuses such a key in every composed config)."""
    for overrides in SHIPPED:
        if overrides[0] == "experiment=cpu_real":
            overrides = [*overrides, "data.train.path=a.csv"]
        settings.validate(compose(overrides))


def _configs_with(tmp_path: Path, name: str, text: str) -> Path:
    """A copy of the shipped configs with one more experiment file."""
    import shutil

    root = tmp_path / "configs"
    shutil.copytree(CONFIGS, root)
    (root / "experiment" / f"{name}.yaml").write_text(text)
    return root


TYPO = """# @package _global_
defaults:
  - demo
stages:
  teacher: {learning_rate: 1.0e-4}
"""


def test_a_typo_in_an_experiment_file_is_refused_with_the_key_and_a_guess(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DISTILL_CONFIG_DIR", str(_configs_with(tmp_path, "typo", TYPO)))
    with pytest.raises(settings.ConfigError) as err:
        compose(["experiment=typo"])
    assert str(err.value) == "stages.teacher.learning_rate: unknown key; did you mean lr?"


def test_the_stage_command_refuses_a_typo_before_it_runs(tmp_path):
    """``arena-distill teacher experiment=typo`` stops at once with the message, exit 1."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ARENA_DISTILL_CONFIG_DIR": str(_configs_with(tmp_path, "typo", TYPO))}
    out = subprocess.run(
        [sys.executable, "-m", "arena_distill", "teacher", "experiment=typo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 1
    assert "stages.teacher.learning_rate: unknown key; did you mean lr?" in out.stderr
    # nothing ran (Hydra made its log folder, no stage output exists)
    assert not list((tmp_path / "runs").glob("*/teachers"))
